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

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (every write is
        // one transaction), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}
