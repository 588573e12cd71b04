//! The control plane's effects on the world, behind traits: the clock, the
//! readiness probe and (in baton-driver) the instance driver, and (in
//! `routing`) the router's admin API. Production wires the real ones; the
//! deterministic simulation (`crate::sim`) wires simulated ones and runs the
//! very same controller on virtual time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_driver::BoxFuture;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where the controller gets the time (milliseconds since the Unix epoch).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// The clock of a tokio runtime whose time may be paused: `base_ms` plus the
/// tokio time elapsed since it was made. Under `tokio::time::pause` it is
/// virtual time that jumps to the next timer whenever every task waits.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base_ms: i64) -> Self {
        TokioClock {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

/// One readiness probe of an instance: does `GET path` at `addr` succeed
/// within `timeout`?
pub trait Probe: Send + Sync + 'static {
    fn check<'a>(
        &'a self,
        addr: SocketAddr,
        path: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, bool>;
}

/// The real probe: an HTTP GET over a pooled client.
pub struct HttpProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpProbe {
    fn default() -> Self {
        HttpProbe {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        }
    }
}

impl Probe for HttpProbe {
    fn check<'a>(
        &'a self,
        addr: SocketAddr,
        path: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Ok(uri) = format!("http://{addr}{path}").parse::<hyper::Uri>() else {
                return false;
            };
            matches!(
                tokio::time::timeout(timeout, self.client.get(uri)).await,
                Ok(Ok(resp)) if resp.status().is_success()
            )
        })
    }
}

/// The wall clock, for what only people read (status lines, "in 3 d 14 h").
pub fn wall_clock_ms() -> i64 {
    SystemClock.now_ms()
}

/// How one observation (an engine input reported by a background task: a
/// start, a readiness crossing, a drain, a stop, an exit) reaches the
/// controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliver {
    /// Once, at once (production).
    Once,
    /// Twice in a row.
    Twice,
    /// Once, this much later (others may overtake it).
    Late(Duration),
    /// Never. Only for what the next poll sees again (an exit).
    Lost,
}

/// Fault injection on the observations: the deterministic simulation
/// decides, for each one, whether it arrives once, twice, late or not at
/// all. Production has none (everything arrives once).
pub trait Delivery: Send + Sync + 'static {
    fn deliver(&self, input: &baton_engine::Input) -> Deliver;
}

/// How `input` arrives, under `delivery` if there is one.
pub fn delivery_of(delivery: Option<&Arc<dyn Delivery>>, input: &baton_engine::Input) -> Deliver {
    delivery.map_or(Deliver::Once, |d| d.deliver(input))
}

/// The sending end of a controller's observations, through its [`Delivery`].
#[derive(Clone)]
pub struct Reporter {
    tx: tokio::sync::mpsc::UnboundedSender<baton_engine::Input>,
    delivery: Option<Arc<dyn Delivery>>,
}

impl Reporter {
    pub fn new(
        tx: tokio::sync::mpsc::UnboundedSender<baton_engine::Input>,
        delivery: Option<Arc<dyn Delivery>>,
    ) -> Self {
        Reporter { tx, delivery }
    }

    /// Report `input`. False once the controller is gone.
    pub fn send(&self, input: baton_engine::Input) -> bool {
        let deliver = delivery_of(self.delivery.as_ref(), &input);
        self.send_as(input, deliver)
    }

    /// Report `input` the way `deliver` says.
    pub fn send_as(&self, input: baton_engine::Input, deliver: Deliver) -> bool {
        match deliver {
            Deliver::Once => self.tx.send(input).is_ok(),
            Deliver::Twice => self.tx.send(input.clone()).is_ok() && self.tx.send(input).is_ok(),
            Deliver::Late(after) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(input);
                });
                !self.tx.is_closed()
            }
            Deliver::Lost => !self.tx.is_closed(),
        }
    }
}
