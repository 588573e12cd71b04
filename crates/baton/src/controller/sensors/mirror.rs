//! Mirror steps: the new release's answers to copies of user requests, compared
//! by the routers with what users got (see `baton_router::mirror`). Judged over
//! the whole step: a share of differing answers above the step's limit fails it
//! (the engine rolls back) with the worst paths named. When the step ends, its
//! comparisons go to the event log; `status` shows them while the rollout runs.

use baton_engine::{AppState, EventKind, Input};
use baton_routing::stats::AppMirrorReport;
use baton_spec::AppSpec;
use baton_store::NewEvent;
use tracing::{info, warn};

use crate::controller::shared::Shared;
use crate::routing::MirrorStep;

/// Fewest comparisons a step is judged on: below, a few early differences
/// would decide alone.
const MIN_COMPARED: u64 = 20;
/// How often the routers' comparisons are read during a step.
const INTERVAL_MS: i64 = 1000;
/// Paths a summary names.
const SUMMARY_PATHS: usize = 5;

/// A mirror step's comparisons so far, as `status` shows them and the event
/// log keeps them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MirrorSummary {
    pub history_id: i64,
    /// The step, 1-based as `status` counts.
    pub step: usize,
    /// The release answering the copies, and the one answering users.
    pub version: String,
    pub from: Option<String>,
    /// False once the step is over.
    pub running: bool,
    pub compared: u64,
    pub matching: u64,
    pub mismatch_rate: f64,
    pub max_mismatch_rate: f64,
    /// Copies not sent because too many were under way.
    pub dropped: u64,
    /// The paths whose answers differed most, with what differed.
    pub paths: Vec<PathSummary>,
}

/// One path of a [`MirrorSummary`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathSummary {
    pub path: String,
    pub compared: u64,
    pub mismatches: u64,
    /// What differed on it, most often first: `$.items[*].price`, `status`...
    pub fields: Vec<String>,
}

impl MirrorSummary {
    /// `120 compared, 118 matching (1.7% differ, limit 1.0%)`.
    pub fn counts_text(&self) -> String {
        format!(
            "{} compared, {} matching ({:.1}% differ, limit {:.1}%)",
            self.compared,
            self.matching,
            self.mismatch_rate * 100.0,
            self.max_mismatch_rate * 100.0
        )
    }

    /// `GET /items: 85 of 85 differ ($.items[*].price, $.items[*].cost)`, worst first.
    pub fn path_lines(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter(|p| p.mismatches > 0)
            .map(|p| {
                format!(
                    "{}: {} of {} differ ({})",
                    p.path,
                    p.mismatches,
                    p.compared,
                    p.fields.join(", ")
                )
            })
            .collect()
    }

