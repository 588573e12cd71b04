//! Analysis: while the new release takes traffic, its metrics on the router
//! are judged against the spec's limits (the judge is [`crate::analysis`]); a
//! failure past the limit becomes an `Analysis` input with a `Fail` verdict,
//! which the engine turns into a rollback. Mirror steps are judged by
//! [`super::mirror`].

use std::time::Duration;

use baton_engine::{AppState, EventKind, Input};
use baton_spec::AppSpec;
use baton_store::NewEvent;
use tracing::{info, warn};

use crate::controller::shared::Shared;

/// One analysis measurement of a rollout, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LastCheck {
    pub history_id: i64,
    pub at_ms: i64,
    /// Within every limit (a failing one counts towards `failure_limit`).
    pub passed: bool,
    /// Each measured value against its limit, e.g. `error rate 0.4% ≤ 5%, p99 12 ms ≤ 500 ms`.
    pub text: String,
}

/// The analysis of an app's rollouts, and the newest measurement for `status`.
pub struct Analysis {
    run: AnalysisRun,
    last_check: tokio::sync::watch::Sender<Option<LastCheck>>,
}

impl Analysis {
    /// A new analysis, and the receiver `status` reads its measurements from.
    pub fn new() -> (Self, tokio::sync::watch::Receiver<Option<LastCheck>>) {
        let (last_check, rx) = tokio::sync::watch::channel(None);
        (
            Analysis {
                run: AnalysisRun::default(),
                last_check,
            },
            rx,
        )
    }

    /// Measure the new release on the router's metrics while it takes traffic;
    /// a failure past the limit becomes an automatic
    /// rollback.
    pub async fn measure(
        &mut self,
        shared: &Shared,
        spec: &AppSpec,
        state: &AppState,
        resources: &super::resources::Resources,
    ) -> Option<Input> {
        let Some(r) = state.rollout.clone() else {
            self.run = AnalysisRun::default();
            return None;
        };
        if r.phase != baton_engine::RolloutPhase::Progressing || r.not_before_ms.is_some() {
            return None;
        }
        if self.run.history_id != r.history_id {
            let last = shared
                .store()
                .last_event_of_kind(&spec.name, ANALYSIS_CHECK.as_str())
                .ok()
                .flatten();
            self.run = AnalysisRun {
                history_id: r.history_id,
                failures: recorded_failures(last.as_ref(), r.history_id),
                ..AnalysisRun::default()
            };
        }
        let cfg = crate::analysis::config_of(spec);
        let receives_traffic = state
            .routing()
            .iter()
            .any(|g| g.version == r.to.version && g.weight > 0);
        let interval = cfg.as_ref().map_or(Duration::from_secs(1), |c| c.interval);
        let now = shared.now_ms();
        if now - self.run.last_ms < interval.as_millis() as i64 {
            return None;
        }
        // Memory limits are judged whatever the traffic (a leak grows without
        // requests); the rest only once the new release takes some.
        let judge_resources = cfg
            .as_ref()
            .is_some_and(|c| c.max_memory_bytes.is_some() || c.max_memory_ratio.is_some());
        let judge_traffic = cfg.is_some() && (receives_traffic || judge_resources);
        if !judge_traffic {
            return None;
        }
        self.run.last_ms = now;
        let window = cfg.as_ref().map_or(Duration::from_secs(10), |c| c.window);
        let Ok(report) = shared.windows_of(spec, window.as_secs().clamp(1, 64)).await else {
            return None;
        };
        let stats_of = |version: &str| {
            report
                .apps
                .iter()
                .filter(|a| a.app == spec.name)
                .flat_map(|a| a.versions.iter())
                .find(|v| v.version == version)
                .map(|v| v.stats.clone())
        };
        let new = stats_of(&r.to.version);
        let cfg = cfg.filter(|_| judge_traffic)?;
        let window_ms = window.as_millis() as i64;
        let counts = |version: Option<&str>, s: Option<baton_routing::metrics::WindowStats>| {
            let mut c = s
                .map(|s| crate::analysis::WindowCounts {
                    requests: s.requests,
                    errors: s.status[4],
                    p99: (s.requests > 0).then(|| Duration::from_micros(s.p99_us)),
                    ..Default::default()
                })
                .unwrap_or_default();
            if let Some(version) = version {
                (c.memory, c.cpu_ms) = resources.version_use(version, window_ms, now);
            }
            c
        };
        let stable_version = r.from.as_ref().map(|f| f.version.as_str());
        let new_version = Some(r.to.version.as_str());
        let stable = r.from.as_ref().and_then(|f| stats_of(&f.version));
        // What this measurement saw against each limit, for `status` and the
        // events of passing checks.
        let seen = crate::analysis::describe_window(
            &cfg,
            counts(new_version, new.clone()),
            counts(stable_version, stable.clone()),
        );
        let verdict = crate::analysis::judge(
            &cfg,
            &r.to.version,
            counts(new_version, new),
            counts(stable_version, stable),
        );
        if let Some((v, _)) = &verdict {
            self.last_check.send_replace(Some(LastCheck {
                history_id: r.history_id,
                at_ms: now,
                passed: *v != baton_engine::Verdict::Fail,
                text: seen.clone(),
            }));
        }
        let position = baton_engine::progress(state, now)
            .map(|p| format!(" (step {} of {})", p.number, p.count))
            .unwrap_or_default();
        match verdict {
            Some((baton_engine::Verdict::Fail, reason)) => {
                self.run.failures += 1;
                let limit = cfg.failure_limit.max(1);
                info!(app = %spec.name, failures = self.run.failures, %reason, "analysis failed");
                self.record_check(
                    shared,
                    &spec.name,
                    format!(
                        "analysis check failed ({} of {limit} in a row): {reason}",
                        self.run.failures
                    ),
                );
                if self.run.failures >= limit {
                    return Some(Input::Analysis {
                        verdict: baton_engine::Verdict::Fail,
                        reason,
                    });
                }
            }
            Some((baton_engine::Verdict::Pass, _)) => {
                // A passing check is recorded when the verdict changes (after
                // failures) and once per step, not at every interval: the
                // event log stays readable and still shows every step passed.
                if self.run.failures > 0 {
                    self.run.failures = 0;
                    self.record_check(
                        shared,
                        &spec.name,
                        format!("analysis check passed{position}: {seen}; failures in a row reset"),
                    );
                } else if self.run.passed_at_step != Some(r.step) {
                    self.record_check(
                        shared,
                        &spec.name,
                        format!("analysis check passed{position}: {seen}"),
                    );
                }
                self.run.passed_at_step = Some(r.step);
            }
            Some(_) | None => {}
        }
        None
    }

