//! `baton plan`: what a rollout will do, found by running the real engine
//! against an ideal world (every instance starts and passes readiness at once,
//! every drain finishes at once). Because it is the same state machine, the plan
//! shows the same steps, in the same order, that `deploy` records in its events.

use serde::{Deserialize, Serialize};

use crate::{Action, AppState, EngineError, EventKind, Input, Millis, Release, RolloutKind, step};

/// One step of a planned rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Earliest time after the start at which this step can happen.
    pub at_ms: u64,
    /// Event kind, as recorded in the event log when the rollout runs.
    pub kind: EventKind,
    pub description: String,
    /// Instances of the old release taking traffic after this step.
    pub old_routable: u32,
    /// Instances of the new release taking traffic after this step.
    pub new_routable: u32,
    /// Every instance that exists (including ones draining) after this step.
    pub total_instances: u32,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    /// Most instances running at once.
    pub peak_instances: u32,
    /// Least time the rollout can take (readiness and drains add to it).
    pub min_duration_ms: u64,
}

/// Plan a rollout of `to` from the current state.
pub fn plan(state: &AppState, to: Release) -> Result<Plan, EngineError> {
    const START: Millis = 0;
    let to_revision = to.revision;
    let mut now = START;
    let (mut s, first) = step(
        state,
        Input::Deploy {
            to,
            kind: RolloutKind::Deploy,
            operator: "plan".into(),
            history_id: 0,
            not_before_ms: None,
        },
        now,
    )?;
    let mut pending: std::collections::VecDeque<Input> = Default::default();
    let mut steps = Vec::new();
    let mut peak = s.instances.len() as u32;
    let record = |s: &AppState, actions: &[Action], now: Millis, steps: &mut Vec<PlanStep>| {
        for a in actions {
            if let Action::Event { kind, message } = a {
                let count = |new: bool| {
                    s.instances
                        .iter()
                        .filter(|i| i.is_routable() && (i.revision == to_revision) == new)
                        .count() as u32
                };
                steps.push(PlanStep {
                    at_ms: (now - START) as u64,
                    kind: *kind,
                    description: message.clone(),
                    old_routable: count(false),
                    new_routable: count(true),
                    total_instances: s.instances.len() as u32,
                });
            }
        }
    };
    record(&s, &first, now, &mut steps);
    queue_ideal(&first, &mut pending);

    // Bounded: a rollout of n instances needs O(n) steps; the bound only guards
    // against a bug turning `plan` into a hang.
    for _ in 0..100_000 {
        if s.rollout.is_none() && pending.is_empty() {
            // Blue-green: the old release stays ready for its delay, then drains.
            match &s.warm {
                Some(w) => {
                    now = now.max(w.until_ms);
                    let (next, actions) = step(&s, Input::Tick, now)?;
                    s = next;
                    record(&s, &actions, now, &mut steps);
                    queue_ideal(&actions, &mut pending);
                    continue;
                }
                None => break,
            }
        }
        let input = match pending.pop_front() {
            Some(i) => i,
            None => match s.rollout.as_ref() {
                // A human gate: the plan assumes the human says yes.
                Some(r) if r.awaiting_approval(&s.params) => Input::Approve {
                    by: "an approver".into(),
                },
                Some(r)
                    if r.step_started_ms.is_some()
                        && matches!(r.current_step(&s.params), Some(crate::Step::Checks)) =>
                {
                    Input::ChecksPassed {
                        summary: "smoke tests pass".into(),
                    }
                }
                Some(r)
                    if r.step_started_ms.is_some()
                        && r.paused.is_none()
                        && matches!(
                            r.current_step(&s.params),
                            Some(crate::Step::Pause { duration_ms: None })
                        ) =>
                {
                    Input::Promote {
                        by: "an operator".into(),
                        full: false,
                    }
                }
                _ => {
                    // Nothing left to happen at this instant: let time pass.
                    now += s.params.min_ready_ms.clamp(1, 500) as i64;
                    Input::Tick
                }
            },
        };
        let (next, actions) = step(&s, input, now)?;
        s = next;
        peak = peak.max(s.instances.len() as u32);
        record(&s, &actions, now, &mut steps);
        queue_ideal(&actions, &mut pending);
    }
    Ok(Plan {
        steps,
        peak_instances: peak,
        min_duration_ms: (now - START) as u64,
    })
}

/// In the ideal world every action succeeds at once.
fn queue_ideal(actions: &[Action], pending: &mut std::collections::VecDeque<Input>) {
    for a in actions {
        match a {
            Action::Start { id, .. } => {
                pending.push_back(Input::Started {
                    id: id.clone(),
                    handle: crate::InstanceHandle {
                        instance_id: id.clone(),
                        address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                        locator: crate::Locator::Process {
                            pid: 0,
                            start_time: 0,
                        },
                    },
                });
                pending.push_back(Input::Ready { id: id.clone() });
            }
            Action::Drain { id } => pending.push_back(Input::Drained { id: id.clone() }),
            Action::Stop { id } => pending.push_back(Input::Stopped { id: id.clone() }),
            Action::Event { .. } | Action::Finish { .. } => {}
        }
    }
}