    fn of(step: &Watched, report: Option<&AppMirrorReport>) -> Self {
        let r = report.filter(|r| r.report.session == step.session);
        let (compared, matching) = r.map_or((0, 0), |r| {
            let t = r.report.total;
            (t.matches + t.mismatches, t.matches)
        });
        MirrorSummary {
            history_id: step.history_id,
            step: step.step + 1,
            version: step.version.clone(),
            from: step.from.clone(),
            running: true,
            compared,
            matching,
            mismatch_rate: if compared == 0 {
                0.0
            } else {
                (compared - matching) as f64 / compared as f64
            },
            max_mismatch_rate: step.limit,
            dropped: r.map_or(0, |r| r.dropped),
            paths: r
                .map(|r| {
                    r.report
                        .paths
                        .iter()
                        .take(SUMMARY_PATHS)
                        .map(|p| PathSummary {
                            path: p.path.clone(),
                            compared: p.counts.matches + p.counts.mismatches,
                            mismatches: p.counts.mismatches,
                            fields: p.fields.iter().take(3).map(|f| f.field.clone()).collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The mirror step being followed.
#[derive(Debug, Clone)]
struct Watched {
    session: String,
    step: usize,
    history_id: i64,
    version: String,
    from: Option<String>,
    limit: f64,
}

impl From<&MirrorStep<'_>> for Watched {
    fn from(m: &MirrorStep<'_>) -> Self {
        Watched {
            session: m.session.clone(),
            step: m.step,
            history_id: m.history_id,
            version: m.version.clone(),
            from: m.from.clone(),
            limit: m.max_mismatch_rate,
        }
    }
}

/// Follows the mirror steps of an app's rollouts.
pub struct MirrorWatch {
    watching: Option<Watched>,
    last_ms: i64,
    summary: tokio::sync::watch::Sender<Option<MirrorSummary>>,
}

impl MirrorWatch {
    /// A new watch, and the receiver `status` reads its summaries from.
    pub fn new() -> (Self, tokio::sync::watch::Receiver<Option<MirrorSummary>>) {
        let (summary, rx) = tokio::sync::watch::channel(None);
        (
            MirrorWatch {
                watching: None,
                last_ms: 0,
                summary,
            },
            rx,
        )
    }

    /// Reads the routers' comparisons of the mirror step in flight: a share of
    /// differing answers above the limit is a failed analysis; a step that
    /// ended since the last call has its summary recorded.
    pub async fn observe(
        &mut self,
        shared: &Shared,
        spec: &AppSpec,
        state: &AppState,
    ) -> Option<Input> {
        let current = crate::routing::mirror_step(spec, state);
        if let Some(w) = self
            .watching
            .take_if(|w| current.as_ref().is_none_or(|c| c.session != w.session))
        {
            let report = shared.mirror_of(spec).await.ok().flatten();
            let mut summary = MirrorSummary::of(&w, report.as_ref());
            summary.running = false;
            let mut message = format!(
                "mirror step {} of {} ended: {}",
                summary.step,
                summary.version,
                summary.counts_text()
            );
            for line in summary.path_lines() {
                message.push_str(&format!("; {line}"));
            }
            self.record(shared, &spec.name, message, &summary);
            self.summary.send_replace(Some(summary));
        }
        let step = current?;
        let w = self.watching.get_or_insert_with(|| Watched::from(&step));
        let now = shared.now_ms();
        if now - self.last_ms < INTERVAL_MS {
            return None;
        }
        self.last_ms = now;
        let w = w.clone();
        let report = match shared.mirror_of(spec).await {
            Ok(r) => r,
            Err(e) => {
                warn!(app = %spec.name, error = %e, "cannot read the mirror comparisons");
                return None;
            }
        };
        let summary = MirrorSummary::of(&w, report.as_ref());
        self.summary.send_replace(Some(summary.clone()));
        if summary.compared < MIN_COMPARED || summary.mismatch_rate <= w.limit {
            return None;
        }
        let mut reason = format!(
            "mirrored responses of {} differ from {}'s: {} of {} ({:.1}%) > limit {:.1}% (step {})",
            summary.version,
            summary.from.as_deref().unwrap_or("stable"),
            summary.compared - summary.matching,
            summary.compared,
            summary.mismatch_rate * 100.0,
            w.limit * 100.0,
            summary.step
        );
        let worst = summary.path_lines();
        if !worst.is_empty() {
            reason.push_str(&format!("; worst: {}", worst.join("; ")));
        }
        info!(app = %spec.name, %reason, "mirror step failed");
        self.record(
            shared,
            &spec.name,
            format!("mirror step failed: {reason}"),
            &summary,
        );
        // Recorded now: the step's end is this failure.
        self.watching = None;
        let mut ended = summary;
        ended.running = false;
        self.summary.send_replace(Some(ended));
        Some(Input::Analysis {
            verdict: baton_engine::Verdict::Fail,
            reason,
        })
    }

    fn record(&self, shared: &Shared, app: &str, message: String, summary: &MirrorSummary) {
        let event = NewEvent {
            kind: EventKind::MirrorCompared.as_str().into(),
            message,
            fields_json: serde_json::to_string(summary).unwrap_or_else(|_| "{}".into()),
        };
        if let Err(e) = shared.store().append_event(app, &event, shared.now_ms()) {
            warn!(%app, error = %e, "cannot record the mirror comparisons");
        }
    }
}
