//! Typed records of what happened: the kinds of event the engine emits
//! (stored in the event log by name) and why a rollout is paused.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The kind of an [`crate::Action::Event`], stored in the event log (and
/// shown by the API) by its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SpecUpdated,
    RolloutStarted,
    WaitingForWindow,
    WindowOpened,
    WindowSkipped,
    Promoting,
    Promoted,
    Approved,
    Paused,
    Resumed,
    ChecksPassed,
    ChecksFailed,
    AnalysisFailed,
    AnalysisInconclusive,
    /// One measurement of the analysis, recorded by the controller (not the
    /// engine) with the failures in a row so far.
    AnalysisCheck,
    /// A mirror step's comparisons, recorded by the controller when the step
    /// ends or fails.
    MirrorCompared,
    /// A webhook notice that could not be delivered, recorded by the controller.
    NotificationFailed,
    InstanceStarting,
    InstanceStarted,
    InstanceStartFailed,
    InstanceReady,
    InstanceUnready,
    InstanceExited,
    InstanceDraining,
    InstanceStopped,
    StepStarted,
    WeightSet,
    RolloutFinished,
    RolloutFailed,
    RolloutAborted,
    SwitchingBack,
    WarmStandby,
    WarmStandbyEnded,
}

impl EventKind {
    /// Every kind, in the order of the lifecycle.
    pub const ALL: &'static [EventKind] = &[
        EventKind::SpecUpdated,
        EventKind::RolloutStarted,
        EventKind::WaitingForWindow,
        EventKind::WindowOpened,
        EventKind::WindowSkipped,
        EventKind::Promoting,
        EventKind::Promoted,
        EventKind::Approved,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::ChecksPassed,
        EventKind::ChecksFailed,
        EventKind::AnalysisFailed,
        EventKind::AnalysisInconclusive,
        EventKind::AnalysisCheck,
        EventKind::MirrorCompared,
        EventKind::NotificationFailed,
        EventKind::InstanceStarting,
        EventKind::InstanceStarted,
        EventKind::InstanceStartFailed,
        EventKind::InstanceReady,
        EventKind::InstanceUnready,
        EventKind::InstanceExited,
        EventKind::InstanceDraining,
        EventKind::InstanceStopped,
        EventKind::StepStarted,
        EventKind::WeightSet,
        EventKind::RolloutFinished,
        EventKind::RolloutFailed,
        EventKind::RolloutAborted,
        EventKind::SwitchingBack,
        EventKind::WarmStandby,
        EventKind::WarmStandbyEnded,
    ];

    /// The name stored in the event log, e.g. `instance_ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SpecUpdated => "spec_updated",
            EventKind::RolloutStarted => "rollout_started",
            EventKind::WaitingForWindow => "waiting_for_window",
            EventKind::WindowOpened => "window_opened",
            EventKind::WindowSkipped => "window_skipped",
            EventKind::Promoting => "promoting",
            EventKind::Promoted => "promoted",
            EventKind::Approved => "approved",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::ChecksPassed => "checks_passed",
            EventKind::ChecksFailed => "checks_failed",
            EventKind::AnalysisFailed => "analysis_failed",
            EventKind::AnalysisInconclusive => "analysis_inconclusive",
            EventKind::AnalysisCheck => "analysis_check",
            EventKind::MirrorCompared => "mirror_compared",
            EventKind::NotificationFailed => "notification_failed",
            EventKind::InstanceStarting => "instance_starting",
            EventKind::InstanceStarted => "instance_started",
            EventKind::InstanceStartFailed => "instance_start_failed",
            EventKind::InstanceReady => "instance_ready",
            EventKind::InstanceUnready => "instance_unready",
            EventKind::InstanceExited => "instance_exited",
            EventKind::InstanceDraining => "instance_draining",
            EventKind::InstanceStopped => "instance_stopped",
            EventKind::StepStarted => "step_started",
            EventKind::WeightSet => "weight_set",
            EventKind::RolloutFinished => "rollout_finished",
            EventKind::RolloutFailed => "rollout_failed",
            EventKind::RolloutAborted => "rollout_aborted",
            EventKind::SwitchingBack => "switching_back",
            EventKind::WarmStandby => "warm_standby",
            EventKind::WarmStandbyEnded => "warm_standby_ended",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a rollout is paused. It moves again on `baton resume` (or, for
/// [`PauseReason::UpgradeWindow`], when the next window opens).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cause")]
pub enum PauseReason {
    /// `baton pause` by this operator.
    Operator { by: String },
    /// The app's upgrade window closed (`on_end: pause`).
    UpgradeWindow,
    /// An analysis could not decide; a person should look.
    AnalysisInconclusive { reason: String },
    /// No progress within the progress deadline (`on_progress_deadline: pause`);
    /// `detail` says what was missing.
    ProgressDeadline { detail: String },
    /// Hosts of the app stopped answering (`since_ms`: when the first did);
    /// nothing is guessed about them, the rollout waits until they answer.
    HostsUnreachable { hosts: Vec<String>, since_ms: i64 },
}

/// How a pause by the upgrade window was worded before pauses were typed.
const BY_WINDOW: &str = "the upgrade window";

impl PauseReason {
    /// A pause stored as text by an earlier baton: the text it wrote for each
    /// reason (`paused by NAME`, `analysis inconclusive: ...`, and the
    /// progress deadline's own message, the only other writer).
    pub fn from_legacy_text(text: &str) -> PauseReason {
        if let Some(by) = text.strip_prefix("paused by ") {
            if by == BY_WINDOW {
                PauseReason::UpgradeWindow
            } else {
                PauseReason::Operator { by: by.to_string() }
            }
        } else if let Some(reason) = text.strip_prefix("analysis inconclusive: ") {
            PauseReason::AnalysisInconclusive {
                reason: reason.to_string(),
            }
        } else {
            PauseReason::ProgressDeadline {
                detail: text.to_string(),
            }
        }
    }

    /// Serde `deserialize_with` for a stored `Option<PauseReason>`: the typed
    /// form, or the text an earlier baton stored.
    pub(crate) fn deserialize_stored<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PauseReason>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Typed(PauseReason),
            Text(String),
        }
        Ok(Option::<Stored>::deserialize(d)?.map(|s| match s {
            Stored::Typed(r) => r,
            Stored::Text(t) => PauseReason::from_legacy_text(&t),
        }))
    }
}

