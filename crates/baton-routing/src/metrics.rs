//! Per-(app, version) metrics: counters and latency histograms, kept both as totals
//! since start and in a ring of one-second buckets so the control plane can read the
//! last 10 s or 60 s. Pure data structures: no I/O, and time is passed in.
//!
//! # Wiring: one writer, lock-free readers
//!
//! Metrics are sharded by owner: each worker owns one [`VersionMetrics`] per (app,
//! version) it serves and is its only writer. Readers (the admin side: windows and
//! `/metrics`) never take a lock that a writer takes, so a scrape cannot stall a request:
//!
//! - Every number a reader folds is an atomic. The writer updates them with a plain
//!   load and store (no read-modify-write: writers are serialized, see below), which
//!   costs what the non-atomic fields of a mutex-guarded struct cost.
//! - Each second is a `Bucket` (counters and a latency histogram of atomic counts)
//!   published in its slot of the ring, an `ArcSwapOption`. The writer fills the
//!   bucket of the current second in place; when a request arrives in a later second,
//!   it publishes a bucket for that second in the slot `second % WINDOW_BUCKETS`, and
//!   the bucket it left is *closed*: nobody writes it again (a late sample whose `now`
//!   is in an already closed second counts in the open one instead), so a reader folds
//!   immutable data for every second but the current one, whose atomics it reads live.
//! - Totals since start are atomics beside the ring (counters and a histogram of
//!   atomic counts), read the same way. Each counter only grows, so `/metrics` stays
//!   monotonic; a reader racing a writer may see one request in some counters and not
//!   yet in others.
//! - A bucket swapped out of the ring (64 s old) is reused for the new second when no
//!   reader holds it (`Arc::get_mut`), so steady state does not allocate. One that a
//!   reader still holds is kept aside (at most [`SPARE_BUCKETS`]) and reused once the
//!   reader lets go; a new bucket is allocated only when all of those are held.
//!
//! The writer side of a shard sits behind a `Mutex` that only writers lock: it holds
//! the open bucket and the spare ones. It is there because `unsafe` is forbidden (a
//! single-writer cell needs it) and because threads outside the workers all use shard 0;
//! in a worker it is never contended. Readers never touch it.
//!
//! The reader folds shards into a [`Merged`] with [`Merged::add_window`] or
//! [`Merged::add_totals`], then reads [`Merged::stats`] or renders `/metrics` with
//! [`render_prometheus`].
//!
//! Windows are whole seconds: a window of `n` seconds covers the current (partial)
//! second and the `n - 1` before it, up to [`WINDOW_BUCKETS`] seconds.
//!
//! # Memory
//!
//! Latencies are recorded from 1 µs to 60 s at 3 significant digits: [`HIST_SLOTS`]
//! (17,192) counts, the layout of an `hdrhistogram` with those bounds. A second's bucket
//! counts in `u32`: [`BUCKET_BYTES`] (about 68.9 KB). Totals count in `u64`:
//! [`TOTALS_BYTES`] (about 137.5 KB). Per shard (one worker's view of one version), at
//! most [`WINDOW_BUCKETS`] (64) buckets in the ring plus [`SPARE_BUCKETS`] (2) kept aside
//! plus the totals: [`MAX_SHARD_BYTES`], about 4.7 MB; beyond that, only a bucket a
//! reader holds while it folds (freed when it lets go). A version served by `w` workers
//! takes at most `w` times that (16 workers: about 75 MB). Buckets are allocated on a
//! shard's first request of a second while the ring is not full, so an idle shard holds
//! nothing and a lightly used one only the seconds it saw (up to 64).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Seconds of history kept for windows (the longest window that can be read).
pub const WINDOW_BUCKETS: usize = 64;
/// Largest latency tracked; longer requests are recorded as this value.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant decimal digits kept by the latency histograms.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Buckets swapped out of the ring while a reader held them, kept to be reused.
pub const SPARE_BUCKETS: usize = 2;

// The layout of an `hdrhistogram` from 1 to MAX_LATENCY_US at SIGNIFICANT_DIGITS, so
// that a slot here is the slot of the same index there (checked by a test): log-linear,
// `SUB_BUCKETS` linear slots per power of two above the first.
/// Linear slots that give the precision: the power of two at or above 2 × 10^digits.
const SUB_BUCKET_MAGNITUDE: u32 = (2 * 10u64.pow(SIGNIFICANT_DIGITS as u32))
    .next_power_of_two()
    .trailing_zeros();
const SUB_BUCKET_HALF: usize = 1 << (SUB_BUCKET_MAGNITUDE - 1);
const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_MAGNITUDE) - 1;
const LEADING_ZERO_BASE: u32 = 64 - SUB_BUCKET_MAGNITUDE;

/// Slot of a latency in µs (at most [`MAX_LATENCY_US`]).
#[inline]
const fn slot_of(us: u64) -> usize {
    let bucket = LEADING_ZERO_BASE - (us | SUB_BUCKET_MASK).leading_zeros();
    let sub = (us >> bucket) as usize;
    ((bucket as usize + 1) << (SUB_BUCKET_MAGNITUDE - 1)) + sub - SUB_BUCKET_HALF
}

