//! The live stream the dashboard reads (`GET /v1/stream`, server-sent events):
//! once a second, every app's status and each version's traffic over the last
//! few seconds (request rate, error rate, latency percentiles). One task makes
//! each snapshot, whatever the number of dashboards, and only while one
//! listens; each listener gets the apps its token may read.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::api::AppStatus;
use crate::server::ControlPlane;

/// Seconds of traffic each snapshot's per-version figures cover.
pub const WINDOW_S: u64 = 5;
/// Time between two snapshots.
const PERIOD: Duration = Duration::from_secs(1);

/// One version's traffic over the last [`WINDOW_S`] seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionTraffic {
    pub app: String,
    pub version: String,
    pub requests_per_s: f64,
    /// Share of 5xx answers (and the router's own errors), 0..=1.
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What the stream sends once a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub at_ms: i64,
    pub apps: Vec<AppStatus>,
    pub traffic: Vec<VersionTraffic>,
}

impl Snapshot {
    /// The part of it about the apps `may_read` allows.
    pub fn filtered(&self, may_read: impl Fn(&str) -> bool) -> Snapshot {
        Snapshot {
            at_ms: self.at_ms,
            apps: self
                .apps
                .iter()
                .filter(|a| may_read(&a.app))
                .cloned()
                .collect(),
            traffic: self
                .traffic
                .iter()
                .filter(|t| may_read(&t.app))
                .cloned()
                .collect(),
        }
    }
}

/// The per-version figures of a windows report.
pub fn traffic_of(report: &baton_routing::stats::WindowsReport) -> Vec<VersionTraffic> {
    let window = report.window_s.max(1) as f64;
    report
        .apps
        .iter()
        .flat_map(|a| {
            a.versions.iter().map(move |v| {
                let s = &v.stats;
                VersionTraffic {
                    app: a.app.clone(),
                    version: v.version.clone(),
                    requests_per_s: s.requests as f64 / window,
                    error_rate: if s.requests == 0 {
                        0.0
                    } else {
                        s.status[4] as f64 / s.requests as f64
                    },
                    p50_ms: s.p50_us as f64 / 1000.0,
                    p99_ms: s.p99_us as f64 / 1000.0,
                }
            })
        })
        .collect()
}

/// Makes one snapshot a second while anyone listens.
pub struct Broadcaster {
    tx: broadcast::Sender<Arc<Snapshot>>,
}

impl Broadcaster {
    /// Starts the snapshot task for `cp`, until its shutdown.
    pub fn start(cp: Arc<ControlPlane>) -> Arc<Broadcaster> {
        let (tx, _) = broadcast::channel(4);
        let b = Arc::new(Broadcaster { tx: tx.clone() });
        let stop = cp.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if tx.receiver_count() == 0 {
                    continue;
                }
                let (apps, windows) = crate::api::statuses(&cp, WINDOW_S).await;
                let snapshot = Snapshot {
                    at_ms: cp.shared.now_ms(),
                    apps,
                    traffic: windows.as_ref().map(traffic_of).unwrap_or_default(),
                };
                let _ = tx.send(Arc::new(snapshot));
            }
        });
        b
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Dashboards listening now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }
}
