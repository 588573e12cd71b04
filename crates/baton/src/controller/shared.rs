//! What every app controller shares: the store and the effects on the world
//! (driver, router, readiness probe, clock), each behind a trait so the
//! deterministic simulation runs this same controller (see `crate::sim`).

use std::path::PathBuf;
use std::sync::Arc;

use baton_driver::DynDriver;
use baton_store::Store;

use crate::effects::{Clock, Delivery, Probe};
use crate::routing::RouterLink;

/// Shared pieces every app controller uses: the store and the effects on the
/// world (driver, router, readiness probe, clock), each behind a trait so the
/// deterministic simulation runs this same controller (see `crate::sim`).
pub struct Shared {
    pub store: Arc<std::sync::Mutex<Store>>,
    pub driver: Arc<dyn DynDriver>,
    pub router: RouterLink,
    /// The hosts of apps that run on other machines (their routers and nodes).
    pub fleet: Arc<crate::fleet::Fleet>,
    pub probe: Arc<dyn Probe>,
    pub clock: Arc<dyn Clock>,
    /// Faults on the observations' way back (the simulation's); `None`:
    /// every observation arrives once, at once.
    pub delivery: Option<Arc<dyn Delivery>>,
    pub data_dir: PathBuf,
    /// Path of the running baton executable, for the `{baton}` placeholder.
    pub baton_exe: String,
}

impl Shared {
    /// Milliseconds since the epoch; the engine gets time only through this.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The per-version windows of every router that serves `spec`'s users:
    /// the local router's, or every reachable host router's merged.
    pub async fn windows_of(
        &self,
        spec: &baton_spec::AppSpec,
        seconds: u64,
    ) -> Result<baton_router::WindowsReport, baton_router::RouterError> {
        let Some(hosts) = spec
            .hosts
            .as_ref()
            .filter(|h| h.router == baton_spec::RouterPlacement::PerHost)
        else {
            return self.router.windows(seconds).await;
        };
        let links: Vec<_> = hosts
            .hosts
            .iter()
            .filter_map(|h| self.fleet.host(&h.name))
            .collect();
        let answers =
            futures_util::future::join_all(links.iter().map(|l| l.windows(seconds))).await;
        let mut reports = Vec::new();
        let mut last_error = None;
        for answer in answers.into_iter().flatten() {
            match answer {
                Ok(r) => reports.push(r),
                Err(e) => last_error = Some(e),
            }
        }
        match (reports.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(crate::routing::merge_windows(reports)),
        }
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (every write is
        // one transaction), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}