    /// Records the failures in a row of the rollout's analysis (see [`AnalysisRun`]).
    fn record_check(&self, shared: &Shared, app: &str, message: String) {
        let fields = AnalysisCheck {
            history_id: self.run.history_id,
            failures: self.run.failures,
        };
        let event = NewEvent {
            kind: ANALYSIS_CHECK.as_str().into(),
            message,
            fields_json: serde_json::to_string(&fields).unwrap_or_else(|_| "{}".into()),
        };
        if let Err(e) = shared.store().append_event(app, &event, shared.now_ms()) {
            warn!(%app, error = %e, "cannot record the analysis check");
        }
    }
}

/// Analysis state of the rollout in flight. The count of failing measurements in a
/// row is also kept in the event log ([`ANALYSIS_CHECK`] events), so a restarted
/// control plane goes on counting where the previous one stopped.
#[derive(Default)]
struct AnalysisRun {
    history_id: i64,
    last_ms: i64,
    failures: u32,
    /// The step whose passing check is recorded already.
    passed_at_step: Option<usize>,
}

/// Event kind recording the failing measurements in a row of a rollout's analysis.
const ANALYSIS_CHECK: EventKind = EventKind::AnalysisCheck;

/// What an [`ANALYSIS_CHECK`] event carries.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct AnalysisCheck {
    history_id: i64,
    /// Failing measurements in a row, this one included (0: a passing one).
    failures: u32,
}

/// The failures in a row recorded for rollout `history_id` by the newest
/// [`ANALYSIS_CHECK`] event (0 when it belongs to another rollout).
fn recorded_failures(last: Option<&baton_store::EventRecord>, history_id: i64) -> u32 {
    last.and_then(|e| serde_json::from_str::<AnalysisCheck>(&e.fields_json).ok())
        .filter(|c| c.history_id == history_id)
        .map_or(0, |c| c.failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(history_id: i64, failures: u32) -> baton_store::EventRecord {
        baton_store::EventRecord {
            id: 1,
            app: "demo".into(),
            at_ms: 0,
            kind: ANALYSIS_CHECK.as_str().into(),
            message: String::new(),
            fields_json: serde_json::to_string(&AnalysisCheck {
                history_id,
                failures,
            })
            .unwrap(),
        }
    }

    #[test]
    fn a_restarted_analysis_counts_on_from_the_record_of_its_own_rollout() {
        assert_eq!(recorded_failures(Some(&check(7, 2)), 7), 2);
        // Another rollout's record, a reset, none, or an unreadable one: from zero.
        assert_eq!(recorded_failures(Some(&check(6, 2)), 7), 0);
        assert_eq!(recorded_failures(Some(&check(7, 0)), 7), 0);
        assert_eq!(recorded_failures(None, 7), 0);
        let mut bad = check(7, 2);
        bad.fields_json = "{}".into();
        assert_eq!(recorded_failures(Some(&bad), 7), 0);
    }
}