/// The words `status` and the event log use, as before pauses were typed.
impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseReason::Operator { by } => write!(f, "paused by {by}"),
            PauseReason::UpgradeWindow => write!(f, "paused by {BY_WINDOW}"),
            PauseReason::AnalysisInconclusive { reason } => {
                write!(f, "analysis inconclusive: {reason}")
            }
            PauseReason::ProgressDeadline { detail } => f.write_str(detail),
            PauseReason::HostsUnreachable { hosts, since_ms } => {
                let secs = since_ms.div_euclid(1000).rem_euclid(86_400);
                let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
                let which = match hosts.as_slice() {
                    [one] => format!("host {one} is"),
                    many => format!("hosts {} are", many.join(", ")),
                };
                write!(
                    f,
                    "{which} unreachable since {h:02}:{m:02}:{s:02} UTC; the rollout goes on \
                     when they answer again"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_are_stored_by_their_old_names() {
        for kind in EventKind::ALL {
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), *kind);
        }
    }

    #[test]
    fn a_pause_reads_as_before_and_old_stored_text_loads() {
        let reasons = [
            PauseReason::Operator { by: "alice".into() },
            PauseReason::UpgradeWindow,
            PauseReason::AnalysisInconclusive {
                reason: "too few requests".into(),
            },
            PauseReason::ProgressDeadline {
                detail:
                    "progress deadline exceeded: no new instance of v2 became available for 10 s"
                        .into(),
            },
        ];
        for reason in reasons {
            // The old stored form was the text itself.
            assert_eq!(PauseReason::from_legacy_text(&reason.to_string()), reason);
        }
        assert_eq!(
            PauseReason::UpgradeWindow.to_string(),
            "paused by the upgrade window"
        );
    }
}