/// Lowest latency (µs) that falls in `slot`.
const fn value_of(slot: usize) -> u64 {
    let bucket = (slot >> (SUB_BUCKET_MAGNITUDE - 1)) as u32;
    let sub = (slot & (SUB_BUCKET_HALF - 1)) + SUB_BUCKET_HALF;
    if bucket == 0 {
        (sub - SUB_BUCKET_HALF) as u64
    } else {
        (sub as u64) << (bucket - 1)
    }
}

/// Counts in one latency histogram: enough for [`MAX_LATENCY_US`].
pub const HIST_SLOTS: usize = slot_of(MAX_LATENCY_US) + 1;
/// Bytes of one second's bucket (its histogram counts in `u32`, plus counters).
pub const BUCKET_BYTES: usize = HIST_SLOTS * size_of::<AtomicU32>() + size_of::<Bucket>();
/// Bytes of one shard's totals histogram (counts in `u64`).
pub const TOTALS_BYTES: usize = HIST_SLOTS * size_of::<AtomicU64>();
/// Most bytes one shard holds, not counting a bucket a reader holds while it folds:
/// a full ring, the spare buckets, the totals histogram and the shard itself.
pub const MAX_SHARD_BYTES: usize = (WINDOW_BUCKETS + SPARE_BUCKETS) * BUCKET_BYTES
    + TOTALS_BYTES
    + size_of::<VersionMetrics>()
    + WINDOW_BUCKETS * size_of::<ArcSwapOption<Bucket>>();

/// Upper bounds of the Prometheus latency buckets: (microseconds, label in seconds).
const LE_BUCKETS: [(u64, &str); 13] = [
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn new_histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Plain counters of one (app, version) over some span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Responses sent to users (router errors included).
    pub requests: u64,
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status: [u64; 5],
    /// Responses generated by the router itself (502/503/504), also counted above.
    pub router_errors: u64,
    /// Request bytes received from users (bodies).
    pub bytes_in: u64,
    /// Response bytes sent to users (bodies).
    pub bytes_out: u64,
    /// Mirrored responses that matched the primary's.
    pub mirror_matches: u64,
    /// Mirrored responses that differed from the primary's.
    pub mirror_mismatches: u64,
    /// Sum of recorded latencies, in microseconds (for means and `_sum`).
    pub latency_sum_us: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        self.router_errors += o.router_errors;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.mirror_matches += o.mirror_matches;
        self.mirror_mismatches += o.mirror_mismatches;
        self.latency_sum_us += o.latency_sum_us;
    }
}

/// Adds to a counter that only the (serialized) writers change: a load and a store,
/// not a read-modify-write, so it costs what a plain field would.
trait Bump {
    type Value;
    fn bump(&self, n: Self::Value);
}

