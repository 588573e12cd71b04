//! What every app controller shares: the store and the effects on the world
//! (driver, router, readiness probe, clock), each behind a trait so the
//! deterministic simulation runs this same controller (see `crate::sim`).

use std::path::PathBuf;
use std::sync::Arc;

use baton_driver::DynDriver;
use baton_store::Store;

use futures_util::future::join_all;

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
    /// Who did what, and what baton decided itself (`None` in the simulation).
    pub audit: Option<Arc<crate::audit::AuditLog>>,
}

impl Shared {
    /// Milliseconds since the epoch; the engine gets time only through this.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The routers that serve `spec`'s users: the local one, or the router of
    /// every reached host for an app behind a router on each of its hosts.
    pub fn routers_of(&self, spec: &baton_spec::AppSpec) -> Vec<RouterLink> {
        match spec
            .hosts
            .as_ref()
            .filter(|h| h.router == baton_spec::RouterPlacement::PerHost)
        {
            None => vec![self.router.clone()],
            Some(hosts) => hosts
                .hosts
                .iter()
                .filter_map(|h| self.fleet.host(&h.name)?.router_link())
                .collect(),
        }
    }

    /// The per-version windows of every router that serves `spec`'s users,
    /// merged.
    pub async fn windows_of(
        &self,
        spec: &baton_spec::AppSpec,
        seconds: u64,
    ) -> Result<baton_routing::stats::WindowsReport, baton_router::RouterError> {
        let links = self.routers_of(spec);
        let answers = join_all(links.iter().map(|l| l.windows(seconds))).await;
        let (reports, last_error) = split_answers(answers);
        match (reports.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(crate::routing::merge_windows(reports)),
        }
    }

    /// The mirror comparisons of `spec`'s app on every router that serves its
    /// users, merged; `None` when no router has any.
    pub async fn mirror_of(
        &self,
        spec: &baton_spec::AppSpec,
    ) -> Result<Option<baton_routing::stats::AppMirrorReport>, baton_router::RouterError> {
        let links = self.routers_of(spec);
        let answers = join_all(links.iter().map(|l| l.mirror(&spec.name))).await;
        let (reports, last_error) = split_answers(answers);
        let reports: Vec<_> = reports.into_iter().flatten().collect();
        if let (true, Some(e)) = (reports.is_empty(), last_error) {
            return Err(e);
        }
        Ok(crate::routing::merge_mirror(
            reports,
            spec.mirror.samples as usize,
        ))
    }

    /// Records a decision baton took itself (a verdict, a rollback, a
    /// promotion, a pause for a window). A failure is logged: a rollback is not
    /// held back because its record could not be written.
    pub fn audit_decision(&self, app: &str, action: &str, detail: &str) {
        let Some(audit) = &self.audit else { return };
        let entry = crate::audit::Entry {
            actor: "baton".into(),
            source: "controller".into(),
            action: action.into(),
            app: Some(app.into()),
            outcome: "decided".into(),
            detail: detail.into(),
        };
        if let Err(e) = audit.append(entry, self.now_ms()) {
            tracing::warn!(%app, %action, error = %format!("{e:#}"), "cannot write the audit record of a decision");
        }
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (every write is
        // one transaction), so a poisoned lock is safe to reuse.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The answers that came, and the last error among those that did not.
fn split_answers<T>(
    answers: Vec<Result<T, baton_router::RouterError>>,
) -> (Vec<T>, Option<baton_router::RouterError>) {
    let mut ok = Vec::new();
    let mut last_error = None;
    for a in answers {
        match a {
            Ok(r) => ok.push(r),
            Err(e) => last_error = Some(e),
        }
    }
    (ok, last_error)
}
