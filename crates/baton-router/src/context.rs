//! What the request path shares: the router-wide state every worker reads
//! ([`Shared`]), which app a listener serves ([`AppRef`]) and what a client connection
//! knows about itself ([`ConnCtx`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::table::{AppCounters, AppTable, Table};

/// What the request path reads: shared by every worker.
pub(crate) struct Shared {
    /// The live snapshot; read lock-free by every request.
    pub table: ArcSwap<Table>,
    /// Signalled (with the generation) after every swap; held requests wait on it.
    pub swapped: watch::Sender<u64>,
    /// Origin of the router clock used for "backend down until" marks.
    epoch: std::time::Instant,
    started_ms: i64,
    /// Every listener and connection task, for draining on shutdown.
    pub tasks: TaskTracker,
    /// Parent of every listener's stop token.
    pub stopping: CancellationToken,
    /// Set once this router has handed its listeners to a successor: every HTTP/1
    /// response then ends its connection (`Connection: close`), so keep-alive clients
    /// reconnect, to the successor, without a request lost to an idle close.
    keep_alive_off: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        swapped: watch::Sender<u64>,
        epoch: std::time::Instant,
        started_ms: i64,
    ) -> Self {
        Shared {
            table: ArcSwap::from_pointee(Table::empty()),
            swapped,
            epoch,
            started_ms,
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            keep_alive_off: AtomicBool::new(false),
        }
    }

    /// When the router started (ms since the Unix epoch).
    pub(crate) fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// From now on every HTTP/1 response ends its connection ([`Shared::keep_alive_off`]).
    pub(crate) fn step_down(&self) {
        self.keep_alive_off.store(true, Ordering::Relaxed);
    }

    /// Whether HTTP/1 responses must end their connection: this router handed its
    /// listeners to a successor ([`crate::handover`]).
    #[inline]
    pub fn keep_alive_off(&self) -> bool {
        self.keep_alive_off.load(Ordering::Relaxed)
    }

    /// Milliseconds on the router clock (monotonic).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Which app a listener serves.
#[derive(Clone)]
pub(crate) struct AppRef {
    /// Stable index of the app in every snapshot ([`crate::table::Table::app`]).
    pub id: usize,
    pub name: Arc<str>,
}

thread_local! {
    /// This worker's cohort generator for sticky apps.
    static COHORTS: std::cell::RefCell<crate::sticky::CohortRng> =
        std::cell::RefCell::new(crate::sticky::CohortRng::from_clock(crate::worker::index() as u64));
}

/// Room for a read of a request head from a client (a typical head fits).
pub(crate) const FIRST_READ: usize = 4096;

/// What a client connection knows about itself.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub app: AppRef,
    pub peer: SocketAddr,
    /// The client's address as a header value (`X-Forwarded-For`), made once.
    peer_ip: HeaderValue,
    /// This hop's `Forwarded` element (`for=...;proto=http`), made once.
    forwarded: HeaderValue,
    /// The app's counters, where this connection is counted as open.
    app_counters: Option<Arc<AppCounters>>,
    /// Requests under way on this connection (HTTP/1: at most one).
    pub active: AtomicU32,
    /// Requests received on this connection so far.
    pub heads: AtomicU64,
    /// When the last response ended ([`Shared::now_ms`]), or the connection was made.
    pub idle_since_ms: AtomicU64,
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        if let Some(c) = &self.app_counters {
            c.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ConnCtx {
    /// The client's address as an `X-Forwarded-For` element.
    pub(crate) fn peer_ip(&self) -> &HeaderValue {
        &self.peer_ip
    }

    /// This hop's `Forwarded` element.
    pub(crate) fn forwarded(&self) -> &HeaderValue {
        &self.forwarded
    }

    pub fn new(shared: Arc<Shared>, app: AppRef, peer: SocketAddr) -> Self {
        let (peer_ip, forwarded) = forwarding_values(peer.ip());
        let app_counters = live_app(&shared, &app).map(|a| a.counters.clone());
        if let Some(c) = &app_counters {
            c.connections.fetch_add(1, Ordering::Relaxed);
        }
        ConnCtx {
            app_counters,
            active: AtomicU32::new(0),
            heads: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(shared.now_ms()),
            shared,
            app,
            peer,
            peer_ip,
            forwarded,
        }
    }
}

thread_local! {
    /// The forwarding header values of the last client address seen by this worker:
    /// clients usually open many connections in a row.
    static LAST_PEER: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `X-Forwarded-For` and `Forwarded` values of a client at `ip`; formatted only when
/// the address differs from the previous connection's on this worker.
fn forwarding_values(ip: std::net::IpAddr) -> (HeaderValue, HeaderValue) {
    LAST_PEER.with_borrow_mut(|last| {
        if let Some((a, x, f)) = last.as_ref()
            && *a == ip
        {
            return (x.clone(), f.clone());
        }
        let forwarded = match ip {
            std::net::IpAddr::V4(ip) => format!("for={ip};proto=http"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto=http"),
        };
        let x = ip_header(ip);
        let f = HeaderValue::try_from(forwarded).unwrap_or(HeaderValue::from_static("for=unknown"));
        *last = Some((ip, x.clone(), f.clone()));
        (x, f)
    })
}

/// A new cohort from this worker's generator.
pub(crate) fn next_cohort() -> u16 {
    COHORTS.with_borrow_mut(crate::sticky::CohortRng::next_cohort)
}

/// The `X-Forwarded-For` value of a client at `ip` (computed once per connection).
pub(crate) fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The live table of the connection's app, if it is in the snapshot.
#[inline]
pub(crate) fn live_app_of(ctx: &ConnCtx) -> Option<Arc<AppTable>> {
    live_app(&ctx.shared, &ctx.app)
}

/// The live table of `app`, if it is in the snapshot.
#[inline]
pub(crate) fn live_app(sh: &Shared, app: &AppRef) -> Option<Arc<AppTable>> {
    sh.table.load().app(app.id).cloned()
}
