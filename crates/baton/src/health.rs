//! Readiness checks: one task per running instance probing its HTTP path.
//!
//! The checker reports threshold crossings (`Ready` after
//! `success_threshold` successes in a row, `Unready` after `failure_threshold`
//! failures in a row), so the engine sees a debounced signal. It also says
//! again what it believes every [`REASSERT_EVERY`] probes: level-triggered,
//! so a report that was lost, or overtaken by an older one, is corrected
//! (the engine ignores a report that changes nothing).

use std::net::SocketAddr;
use std::sync::Arc;

use baton_engine::Input;
use baton_spec::ReadinessSpec;
use tokio_util::sync::CancellationToken;

use crate::effects::{Probe, Reporter};

/// Probes between two reports of the same belief.
pub const REASSERT_EVERY: u32 = 10;

/// Probe `addr` until cancelled. `ready` is what the engine believes now, so a
/// checker restarted after a control-plane restart does not flap a serving
/// instance out of routing.
pub fn spawn_checker(
    probe: Arc<dyn Probe>,
    id: String,
    addr: SocketAddr,
    spec: ReadinessSpec,
    mut ready: bool,
    report: Reporter,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        if !spec.initial_delay.is_zero() && !ready {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(spec.initial_delay) => {}
            }
        }
        let (mut successes, mut failures, mut quiet) = (0u32, 0u32, 0u32);
        let mut interval = tokio::time::interval(spec.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            let ok = probe.check(addr, &spec.path, spec.timeout).await;
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            quiet += 1;
            if !ready && successes >= spec.success_threshold {
                ready = true;
            } else if ready && failures >= spec.failure_threshold {
                ready = false;
            } else if quiet < REASSERT_EVERY {
                continue;
            }
            quiet = 0;
            let input = if ready {
                Input::Ready { id: id.clone() }
            } else {
                Input::Unready { id: id.clone() }
            };
            if !report.send(input) {
                return;
            }
        }
    });
}
