//! The metrics hot path, side by side with the design it replaced: `record` on a
//! worker's shard (lock-free for readers, atomics written by one thread) against the
//! former shard (a `Mutex` around `hdrhistogram`s, which the reader also locked).
//!
//! Run: `cargo bench -p baton-router --bench metrics` (add `-- --quick` for a short run).
//! `record` advances time by 14 µs per call (about 70k requests a second), so the cost
//! of opening a new second's bucket is included, amortized as in production.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_router::metrics::{Merged, RequestSample, VersionMetrics};
use criterion::{Criterion, criterion_group, criterion_main};

/// The former shard, as it was (record path and the reader's fold only).
mod old {
    use std::time::{Duration, Instant};

    use baton_router::metrics::RequestSample;
    use hdrhistogram::Histogram;

    const WINDOW_BUCKETS: usize = 64;
    const MAX_LATENCY_US: u64 = 60_000_000;
    const EMPTY: u64 = u64::MAX;

    fn new_histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
        Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
    }

    #[derive(Default, Clone, Copy)]
    struct Counters {
        requests: u64,
        status: [u64; 5],
        router_errors: u64,
        bytes_in: u64,
        bytes_out: u64,
        latency_sum_us: u64,
    }

    impl Counters {
        fn record(&mut self, r: &RequestSample, us: u64) {
            self.requests += 1;
            self.status[usize::from(r.status / 100).clamp(1, 5) - 1] += 1;
            self.router_errors += u64::from(r.router_error);
            self.bytes_in += r.bytes_in;
            self.bytes_out += r.bytes_out;
            self.latency_sum_us += us;
        }
    }

    struct Bucket {
        second: u64,
        counters: Counters,
        hist: Option<Histogram<u32>>,
    }

    pub struct VersionMetrics {
        epoch: Instant,
        ring: Vec<Bucket>,
        total: Counters,
        total_hist: Option<Histogram<u64>>,
    }

    impl VersionMetrics {
        pub fn new(epoch: Instant) -> Self {
            VersionMetrics {
                epoch,
                ring: (0..WINDOW_BUCKETS)
                    .map(|_| Bucket {
                        second: EMPTY,
                        counters: Counters::default(),
                        hist: None,
                    })
                    .collect(),
                total: Counters::default(),
                total_hist: None,
            }
        }

        fn bucket(&mut self, now: Instant) -> &mut Bucket {
            let s = now.saturating_duration_since(self.epoch).as_secs();
            let b = &mut self.ring[(s % WINDOW_BUCKETS as u64) as usize];
            if b.second != s {
                b.second = s;
                b.counters = Counters::default();
                if let Some(h) = &mut b.hist {
                    h.reset();
                }
            }
            b
        }

        pub fn record(&mut self, now: Instant, r: &RequestSample) {
            let us = u64::try_from(r.latency.as_micros())
                .unwrap_or(u64::MAX)
                .min(MAX_LATENCY_US);
            let b = self.bucket(now);
            b.counters.record(r, us);
            b.hist
                .get_or_insert_with(new_histogram)
                .saturating_record(us);
            self.total.record(r, us);
            self.total_hist
                .get_or_insert_with(new_histogram)
                .saturating_record(us);
        }

        /// The reader's fold of a 64 s window, done under the shard's lock.
        pub fn fold(&self, into: &mut Histogram<u64>, last: Duration, now: Instant) -> u64 {
            let n = last.as_secs();
            let now_s = now.saturating_duration_since(self.epoch).as_secs();
            let mut requests = 0;
            for b in &self.ring {
                if b.second != EMPTY && b.second <= now_s && now_s - b.second < n {
                    requests += b.counters.requests;
                    if let Some(h) = &b.hist {
                        for v in h.iter_recorded() {
                            let _ =
                                into.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
                        }
                    }
                }
            }
            requests
        }
    }

    pub fn histogram() -> Histogram<u64> {
        new_histogram()
    }
}

/// 1024 samples with latencies spread like a service's: mostly 0.3–3 ms, a tail.
fn samples() -> Vec<RequestSample> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1024)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let us = if i % 100 == 0 {
                10_000 + x % 500_000
            } else {
                300 + x % 2_700
            };
            RequestSample {
                status: if i % 50 == 0 { 503 } else { 200 },
                latency: Duration::from_micros(us),
                bytes_in: 0,
                bytes_out: 512 + x % 4096,
                router_error: i % 50 == 0,
            }
        })
        .collect()
}

/// Time of the `i`th request at 70k requests a second.
fn at(t0: Instant, i: u64) -> Instant {
    t0 + Duration::from_nanos(i * 14_286)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    let samples = samples();
    let t0 = Instant::now();

    // Old and new alternate within one run so that both see the same machine.
    let old = Mutex::new(old::VersionMetrics::new(t0));
    let mut i = 0u64;
    g.bench_function("record_old_mutex_hdrhistogram", |b| {
        b.iter(|| {
            i += 1;
            let s = &samples[(i & 1023) as usize];
            old.lock()
                .unwrap()
                .record(black_box(at(t0, i)), black_box(s));
        })
    });
    let new = VersionMetrics::new(t0);
    let mut i = 0u64;
    g.bench_function("record_new_lock_free_readers", |b| {
        b.iter(|| {
            i += 1;
            let s = &samples[(i & 1023) as usize];
            new.record(black_box(at(t0, i)), black_box(s));
        })
    });

    // The same with a reader on another thread folding 64 s windows without pause:
    // the old writer waits whenever the reader holds its lock.
    // The writer publishes its clock (a relaxed store, the same in both) so that the
    // reader folds the seconds being written.
    let stop = AtomicBool::new(false);
    let clock = AtomicU64::new(1 << 32);
    let clock = &clock;
    let reading_old = AtomicBool::new(true);
    let reading_old = &reading_old;
    std::thread::scope(|scope| {
        let old = &old;
        let new = &new;
        let stop = &stop;
        scope.spawn(move || {
            let mut h = old::histogram();
            while !stop.load(Ordering::Relaxed) {
                let now = at(t0, clock.load(Ordering::Relaxed));
                if reading_old.load(Ordering::Relaxed) {
                    let guard = old.lock().unwrap();
                    black_box(guard.fold(&mut h, Duration::from_secs(64), now));
                } else {
                    let mut m = Merged::new();
                    m.add_window(new, Duration::from_secs(64), now);
                    black_box(m.stats());
                }
                h.reset();
            }
        });
        let mut i = 1u64 << 32;
        g.bench_function("record_old_with_reader", |b| {
            b.iter(|| {
                i += 1;
                clock.store(i, Ordering::Relaxed);
                let s = &samples[(i & 1023) as usize];
                old.lock()
                    .unwrap()
                    .record(black_box(at(t0, i)), black_box(s));
            })
        });
        reading_old.store(false, Ordering::Relaxed);
        let mut i = 1u64 << 32;
        g.bench_function("record_new_with_reader", |b| {
            b.iter(|| {
                i += 1;
                clock.store(i, Ordering::Relaxed);
                let s = &samples[(i & 1023) as usize];
                new.record(black_box(at(t0, i)), black_box(s));
            })
        });
        stop.store(true, Ordering::Relaxed);
    });
    g.finish();
}

criterion_group!(metrics, benches);
criterion_main!(metrics);
