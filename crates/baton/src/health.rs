//! Readiness checks: one task per running instance probing its HTTP path.
//!
//! The checker reports only threshold crossings (`Ready` after
//! `success_threshold` successes in a row, `Unready` after `failure_threshold`
//! failures in a row), so the engine sees a debounced signal.

use std::net::SocketAddr;
use std::sync::Arc;

use baton_engine::Input;
use baton_spec::ReadinessSpec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::effects::Probe;

/// Probe `addr` until cancelled. `ready` is what the engine believes now, so a
/// checker restarted after a control-plane restart does not flap a serving
/// instance out of routing.
pub fn spawn_checker(
    probe: Arc<dyn Probe>,
    id: String,
    addr: SocketAddr,
    spec: ReadinessSpec,
    mut ready: bool,
    report: mpsc::UnboundedSender<Input>,
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
        let (mut successes, mut failures) = (0u32, 0u32);
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
            let input = if !ready && successes >= spec.success_threshold {
                ready = true;
                Input::Ready { id: id.clone() }
            } else if ready && failures >= spec.failure_threshold {
                ready = false;
                Input::Unready { id: id.clone() }
            } else {
                continue;
            };
            if report.send(input).is_err() {
                return;
            }
        }
    });
}