impl Bump for AtomicU64 {
    type Value = u64;
    #[inline]
    fn bump(&self, n: u64) {
        self.store(
            self.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

impl Bump for AtomicU32 {
    type Value = u32;
    #[inline]
    fn bump(&self, n: u32) {
        self.store(
            self.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

/// Raises `top` (one past the highest slot recorded) to include `slot`.
#[inline]
fn raise(top: &AtomicUsize, slot: usize) {
    if top.load(Ordering::Relaxed) <= slot {
        top.store(slot + 1, Ordering::Relaxed);
    }
}

/// [`Counters`] that one writer changes and any reader reads.
#[derive(Default)]
struct AtomicCounters {
    requests: AtomicU64,
    status: [AtomicU64; 5],
    router_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    mirror_matches: AtomicU64,
    mirror_mismatches: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl AtomicCounters {
    #[inline]
    fn record(&self, r: &RequestSample, us: u64) {
        self.requests.bump(1);
        self.status[status_class(r.status)].bump(1);
        if r.router_error {
            self.router_errors.bump(1);
        }
        self.bytes_in.bump(r.bytes_in);
        self.bytes_out.bump(r.bytes_out);
        self.latency_sum_us.bump(us);
    }

    fn record_mirror(&self, matched: bool) {
        if matched {
            self.mirror_matches.bump(1);
        } else {
            self.mirror_mismatches.bump(1);
        }
    }

    fn load(&self) -> Counters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            requests: get(&self.requests),
            status: std::array::from_fn(|i| get(&self.status[i])),
            router_errors: get(&self.router_errors),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            mirror_matches: get(&self.mirror_matches),
            mirror_mismatches: get(&self.mirror_mismatches),
            latency_sum_us: get(&self.latency_sum_us),
        }
    }

    /// Zeroes every counter; needs the only reference.
    fn clear(&mut self) {
        *self = AtomicCounters::default();
    }
}

/// Index into [`Counters::status`]; out-of-range codes count as the nearest class.
fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One finished request, as recorded by the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestSample {
    /// Status sent to the user.
    pub status: u16,
    /// From the request's arrival to the end of its response.
    pub latency: Duration,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// True when the router generated the response itself (no backend answered).
    pub router_error: bool,
}

/// One second of one shard. Published in the ring; written (in place, by the shard's
/// writer) only while it is the open second, immutable once a later one opens.
struct Bucket {
    /// Second since the shard's epoch that this bucket holds. Set only while the
    /// writer has the only reference, so plain.
    second: u64,
    counters: AtomicCounters,
    /// Latency counts by slot ([`slot_of`]); `u32` halves the memory, and one second of
    /// one worker cannot reach 2^32 requests.
    hist: Box<[AtomicU32]>,
    /// One past the highest slot counted, so readers and resets skip the empty tail.
    top: AtomicUsize,
}

impl Bucket {
    fn new(second: u64) -> Bucket {
        Bucket {
            second,
            counters: AtomicCounters::default(),
            hist: (0..HIST_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            top: AtomicUsize::new(0),
        }
    }

    /// Makes this bucket an empty one for `second`; needs the only reference, so no
    /// reader can see it half cleared.
    fn reset(&mut self, second: u64) {
        let top = *self.top.get_mut();
        for c in &mut self.hist[..top] {
            *c.get_mut() = 0;
        }
        *self.top.get_mut() = 0;
        self.counters.clear();
        self.second = second;
    }
}

/// What only the writers of a shard touch.
#[derive(Default)]
struct Writer {
    /// The bucket of the open second (also in the ring).
    open: Option<Arc<Bucket>>,
    /// Buckets taken out of the ring while a reader held them, to reuse once free.
    spare: Vec<Arc<Bucket>>,
    /// Buckets allocated so far (the rest were reused).
    allocated: u64,
}

/// The metrics of one (app, version) as recorded by one worker. See the module docs
/// for how shards are written and read.
pub struct VersionMetrics {
    epoch: Instant,
    /// Taken only by writers (see the module docs); readers use the fields below.
    writer: Mutex<Writer>,
    /// Slot `s % WINDOW_BUCKETS` holds the bucket of second `s` (or an older one).
    ring: Box<[ArcSwapOption<Bucket>]>,
    total: AtomicCounters,
    /// Latency counts since start, by slot; allocated at the first request.
    total_hist: OnceLock<Box<[AtomicU64]>>,
    total_top: AtomicUsize,
    active_connections: AtomicI64,
}

impl std::fmt::Debug for VersionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionMetrics")
            .field("total", &self.total.load())
            .field(
                "active_connections",
                &self.active_connections.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl VersionMetrics {
    /// Empty metrics. `epoch` is the origin of the one-second buckets; use the same
    /// epoch for every shard so that windows line up when merged.
    pub fn new(epoch: Instant) -> Self {
        VersionMetrics {
            epoch,
            writer: Mutex::default(),
            ring: (0..WINDOW_BUCKETS)
                .map(|_| ArcSwapOption::empty())
                .collect(),
            total: AtomicCounters::default(),
            total_hist: OnceLock::new(),
            total_top: AtomicUsize::new(0),
            active_connections: AtomicI64::new(0),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open bucket for a sample at second `s`: opens (and publishes) one for `s`
    /// if `s` is later than the open second. A sample in an earlier second than the
    /// open one counts in the open one, so closed buckets stay immutable.
    #[inline]
    fn open<'w>(&self, w: &'w mut Writer, s: u64) -> &'w Bucket {
        if w.open.as_ref().is_none_or(|b| b.second < s) {
            self.roll(w, s);
        }
        w.open.as_deref().expect("roll opens a bucket")
    }

    /// Publishes an empty bucket for second `s` in its ring slot, closing the open one.
    #[cold]
    fn roll(&self, w: &mut Writer, s: u64) {
        w.open = None;
        let slot = &self.ring[(s % WINDOW_BUCKETS as u64) as usize];
        if let Some(old) = slot.swap(None) {
            w.spare.push(old);
        }
        // A bucket nobody else holds (the one just swapped out, unless a reader is
        // folding it) is reused; readers only find buckets through the ring, so one
        // out of it that is free now stays free.
        let free = w.spare.iter_mut().position(|b| Arc::get_mut(b).is_some());
        let mut b = match free {
            Some(i) => w.spare.swap_remove(i),
            None => {
                w.allocated += 1;
                Arc::new(Bucket::new(s))
            }
        };
        Arc::get_mut(&mut b)
            .expect("a bucket out of the ring and free stays free")
            .reset(s);
        // Those beyond the bound are freed by the reader that holds them.
        w.spare.truncate(SPARE_BUCKETS);
        slot.store(Some(b.clone()));
        w.open = Some(b);
    }

    /// Records one finished request at `now`. Takes only the writer lock (never taken
    /// by a reader); allocates only in a second that opens a bucket while the ring is
    /// not yet full or every spare bucket is held by a reader, and at the first
    /// request (the totals histogram).
    pub fn record(&self, now: Instant, r: &RequestSample) {
        let us = u64::try_from(r.latency.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_LATENCY_US);
        let i = slot_of(us);
        let s = self.second(now);
        let mut w = self.writer();
        let b = self.open(&mut w, s);
        b.counters.record(r, us);
        b.hist[i].bump(1);
        raise(&b.top, i);
        self.total.record(r, us);
        let hist = self
            .total_hist
            .get_or_init(|| (0..HIST_SLOTS).map(|_| AtomicU64::new(0)).collect());
        hist[i].bump(1);
        raise(&self.total_top, i);
    }

    /// Records the outcome of one mirror comparison at `now`.
    pub fn record_mirror(&self, now: Instant, matched: bool) {
        let s = self.second(now);
        let mut w = self.writer();
        self.open(&mut w, s).counters.record_mirror(matched);
        self.total.record_mirror(matched);
    }

    /// Counts a connection opened; pair with [`VersionMetrics::connection_closed`] on
    /// the same shard.
    pub fn connection_opened(&self) {
        self.active_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed.
    pub fn connection_closed(&self) {
        self.active_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counters since this shard was created.
    pub fn totals(&self) -> Counters {
        self.total.load()
    }

    /// Stats of this shard alone over the last `last` (see [`Merged`] for several
    /// shards).
    pub fn window(&self, last: Duration, now: Instant) -> WindowStats {
        let mut m = Merged::new();
        m.add_window(self, last, now);
        m.stats()
    }

    /// Bytes this shard holds now (buckets in the ring and aside, totals). Takes the
    /// writer lock: for tests.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        let ring = self.ring.iter().filter(|s| s.load().is_some()).count();
        let spare = self.writer().spare.len();
        (ring + spare) * BUCKET_BYTES
            + self
                .total_hist
                .get()
                .map_or(0, |h| h.len() * size_of::<AtomicU64>())
            + size_of::<VersionMetrics>()
            + self.ring.len() * size_of::<ArcSwapOption<Bucket>>()
    }
}

/// Adds the counts of `slots[..top]` to `hist`.
fn fold_slots<A, F>(hist: &mut Histogram<u64>, slots: &[A], top: usize, get: F)
where
    F: Fn(&A) -> u64,
{
    for (i, c) in slots[..top.min(slots.len())].iter().enumerate() {
        let n = get(c);
        if n > 0 {
            // Same layout on both sides: the value lands in slot `i`, and cannot fail.
            let _ = hist.record_n(value_of(i), n);
        }
    }
}
/// Whole seconds a window of `last` covers, 1..=[`WINDOW_BUCKETS`].
fn window_seconds(last: Duration) -> u64 {
    let s = last.as_secs() + u64::from(last.subsec_nanos() > 0);
    s.clamp(1, WINDOW_BUCKETS as u64)
}

/// Several shards (or several windows) folded together; what the admin reader builds.
pub struct Merged {
    counters: Counters,
    hist: Histogram<u64>,
    active_connections: i64,
    window_s: u64,
}

impl std::fmt::Debug for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merged")
            .field("counters", &self.counters)
            .field("active_connections", &self.active_connections)
            .field("window_s", &self.window_s)
            .finish_non_exhaustive()
    }
}

impl Default for Merged {
    fn default() -> Self {
        Merged::new()
    }
}

impl Merged {
    /// Nothing merged yet.
    pub fn new() -> Self {
        Merged {
            counters: Counters::default(),
            hist: new_histogram(),
            active_connections: 0,
            window_s: 0,
        }
    }

    /// Adds the last `last` of `m` (rounded up to whole seconds, at most
    /// [`WINDOW_BUCKETS`]) as seen at `now`, and its active connections. Takes no lock:
    /// folds the closed seconds' immutable buckets and reads the open one's atomics.
    pub fn add_window(&mut self, m: &VersionMetrics, last: Duration, now: Instant) {
        let n = window_seconds(last);
        let now_s = m.second(now);
        for slot in m.ring.iter() {
            let b = slot.load();
            let Some(b) = b.as_deref() else { continue };
            if b.second <= now_s && now_s - b.second < n {
                self.counters.add(&b.counters.load());
                let top = b.top.load(Ordering::Relaxed);
                fold_slots(&mut self.hist, &b.hist, top, |c| {
                    u64::from(c.load(Ordering::Relaxed))
                });
            }
        }
        self.active_connections += m.active_connections.load(Ordering::Relaxed);
        self.window_s = n;
    }

    /// Adds everything `m` recorded since it was created, and its active connections.
    /// Takes no lock.
    pub fn add_totals(&mut self, m: &VersionMetrics) {
        self.counters.add(&m.total.load());
        if let Some(h) = m.total_hist.get() {
            let top = m.total_top.load(Ordering::Relaxed);
            fold_slots(&mut self.hist, h, top, |c| c.load(Ordering::Relaxed));
        }
        self.active_connections += m.active_connections.load(Ordering::Relaxed);
    }

    /// The merged counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The merged latency histogram, in microseconds.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// Sum of the merged shards' active connections.
    pub fn active_connections(&self) -> i64 {
        self.active_connections
    }

    /// Replaces the active connections with a gauge read elsewhere (the router uses
    /// its upstream connections in use, i.e. requests in flight to the version).
    pub fn set_active_connections(&mut self, n: i64) {
        self.active_connections = n;
    }

    /// Counters and latency percentiles of what was merged.
    pub fn stats(&self) -> WindowStats {
        let c = &self.counters;
        let q = |q: f64| {
            if self.hist.is_empty() {
                0
            } else {
                self.hist.value_at_quantile(q)
            }
        };
        WindowStats {
            window_s: self.window_s,
            requests: c.requests,
            status: c.status,
            router_errors: c.router_errors,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            max_us: if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            },
            mean_us: if c.requests == 0 {
                0.0
            } else {
                c.latency_sum_us as f64 / c.requests as f64
            },
            mirror_matches: c.mirror_matches,
            mirror_mismatches: c.mirror_mismatches,
            active_connections: self.active_connections,
        }
    }
}

/// What the control plane reads for one (app, version) over one window. Percentiles
/// are accurate to 3 significant digits; all are 0 when there was no request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WindowStats {
    /// Seconds the window covers (0 for totals).
    pub window_s: u64,
    /// Responses sent.
    pub requests: u64,
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status: [u64; 5],
    /// Responses generated by the router itself.
    pub router_errors: u64,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile latency, µs.
    pub p90_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Mean latency, µs (exact, from the sum).
    pub mean_us: f64,
    /// Mirror comparisons that matched.
    pub mirror_matches: u64,
    /// Mirror comparisons that differed.
    pub mirror_mismatches: u64,
    /// Connections open now (as read by the router: upstream connections to this
    /// version in use, i.e. its requests in flight).
    pub active_connections: i64,
}

/// One series for [`render_prometheus`]: an (app, version) and its merged totals.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// App label.
    pub app: &'a str,
    /// Version label.
    pub version: &'a str,
    /// Totals since start, merged over shards with [`Merged::add_totals`].
    pub totals: &'a Merged,
}

/// Appends the Prometheus text exposition (format 0.0.4) of `series` to `out`, one
/// metric family at a time with its `# HELP` and `# TYPE` lines once:
/// `baton_requests_total{app,version,code_class}`, `baton_request_duration_seconds`
/// (histogram, buckets 1 ms .. 10 s), `baton_router_errors_total`,
/// `baton_bytes_received_total`, `baton_bytes_sent_total`, `baton_active_connections`,
/// `baton_mirror_comparisons_total{app,version,result="match|mismatch"}`.
pub fn render_prometheus(out: &mut String, series: &[Series<'_>]) {
    family(
        out,
        "baton_requests_total",
        "counter",
        "Responses sent to users, by status class.",
    );
    for s in series {
        for (class, n) in STATUS_CLASSES.iter().zip(s.totals.counters.status) {
            sample(out, "baton_requests_total", s, &[("code_class", class)], n);
        }
    }

    let name = "baton_request_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Time from a request's arrival to the end of its response.",
    );
    for s in series {
        let h = &s.totals.hist;
        let mut counts = [0u64; LE_BUCKETS.len()];
        for v in h.iter_recorded() {
            // The low end of the slot, so that a latency of exactly a bound counts as
            // within it (slots are 0.1% wide at most).
            let value = h.lowest_equivalent(v.value_iterated_to());
            if let Some(i) = LE_BUCKETS.iter().position(|(le, _)| value <= *le) {
                counts[i] += v.count_at_value();
            }
        }
        let mut cumulative = 0;
        for ((_, le), n) in LE_BUCKETS.iter().zip(counts) {
            cumulative += n;
            sample(
                out,
                "baton_request_duration_seconds_bucket",
                s,
                &[("le", le)],
                cumulative,
            );
        }
        sample(
            out,
            "baton_request_duration_seconds_bucket",
            s,
            &[("le", "+Inf")],
            h.len(),
        );
        let sum = s.totals.counters.latency_sum_us as f64 / 1e6;
        labels(out, "baton_request_duration_seconds_sum", s, &[]);
        let _ = writeln!(out, " {sum}");
        sample(out, "baton_request_duration_seconds_count", s, &[], h.len());
    }

    type Get = fn(&Counters) -> u64;
    let counters: [(&str, &str, Get); 3] = [
        (
            "baton_router_errors_total",
            "Responses generated by the router itself (no backend answered).",
            |c| c.router_errors,
        ),
        (
            "baton_bytes_received_total",
            "Request body bytes received from users.",
            |c| c.bytes_in,
        ),
        (
            "baton_bytes_sent_total",
            "Response body bytes sent to users.",
            |c| c.bytes_out,
        ),
    ];
    for (name, help, get) in counters {
        family(out, name, "counter", help);
        for s in series {
            sample(out, name, s, &[], get(&s.totals.counters));
        }
    }

    let name = "baton_active_connections";
    family(out, name, "gauge", "Connections open now.");
    for s in series {
        labels(out, name, s, &[]);
        let _ = writeln!(out, " {}", s.totals.active_connections);
    }

    let name = "baton_mirror_comparisons_total";
    family(
        out,
        name,
        "counter",
        "Mirrored responses compared with the primary's, by result.",
    );
    for s in series {
        let c = &s.totals.counters;
        sample(out, name, s, &[("result", "match")], c.mirror_matches);
        sample(out, name, s, &[("result", "mismatch")], c.mirror_mismatches);
    }
}

/// Appends the gauge `baton_client_connections{app}`: client connections open now, per
/// app (a keep-alive connection is not tied to one version).
pub fn render_app_connections(out: &mut String, apps: &[(&str, i64)]) {
    let name = "baton_client_connections";
    family(out, name, "gauge", "Client connections open now, per app.");
    for (app, n) in apps {
        out.push_str(name);
        out.push_str("{app=\"");
        escape_label(out, app);
        let _ = writeln!(out, "\"}} {n}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, s: &Series<'_>, extra: &[(&str, &str)], v: u64) {
    labels(out, name, s, extra);
    let _ = writeln!(out, " {v}");
}

fn labels(out: &mut String, name: &str, s: &Series<'_>, extra: &[(&str, &str)]) {
    out.push_str(name);
    out.push_str("{app=\"");
    escape_label(out, s.app);
    out.push_str("\",version=\"");
    escape_label(out, s.version);
    out.push('"');
    for (k, v) in extra {
        out.push(',');
        out.push_str(k);
        out.push_str("=\"");
        escape_label(out, v);
        out.push('"');
    }
    out.push('}');
}

/// Label values escape backslash, double quote and newline.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn req(status: u16, ms: u64) -> RequestSample {
        RequestSample {
            status,
            latency: Duration::from_millis(ms),
            bytes_in: 10,
            bytes_out: 100,
            router_error: status == 502,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn window_counts_match_records() {
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        for i in 0..100u64 {
            let status = if i % 10 == 0 { 502 } else { 200 };
            m.record(t0 + Duration::from_millis(i * 50), &req(status, 5));
        }
        m.record_mirror(t0 + secs(4), true);
        m.record_mirror(t0 + secs(4), false);
        m.record_mirror(t0 + secs(4), false);
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        let w = m.window(secs(10), t0 + secs(5));
        assert_eq!(w.requests, 100);
        assert_eq!(w.status, [0, 90, 0, 0, 10]);
        assert_eq!(w.router_errors, 10);
        assert_eq!((w.bytes_in, w.bytes_out), (1000, 10_000));
        assert_eq!((w.mirror_matches, w.mirror_mismatches), (1, 2));
        assert_eq!(w.active_connections, 1);
        assert_eq!(w.window_s, 10);
        assert!((w.mean_us - 5000.0).abs() < 1e-9);
        assert_eq!(m.totals().requests, 100);
        // A 2 s window at t=4.9 s sees seconds 3 and 4 only: requests 60..100.
        let w = m.window(secs(2), t0 + Duration::from_millis(4900));
        assert_eq!(w.requests, 40);
    }

    #[test]
    fn old_buckets_age_out() {
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        m.record(t0, &req(200, 1));
        m.record(t0 + secs(30), &req(500, 1));
        assert_eq!(m.window(secs(60), t0 + secs(30)).requests, 2);
        assert_eq!(m.window(secs(10), t0 + secs(30)).requests, 1);
        // 70 s later second 0 is out of every window, even though its slot was not
        // reused; second 30 is out of a 10 s window.
        assert_eq!(m.window(secs(60), t0 + secs(70)).requests, 1);
        assert_eq!(m.window(secs(10), t0 + secs(70)).requests, 0);
        // Reusing a slot (second 64 lands where second 0 was) clears it.
        m.record(t0 + secs(64), &req(200, 1));
        let w = m.window(secs(64), t0 + secs(64));
        assert_eq!(w.requests, 2);
        assert_eq!(w.status, [0, 1, 0, 0, 1]);
        assert_eq!(m.totals().requests, 3);
        // Windows longer than the ring are capped.
        assert_eq!(
            m.window(secs(3600), t0 + secs(64)).window_s,
            WINDOW_BUCKETS as u64
        );
        // An empty window has zero percentiles.
        let w = m.window(secs(1), t0 + secs(500));
        assert_eq!((w.requests, w.p50_us, w.p99_us, w.max_us), (0, 0, 0, 0));
        assert_eq!(w.mean_us, 0.0);
    }

    #[test]
    fn percentiles_of_known_distribution() {
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        // 1..=1000 ms, one each.
        for ms in 1..=1000 {
            m.record(t0, &req(200, ms));
        }
        let w = m.window(secs(10), t0);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.001;
        assert!(close(w.p50_us, 500_000), "{}", w.p50_us);
        assert!(close(w.p90_us, 900_000), "{}", w.p90_us);
        assert!(close(w.p99_us, 990_000), "{}", w.p99_us);
        assert!(close(w.max_us, 1_000_000), "{}", w.max_us);
        assert!((w.mean_us - 500_500.0).abs() < 1e-6);
        // Latencies beyond the range are clamped, not lost.
        m.record(t0, &req(200, 3_600_000));
        let w = m.window(secs(1), t0);
        assert_eq!(w.requests, 1001);
        assert!(close(w.max_us, MAX_LATENCY_US));
    }

    #[test]
    fn shards_merge() {
        let t0 = Instant::now();
        let a = VersionMetrics::new(t0);
        let b = VersionMetrics::new(t0);
        for _ in 0..10 {
            a.record(t0 + secs(1), &req(200, 1));
            b.record(t0 + secs(1), &req(404, 100));
        }
        a.connection_opened();
        b.connection_opened();
        let mut m = Merged::new();
        m.add_window(&a, secs(10), t0 + secs(2));
        m.add_window(&b, secs(10), t0 + secs(2));
        let w = m.stats();
        assert_eq!(w.requests, 20);
        assert_eq!(w.status, [0, 10, 0, 10, 0]);
        assert_eq!(w.active_connections, 2);
        assert!(w.p50_us <= 1001 && w.p90_us >= 99_000, "{w:?}");
        let mut t = Merged::new();
        t.add_totals(&a);
        t.add_totals(&b);
        assert_eq!(t.counters().requests, 20);
        assert_eq!(t.histogram().len(), 20);
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["status"][3], 10);
    }

    /// Checks the exposition line by line: every sample belongs to a family whose TYPE
    /// came before it, HELP/TYPE appear once per family, histogram buckets are
    /// cumulative and end with +Inf = _count. Returns sample values by full series.
    fn parse_exposition(text: &str) -> HashMap<String, f64> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps = std::collections::HashSet::new();
        let mut values = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helps.insert(name.to_string()), "HELP twice for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helps.contains(name), "TYPE before HELP: {line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice for {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            assert!(series.ends_with('}'), "{line}");
            let fam = types
                .get(name)
                .map(|_| name)
                .or_else(|| {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .filter_map(|s| name.strip_suffix(s))
                        .find(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or_else(|| panic!("no TYPE before {line}"));
            assert!(types.contains_key(fam));
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            values.insert(series.to_string(), v);
        }
        values
    }

    #[test]
    fn prometheus_text() {
        let t0 = Instant::now();
        let v1 = VersionMetrics::new(t0);
        let v2 = VersionMetrics::new(t0);
        v1.record(t0, &req(200, 2)); // 2 ms: le 0.0025
        v1.record(t0, &req(200, 2));
        v1.record(t0, &req(502, 20_000)); // above 10 s: +Inf only
        v2.record(t0, &req(404, 100));
        v2.record_mirror(t0, false);
        v2.connection_opened();
        let (mut m1, mut m2) = (Merged::new(), Merged::new());
        m1.add_totals(&v1);
        m2.add_totals(&v2);
        let mut out = String::new();
        render_prometheus(
            &mut out,
            &[
                Series {
                    app: "web",
                    version: "v1",
                    totals: &m1,
                },
                Series {
                    app: "we\"b",
                    version: "v2",
                    totals: &m2,
                },
            ],
        );
        let values = parse_exposition(&out);
        let get = |k: &str| {
            *values
                .get(k)
                .unwrap_or_else(|| panic!("{k} missing in\n{out}"))
        };
        let v1l = r#"app="web",version="v1""#;
        let v2l = r#"app="we\"b",version="v2""#;
        assert_eq!(
            get(&format!("baton_requests_total{{{v1l},code_class=\"2xx\"}}")),
            2.0
        );
        assert_eq!(
            get(&format!("baton_requests_total{{{v1l},code_class=\"5xx\"}}")),
            1.0
        );
        assert_eq!(
            get(&format!("baton_requests_total{{{v2l},code_class=\"4xx\"}}")),
            1.0
        );
        let b = |l: &str, le: &str| {
            get(&format!(
                "baton_request_duration_seconds_bucket{{{l},le=\"{le}\"}}"
            ))
        };
        assert_eq!(b(v1l, "0.001"), 0.0);
        assert_eq!(b(v1l, "0.0025"), 2.0);
        assert_eq!(b(v1l, "10"), 2.0);
        assert_eq!(b(v1l, "+Inf"), 3.0);
        assert_eq!(b(v2l, "0.05"), 0.0);
        assert_eq!(b(v2l, "0.1"), 1.0);
        assert_eq!(
            get(&format!("baton_request_duration_seconds_count{{{v1l}}}")),
            3.0
        );
        assert!(
            (get(&format!("baton_request_duration_seconds_sum{{{v1l}}}")) - 20.004).abs() < 1e-9
        );
        assert_eq!(get(&format!("baton_router_errors_total{{{v1l}}}")), 1.0);
        assert_eq!(get(&format!("baton_bytes_received_total{{{v1l}}}")), 30.0);
        assert_eq!(get(&format!("baton_bytes_sent_total{{{v2l}}}")), 100.0);
        assert_eq!(get(&format!("baton_active_connections{{{v2l}}}")), 1.0);
        assert_eq!(
            get(&format!(
                "baton_mirror_comparisons_total{{{v2l},result=\"mismatch\"}}"
            )),
            1.0
        );
        assert_eq!(
            get(&format!(
                "baton_mirror_comparisons_total{{{v2l},result=\"match\"}}"
            )),
            0.0
        );
        // Buckets are cumulative.
        let mut last = 0.0;
        for (_, le) in LE_BUCKETS {
            let n = b(v1l, le);
            assert!(n >= last);
            last = n;
        }
        assert_eq!(
            out.matches("# TYPE baton_requests_total counter").count(),
            1
        );
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn slots_are_hdrhistogram_slots() {
        let h = new_histogram::<u64>();
        assert_eq!(HIST_SLOTS, 17_192);
        for i in 0..HIST_SLOTS {
            let v = value_of(i);
            assert_eq!(slot_of(v), i, "slot {i}");
            assert_eq!(h.lowest_equivalent(v), v, "slot {i}");
        }
        // Every value maps to the slot whose low end is its lowest equivalent.
        let mut v = 0u64;
        while v <= MAX_LATENCY_US {
            assert_eq!(value_of(slot_of(v)), h.lowest_equivalent(v), "{v}");
            v += 1 + v / 997;
        }
        assert_eq!(
            value_of(slot_of(MAX_LATENCY_US)),
            h.lowest_equivalent(MAX_LATENCY_US)
        );
    }

    /// The bound stated in the module docs, and that a shard stays within it however
    /// long it records and however readers hold buckets.
    #[test]
    fn memory_is_bounded() {
        assert_eq!(BUCKET_BYTES / 1000, 68); // ~68.9 KB
        assert_eq!(TOTALS_BYTES / 100, 1375); // ~137.5 KB
        const { assert!(MAX_SHARD_BYTES < 4_700_000) }; // ~4.69 MB
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        assert_eq!(
            m.heap_bytes(),
            size_of::<VersionMetrics>() + WINDOW_BUCKETS * 8
        );
        let mut held = Vec::new();
        for s in 0..1000u64 {
            m.record(t0 + secs(s), &req(200, s % 50));
            // A reader that holds every tenth second's bucket for a long while.
            if s % 10 == 0 {
                held.push(m.ring[(s % WINDOW_BUCKETS as u64) as usize].load_full());
            }
            if held.len() > 20 {
                held.remove(0);
            }
            assert!(m.heap_bytes() <= MAX_SHARD_BYTES, "second {s}");
        }
        assert_eq!(m.totals().requests, 1000);
        assert_eq!(m.window(secs(64), t0 + secs(999)).requests, 64);
    }

    /// Once the ring is full a writer reuses the buckets it swaps out; one a reader
    /// holds is set aside, replaced by one new bucket, and reused once let go.
    #[test]
    fn steady_state_reuses_buckets() {
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        let allocated = || m.writer().allocated;
        for s in 0..WINDOW_BUCKETS as u64 {
            m.record(t0 + secs(s), &req(200, 1));
        }
        assert_eq!(allocated(), WINDOW_BUCKETS as u64);
        for s in 64..300 {
            m.record(t0 + secs(s), &req(200, 1));
            m.record_mirror(t0 + secs(s), true);
        }
        assert_eq!(allocated(), WINDOW_BUCKETS as u64);
        // Second 300 reuses the slot of 236: a reader holds that bucket.
        let held = m.ring[(300 % WINDOW_BUCKETS as u64) as usize].load_full();
        m.record(t0 + secs(300), &req(200, 1));
        assert_eq!(allocated(), WINDOW_BUCKETS as u64 + 1);
        assert_eq!(held.as_ref().map(|b| b.second), Some(236));
        assert_eq!(held.as_ref().map(|b| b.counters.load().requests), Some(1));
        drop(held);
        // The set-aside bucket serves the next second; no more allocations.
        for s in 301..600 {
            m.record(t0 + secs(s), &req(200, 1));
        }
        assert_eq!(allocated(), WINDOW_BUCKETS as u64 + 1);
        assert_eq!(m.totals().requests, 600);
        assert_eq!(m.totals().mirror_matches, 236);
    }

    /// A reader that holds snapshots of every bucket (as a slow scrape would) never
    /// makes the writer wait: this test runs both on one thread, so any wait would
    /// hang it. Closed buckets do not change under the reader.
    #[test]
    fn reader_holding_snapshots_does_not_block_writer() {
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        for s in 0..WINDOW_BUCKETS as u64 {
            m.record(t0 + secs(s), &req(200, 1));
        }
        let held: Vec<_> = m.ring.iter().map(|s| s.load()).collect();
        let before: Vec<_> = held
            .iter()
            .map(|b| b.as_ref().map(|b| (b.second, b.counters.load())))
            .collect();
        let mut merged = Merged::new();
        merged.add_window(&m, secs(64), t0 + secs(63));
        for i in 0..100_000u64 {
            m.record(
                t0 + secs(64) + Duration::from_micros(i * 1000),
                &req(500, 2),
            );
            if i % 1000 == 0 {
                merged.add_totals(&m);
            }
        }
        let after: Vec<_> = held
            .iter()
            .map(|b| b.as_ref().map(|b| (b.second, b.counters.load())))
            .collect();
        assert_eq!(before, after);
        assert_eq!(m.totals().requests, 100_064);
        assert_eq!(m.window(secs(1), t0 + secs(163)).requests, 1000);
        assert_eq!(m.window(secs(1), t0 + secs(163)).status, [0, 0, 0, 0, 1000]);
    }

    /// A reader folding windows and totals in a tight loop on another thread while a
    /// writer records: the writer finishes (it never waits for the reader), the
    /// reader's totals only grow, and nothing is lost.
    #[test]
    fn concurrent_reader_and_writer() {
        use std::sync::atomic::AtomicBool;
        const N: u64 = 200_000;
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let (mut last, mut folds) = (0, 0u64);
                while !done.load(Ordering::Acquire) {
                    let w = m.window(secs(64), t0 + secs(N / 2000));
                    assert!(w.requests <= N);
                    let mut t = Merged::new();
                    t.add_totals(&m);
                    let n = t.counters().requests;
                    assert!(n >= last, "totals went back: {n} < {last}");
                    last = n;
                    folds += 1;
                }
                folds
            });
            for i in 0..N {
                // 2000 requests a second: 100 seconds, so the ring wraps.
                m.record(t0 + Duration::from_micros(i * 500), &req(200, i % 100));
            }
            done.store(true, Ordering::Release);
            assert!(reader.join().unwrap() > 0);
        });
        assert_eq!(m.totals().requests, N);
        let w = m.window(secs(64), t0 + secs(N / 2000 - 1));
        assert_eq!(w.requests, 64 * 2000);
        let mut t = Merged::new();
        t.add_totals(&m);
        assert_eq!(t.histogram().len(), N);
    }

    /// A sample whose `now` falls in a second already closed counts in the open one.
    #[test]
    fn late_samples_count_in_the_open_second() {
        let t0 = Instant::now();
        let m = VersionMetrics::new(t0);
        m.record(t0 + secs(5), &req(200, 1));
        m.record(t0 + secs(6), &req(200, 1));
        m.record(t0 + secs(5), &req(404, 1));
        let w = m.window(secs(1), t0 + secs(6));
        assert_eq!((w.requests, w.status[3]), (2, 1));
        assert_eq!(m.window(secs(2), t0 + secs(6)).requests, 3);
    }
}
