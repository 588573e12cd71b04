//! Readiness: one health checker (see [`crate::health`]) per instance that is
//! starting or ready, none for the others. The checkers report `Ready` and
//! `Unready` to the controller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use baton_engine::{AppState, InstancePhase as P};
use baton_spec::ReadinessSpec;
use tokio_util::sync::CancellationToken;

use crate::effects::{Probe, Reporter};
use crate::health;

/// The running checkers, by instance id. Ordered: checkers start in the same
/// order every time, which keeps the simulation replayable from its seed.
#[derive(Default)]
pub struct Readiness {
    checkers: BTreeMap<String, CancellationToken>,
}

impl Readiness {
    /// Keep one checker per running instance of `state`, none for the others.
    pub fn sync(
        &mut self,
        state: &AppState,
        spec: &ReadinessSpec,
        probe: &Arc<dyn Probe>,
        report: &Reporter,
        shutdown: &CancellationToken,
    ) {
        let wanted: BTreeMap<String, (SocketAddr, bool)> = state
            .instances
            .iter()
            .filter(|i| matches!(i.phase, P::Starting | P::Ready { .. }))
            .filter_map(|i| {
                let addr = i.address.as_deref()?.parse().ok()?;
                Some((i.id.clone(), (addr, i.is_routable())))
            })
            .collect();
        self.checkers.retain(|id, token| {
            let keep = wanted.contains_key(id);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (id, (addr, ready)) in wanted {
            if self.checkers.contains_key(&id) {
                continue;
            }
            let token = shutdown.child_token();
            self.checkers.insert(id.clone(), token.clone());
            health::spawn_checker(
                probe.clone(),
                id,
                addr,
                spec.clone(),
                ready,
                report.clone(),
                token,
            );
        }
    }

    /// Stop every checker.
    pub fn stop_all(&mut self) {
        for token in self.checkers.values() {
            token.cancel();
        }
        self.checkers.clear();
    }
}
