//! Taking an app down: `baton down` (every instance stopped now) and
//! `baton delete` (out of routing, requests in flight finished, then stopped).

use std::net::SocketAddr;

use baton_driver::InstanceHandle;
use baton_engine::{AppState, Input, Outcome};
use tracing::{info, warn};

use super::{AppController, STOP_ALL_ACK_WAIT, STOP_ALL_START_WAIT};
use crate::controller::params::params_of;

impl AppController {
    /// Stop every instance of the app (for `baton down` and `baton delete`):
    /// out of routing first, then (for `delete`) the requests in flight
    /// finish, then all at once, including any whose start is still in flight.
    /// The controller stops after this (see [`Flow::Stop`]). Returns how many
    /// instances were stopped.
    pub(super) async fn stop_all(&mut self, drains: Drains) -> usize {
        self.readiness.stop_all();
        let mut empty = AppState::new(self.spec.name.clone(), params_of(&self.spec));
        empty.instances.clear();
        let generation = self
            .shared
            .router
            .publish(crate::routing::app_routes(&self.spec, &empty));
        // The router is stopped right after this, so a router that does not
        // answer only delays `down` a little.
        if tokio::time::timeout(
            STOP_ALL_ACK_WAIT,
            self.shared.router.acknowledged(generation),
        )
        .await
        .is_err()
        {
            warn!(app = %self.spec.name, "the router did not acknowledge the empty table; stopping anyway");
        }
        if drains == Drains::Wait {
            let mut idle = tokio::task::JoinSet::new();
            for address in self
                .state
                .instances
                .iter()
                .filter_map(|i| i.address.as_deref()?.parse::<SocketAddr>().ok())
            {
                let router = self.shared.router.clone();
                let timeout = self.spec.drain_timeout;
                // Bounded: a router that does not answer must not keep the app.
                idle.spawn(async move {
                    tokio::time::timeout(timeout, router.wait_idle(address, timeout)).await
                });
            }
            idle.join_all().await;
        }
        let mut handles: Vec<InstanceHandle> = self
            .state
            .instances
            .iter()
            .filter_map(|i| self.handle_of(&i.id))
            .collect();
        // Starts still in flight: wait for the driver's answer and stop what it started.
        let deadline = tokio::time::Instant::now() + STOP_ALL_START_WAIT;
        while !self.starting.is_empty() {
            match tokio::time::timeout_at(deadline, self.observations.recv()).await {
                Ok(Some(Input::Started { id, handle })) => {
                    self.starting.remove(&id);
                    handles.push(handle);
                }
                Ok(Some(Input::StartFailed { id, .. })) => {
                    self.starting.remove(&id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    warn!(app = %self.spec.name, starting = ?self.starting, "starts still in flight when stopping");
                    break;
                }
            }
        }
        let grace = self.stop_grace();
        let mut stops = tokio::task::JoinSet::new();
        for handle in handles {
            let shared = self.shared.clone();
            stops.spawn(async move {
                if let Err(e) = shared.driver.stop(&handle, grace).await {
                    warn!(instance = %handle.instance_id, error = %e, "stopping instance failed");
                }
            });
        }
        stops.join_all().await.len()
    }

    /// `baton delete`: a rollout in flight is closed in the history as
    /// aborted, then every instance leaves routing, its requests in flight
    /// finish (bounded by `drain_timeout`) and it is stopped.
    pub(super) async fn delete(&mut self) {
        if let Some(r) = &self.state.rollout
            && let Err(e) = self.shared.store().finish_history(
                r.history_id,
                Outcome::Aborted.as_str(),
                "the app was deleted",
                self.shared.now_ms(),
            )
        {
            warn!(app = %self.spec.name, error = %e, "closing the history record failed");
        }
        let stopped = self.stop_all(Drains::Wait).await;
        info!(app = %self.spec.name, instances = stopped, "app deleted: instances drained and stopped");
    }
}

/// Whether `stop_all` lets requests in flight finish before stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drains {
    /// `delete`: each instance's requests finish (bounded by `drain_timeout`).
    Wait,
    /// `down`: everything stops now, the router included.
    Skip,
}
