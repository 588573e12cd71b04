//! Unit and property tests of the engine: whole rollouts simulated against a
//! scripted world, and random fault sequences checked against the invariants
//! of DESIGN.md (capacity, routing, no duplicates).

use std::collections::VecDeque;

use proptest::prelude::*;

use super::Strategy;
use super::*;

fn params(n: u32, surge: u32, unavailable: u32) -> Params {
    Params {
        instances: n,
        max_surge: surge,
        max_unavailable: unavailable,
        min_ready_ms: 1_000,
        progress_deadline_ms: 30_000,
        max_restarts: 2,
        strategy: Strategy::Rolling,
        pause_on_deadline: false,
        hosts: Vec::new(),
        max_unavailable_hosts: 0,
        approval_by_another: false,
    }
}

fn canary_steps() -> Vec<Step> {
    vec![
        Step::SetWeight { percent: 10 },
        Step::Pause {
            duration_ms: Some(5_000),
        },
        Step::SetWeight { percent: 50 },
        Step::Pause { duration_ms: None },
        Step::SetWeight { percent: 100 },
    ]
}

fn blue_green_steps(n: u32) -> Vec<Step> {
    vec![
        Step::SetScale { instances: n },
        Step::Approval,
        Step::SetWeight { percent: 100 },
        Step::ScaleDownDelay {
            duration_ms: 10_000,
        },
    ]
}

/// A stable v1 with a stepped strategy configured for the next rollout.
fn deployed_stepped(n: u32, steps: Vec<Step>) -> Sim {
    let mut sim = deployed(n, 1, 0);
    sim.state.params.strategy = Strategy::Stepped { steps };
    sim
}

fn weights(sim: &Sim) -> Vec<(String, u32)> {
    sim.state
        .routing()
        .into_iter()
        .map(|g| (g.version, g.weight))
        .collect()
}

/// Share of new requests (percent) the routing table gives `version`.
fn weight_of(sim: &Sim, version: &str) -> u32 {
    let w = weights(sim);
    let total: u32 = w.iter().map(|(_, w)| w).sum();
    w.into_iter()
        .find(|(v, _)| v == version)
        .map_or(0, |(_, w)| w * 100 / total.max(1))
}

/// Advance time in small ticks until `cond` holds (bounded).
fn run_until(sim: &mut Sim, max_ms: i64, mut cond: impl FnMut(&Sim) -> bool) {
    let end = sim.now + max_ms;
    while sim.now < end {
        if cond(sim) {
            return;
        }
        if let Some(i) = sim.queue.pop_front() {
            sim.input(i);
            continue;
        }
        sim.now += 100;
        sim.input(Input::Tick);
    }
    assert!(
        cond(sim),
        "condition not reached; state {:?}",
        sim.state.rollout
    );
}

#[test]
fn canary_moves_weight_step_by_step_and_keeps_stable_whole() {
    let mut sim = deployed_stepped(4, canary_steps());
    sim.deploy(rel(2, "v2"));
    assert_eq!(weight_of(&sim, "v1"), 100);
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    assert_eq!(weight_of(&sim, "v1"), 90);
    let live = |s: &Sim, v: &str| {
        s.state
            .instances
            .iter()
            .filter(|i| i.is_live() && i.version == v)
            .count()
    };
    assert_eq!(live(&sim, "v1"), 4, "stable keeps every instance");
    assert_eq!(live(&sim, "v2"), 1, "10% of 4 needs one canary");
    // The timed pause passes by itself, then 50%, then a pause until promoted.
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 50);
    assert_eq!(live(&sim, "v2"), 2);
    sim.run(100, 20_000);
    assert_eq!(sim.state.phase_name(), "progressing");
    assert_eq!(weight_of(&sim, "v2"), 50, "waits for promote");
    sim.input(Input::Promote {
        by: "bob".into(),
        full: false,
    });
    run_until(&mut sim, 60_000, |s| s.state.rollout.is_none());
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
    assert_eq!(sim.state.stable, Some(rel(2, "v2")));
    sim.run(100, 10_000);
    assert_eq!(sim.routable_versions(), vec!["v2"; 4]);
}

#[test]
fn failed_analysis_sends_all_traffic_back_at_once() {
    let mut sim = deployed_stepped(4, canary_steps());
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    sim.input(Input::Analysis {
        verdict: Verdict::Fail,
        reason: "error rate of v2 0.21 > 0.05 over 10s".into(),
    });
    assert_eq!(weight_of(&sim, "v2"), 0);
    assert_eq!(weight_of(&sim, "v1"), 100);
    sim.run(100, 30_000);
    let (outcome, notes) = sim.finished().unwrap();
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(notes.contains("error rate"), "{notes}");
    assert_eq!(sim.routable_versions(), vec!["v1"; 4]);
}

#[test]
fn inconclusive_analysis_pauses_for_a_human() {
    let mut sim = deployed_stepped(2, canary_steps());
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    sim.input(Input::Analysis {
        verdict: Verdict::Inconclusive,
        reason: "only 12 requests, need 100".into(),
    });
    assert_eq!(sim.state.phase_name(), "paused");
    sim.run(100, 20_000);
    assert_eq!(weight_of(&sim, "v2"), 10, "a paused rollout holds");
    sim.input(Input::Resume { by: "carol".into() });
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 50);
}

#[test]
fn a_pause_stored_as_text_by_an_earlier_baton_still_loads() {
    let mut sim = deployed_stepped(2, canary_steps());
    sim.deploy(rel(2, "v2"));
    sim.input(Input::Pause { by: "alice".into() });
    let stored = serde_json::to_value(&sim.state).unwrap();
    assert_eq!(
        stored["rollout"]["paused"],
        serde_json::json!({"cause": "operator", "by": "alice"})
    );
    assert_eq!(
        serde_json::from_value::<AppState>(stored.clone()).unwrap(),
        sim.state
    );
    // What the previous version wrote: the words themselves.
    for (text, reason) in [
        (
            "paused by alice",
            PauseReason::Operator { by: "alice".into() },
        ),
        ("paused by the upgrade window", PauseReason::UpgradeWindow),
        (
            "analysis inconclusive: only 12 requests",
            PauseReason::AnalysisInconclusive {
                reason: "only 12 requests".into(),
            },
        ),
    ] {
        let mut old = stored.clone();
        old["rollout"]["paused"] = text.into();
        let loaded: AppState = serde_json::from_value(old).unwrap();
        assert_eq!(loaded.rollout.unwrap().paused, Some(reason));
    }
}

#[test]
fn the_upgrade_window_pauses_and_resumes_only_its_own_pause() {
    let mut sim = deployed_stepped(2, canary_steps());
    sim.deploy(rel(2, "v2"));
    sim.input(Input::UpgradeWindowClosed);
    let paused = |s: &Sim| s.state.rollout.as_ref().unwrap().paused.clone();
    assert_eq!(paused(&sim), Some(PauseReason::UpgradeWindow));
    sim.input(Input::UpgradeWindowOpened);
    assert_eq!(paused(&sim), None);
    // An operator's pause outlasts the window.
    sim.input(Input::Pause { by: "bob".into() });
    sim.input(Input::UpgradeWindowClosed);
    sim.input(Input::UpgradeWindowOpened);
    assert_eq!(
        paused(&sim),
        Some(PauseReason::Operator { by: "bob".into() })
    );
}

#[test]
fn blue_green_waits_for_approval_switches_at_once_and_can_switch_back() {
    let mut sim = deployed_stepped(3, blue_green_steps(3));
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state.phase_name() == "awaiting_approval"
    });
    // Green is fully up but takes no user traffic.
    let green_ready = sim
        .state
        .instances
        .iter()
        .filter(|i| i.version == "v2" && i.is_routable())
        .count();
    assert_eq!(green_ready, 3);
    assert_eq!(weight_of(&sim, "v2"), 0);
    // `promote` also passes an approval gate.
    assert!(
        step(
            &sim.state,
            Input::Promote {
                by: "x".into(),
                full: false
            },
            sim.now
        )
        .is_ok()
    );
    sim.input(Input::Approve { by: "dave".into() });
    assert_eq!(weight_of(&sim, "v2"), 100);
    assert_eq!(weight_of(&sim, "v1"), 0);
    // Inside the scale-down delay blue still runs: a rollback to it switches
    // back without starting anything.
    let blue_ready = sim
        .state
        .instances
        .iter()
        .filter(|i| i.version == "v1" && i.is_routable())
        .count();
    assert_eq!(blue_ready, 3);
    let before = sim.log.len();
    sim.input(Input::Deploy {
        to: rel(1, "v1"),
        kind: RolloutKind::Rollback,
        operator: "dave".into(),
        history_id: 8,
        not_before_ms: None,
    });
    assert_eq!(weight_of(&sim, "v1"), 100, "switched back in one step");
    assert!(
        !sim.log[before..]
            .iter()
            .any(|a| matches!(a, Action::Start { .. })),
        "switching back started an instance"
    );
    sim.run(100, 30_000);
    let (outcome, notes) = sim.finished().unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(notes.contains("switched back to v1"), "{notes}");
    assert!(sim.state.rollout.is_none());
    assert_eq!(sim.state.stable, Some(rel(1, "v1")));
    assert_eq!(sim.routable_versions(), vec!["v1"; 3]);
}

/// Four eyes: with `approval_by_another`, who started the rollout cannot pass
/// its gate; someone else can.
#[test]
fn an_approval_may_have_to_come_from_another_person() {
    let mut sim = deployed_stepped(2, blue_green_steps(2));
    sim.state.params.approval_by_another = true;
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state.phase_name() == "awaiting_approval"
    });
    let err = step(&sim.state, Input::Approve { by: "test".into() }, sim.now).unwrap_err();
    assert!(
        matches!(&err, EngineError::SelfApproval { by, .. } if by == "test"),
        "{err}"
    );
    assert_eq!(sim.state.phase_name(), "awaiting_approval");
    sim.input(Input::Approve { by: "erin".into() });
    assert!(sim.state.rollout.is_none(), "erin's approval switched");
}

/// After the switch the rollout is over (history closed, new deploys
/// allowed) while blue stays ready, out of routing, for the delay.
#[test]
fn blue_green_finishes_at_the_switch_and_keeps_blue_warm_for_the_delay() {
    let mut sim = deployed_stepped(2, blue_green_steps(2));
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state.phase_name() == "awaiting_approval"
    });
    sim.input(Input::Approve { by: "erin".into() });
    let switched = sim.now;
    assert!(sim.state.rollout.is_none(), "the switch ends the rollout");
    let (outcome, notes) = sim.finished().unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(notes.contains("v1 kept ready for 10s"), "{notes}");
    assert_eq!(sim.state.stable, Some(rel(2, "v2")));
    assert_eq!(sim.state.phase_name(), "stable");
    assert_eq!(weight_of(&sim, "v2"), 100);
    let warm = sim.state.warm.clone().expect("blue kept warm");
    assert_eq!(warm.release, rel(1, "v1"));
    assert_eq!(warm.until_ms, switched + 10_000);
    // Blue is ready but takes no traffic, and nothing drains it early.
    run_until(&mut sim, 9_000, |s| s.now >= switched + 9_000);
    let live_v1 = |s: &Sim| {
        s.state
            .instances
            .iter()
            .filter(|i| i.version == "v1" && i.is_live())
            .count()
    };
    assert_eq!(live_v1(&sim), 2);
    assert_eq!(weight_of(&sim, "v1"), 0);
    // Then it drains.
    sim.run(100, 10_000);
    assert!(sim.state.warm.is_none());
    assert_eq!(live_v1(&sim), 0);
    assert!(sim.now - switched >= 10_000, "blue kept for the delay");
    assert_eq!(sim.routable_versions(), vec!["v2"; 2]);
}

#[test]
fn a_new_deploy_or_promote_during_the_warm_standby_drains_blue() {
    let mut sim = deployed_stepped(2, blue_green_steps(2));
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state.phase_name() == "awaiting_approval"
    });
    sim.input(Input::Approve { by: "erin".into() });
    assert!(sim.state.warm.is_some());
    // A new deploy is allowed at once; blue is not kept for it.
    let (next, actions) = step(
        &sim.state,
        Input::Deploy {
            to: rel(3, "v3"),
            kind: RolloutKind::Deploy,
            operator: "x".into(),
            history_id: 9,
            not_before_ms: None,
        },
        sim.now,
    )
    .expect("a new deploy is allowed during the warm standby");
    assert!(next.warm.is_none());
    let drained = actions
        .iter()
        .filter(|a| matches!(a, Action::Drain { id } if id.starts_with("demo-r1-")))
        .count();
    assert_eq!(drained, 2, "{actions:?}");
    // `promote` ends the standby early.
    sim.input(Input::Promote {
        by: "erin".into(),
        full: false,
    });
    assert!(sim.state.warm.is_none());
    sim.run(100, 5_000);
    assert_eq!(sim.routable_versions(), vec!["v2"; 2]);
}

#[test]
fn resume_of_a_rollout_that_is_not_paused_is_refused() {
    let mut sim = deployed(2, 1, 0);
    sim.deploy(rel(2, "v2"));
    let err = step(&sim.state, Input::Resume { by: "x".into() }, sim.now).unwrap_err();
    assert!(err.to_string().contains("demo is not paused"), "{err}");
}

#[test]
fn the_record_of_an_aborted_rollout_names_both_versions_and_the_step() {
    let mut sim = deployed_stepped(2, canary_steps());
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    sim.input(Input::Abort {
        by: "gina".into(),
        reason: "looks wrong".into(),
    });
    sim.run(100, 30_000);
    let (outcome, notes) = sim.finished().unwrap();
    assert_eq!(outcome, Outcome::Aborted);
    assert!(notes.contains("aborted by gina: looks wrong"), "{notes}");
    assert!(notes.contains("rolled back to v1 (from v2)"), "{notes}");
    assert!(notes.contains("step 2 of 5"), "{notes}");
}

#[test]
fn progress_says_which_step_and_what_it_waits_for() {
    let mut sim = deployed_stepped(2, blue_green_steps(2));
    sim.deploy(rel(2, "v2"));
    // Step 1 (run 2 instances of v2) is set at once; step 2 waits for them.
    let p = progress(&sim.state, sim.now).unwrap();
    assert_eq!((p.number, p.count), (2, 4));
    assert_eq!(
        p.waiting,
        StepWait::Instances {
            available: 0,
            needed: 2
        }
    );
    assert!(!p.description.contains("canary"), "{}", p.description);
    run_until(&mut sim, 30_000, |s| {
        s.state.phase_name() == "awaiting_approval"
    });
    let p = progress(&sim.state, sim.now).unwrap();
    assert_eq!((p.number, p.waiting), (2, StepWait::Approval));

    let mut sim = deployed_stepped(2, canary_steps());
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    sim.now += 2_000;
    sim.input(Input::Tick);
    let p = progress(&sim.state, sim.now).unwrap();
    assert_eq!(p.number, 2);
    assert!(
        matches!(p.waiting, StepWait::Time { remaining_ms } if remaining_ms <= 3_000 && remaining_ms > 0),
        "{p:?}"
    );
}

#[test]
fn plan_of_a_blue_green_shows_the_warm_standby_and_its_peak() {
    let sim = deployed_stepped(2, blue_green_steps(2));
    let planned = plan(&sim.state, rel(2, "v2")).unwrap();
    let kinds: Vec<&str> = planned.steps.iter().map(|s| s.kind.as_str()).collect();
    for k in ["warm_standby", "rollout_finished", "warm_standby_ended"] {
        assert!(kinds.contains(&k), "{k}: {kinds:?}");
    }
    assert!(
        planned
            .steps
            .iter()
            .all(|s| !s.description.contains("canary")),
        "{:?}",
        planned.steps
    );
    let most = planned.steps.iter().map(|s| s.total_instances).max();
    assert_eq!(Some(planned.peak_instances), most);
    assert_eq!(planned.peak_instances, 4);
}

#[test]
fn a_rollout_outside_the_window_waits_and_touches_nothing() {
    let mut sim = deployed(2, 1, 0);
    let opens = sim.now + 60_000;
    sim.input(Input::Deploy {
        to: rel(2, "v2"),
        kind: RolloutKind::Deploy,
        operator: "ops".into(),
        history_id: 9,
        not_before_ms: Some(opens),
    });
    assert_eq!(sim.state.phase_name(), "waiting_for_window");
    sim.run(1_000, 30_000);
    assert!(sim.state.instances.iter().all(|i| i.version == "v1"));
    run_until(&mut sim, 120_000, |s| s.state.rollout.is_none());
    assert_eq!(sim.state.stable, Some(rel(2, "v2")));
}

#[test]
fn deploy_now_starts_a_rollout_waiting_for_its_window() {
    let mut sim = deployed(2, 1, 0);
    let deploy = |not_before_ms, version: &str, history_id| Input::Deploy {
        to: rel(2, version),
        kind: RolloutKind::Deploy,
        operator: "ops".into(),
        history_id,
        not_before_ms,
    };
    sim.input(deploy(Some(sim.now + 3_600_000), "v2", 9));
    assert_eq!(sim.state.phase_name(), "waiting_for_window");
    // Another release, or a deploy that still waits, is refused.
    for input in [
        deploy(None, "v3", 9),
        deploy(Some(sim.now + 1_000), "v2", 9),
    ] {
        assert!(matches!(
            step(&sim.state, input, sim.now),
            Err(EngineError::RolloutInProgress { .. })
        ));
    }
    sim.input(deploy(None, "v2", 9));
    assert_eq!(sim.state.phase_name(), "progressing");
    assert!(sim.log.iter().any(
        |a| matches!(a, Action::Event { kind, message } if kind.as_str() == "window_skipped" && message.contains("ops"))
    ));
    run_until(&mut sim, 60_000, |s| s.state.rollout.is_none());
    assert_eq!(sim.state.stable, Some(rel(2, "v2")));
}

#[test]
fn checks_gate_holds_until_smoke_tests_pass_and_a_failure_rolls_back() {
    let steps = vec![
        Step::SetScale { instances: 2 },
        Step::Checks,
        Step::SetWeight { percent: 100 },
    ];
    let mut sim = deployed_stepped(2, steps.clone());
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state.rollout.as_ref().is_some_and(|r| {
            r.step_started_ms.is_some()
                && matches!(r.current_step(&s.state.params), Some(Step::Checks))
        })
    });
    sim.run(100, 10_000);
    assert_eq!(
        weight_of(&sim, "v2"),
        0,
        "no user traffic before the checks pass"
    );
    sim.input(Input::ChecksPassed {
        summary: "2 smoke tests passed".into(),
    });
    run_until(&mut sim, 30_000, |s| s.state.rollout.is_none());
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));

    let mut sim = deployed_stepped(2, steps);
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state
            .rollout
            .as_ref()
            .is_some_and(|r| r.step_started_ms.is_some() && r.step == 1)
    });
    sim.input(Input::ChecksFailed {
        reason: "home page: HTTP 500".into(),
    });
    sim.run(100, 30_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::RolledBack));
    assert!(
        !sim.log
            .iter()
            .any(|a| matches!(a, Action::Event { kind, .. } if kind.as_str() == "weight_set"))
    );
}

#[test]
fn approve_without_a_gate_is_refused() {
    let mut sim = deployed_stepped(2, canary_steps());
    sim.deploy(rel(2, "v2"));
    let err = step(&sim.state, Input::Approve { by: "x".into() }, sim.now).unwrap_err();
    assert!(matches!(err, EngineError::NothingToApprove { .. }));
}

#[test]
fn full_promotion_skips_remaining_steps() {
    let mut sim = deployed_stepped(3, canary_steps());
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    sim.input(Input::Promote {
        by: "frank".into(),
        full: true,
    });
    run_until(&mut sim, 60_000, |s| s.state.rollout.is_none());
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
}

#[test]
fn plan_of_a_canary_matches_its_execution() {
    let mut sim = deployed_stepped(3, canary_steps());
    let planned = plan(&sim.state, rel(2, "v2")).unwrap();
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 60_000, |s| {
        s.state.rollout.as_ref().is_some_and(|r| {
            r.step_started_ms.is_some()
                && matches!(
                    r.current_step(&s.state.params),
                    Some(Step::Pause { duration_ms: None })
                )
        })
    });
    sim.input(Input::Promote {
        by: "an operator".into(),
        full: false,
    });
    sim.run(100, 60_000);
    let kinds = |acts: &[Action]| -> Vec<String> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Event { kind, .. } => Some(kind.to_string()),
                _ => None,
            })
            .collect()
    };
    let executed = kinds(&sim.log);
    let planned_kinds: Vec<String> = planned.steps.iter().map(|s| s.kind.to_string()).collect();
    let weight_steps = |v: &[String]| v.iter().filter(|k| k.as_str() == "weight_set").count();
    assert_eq!(weight_steps(&planned_kinds), weight_steps(&executed));
    let count = |v: &[String], k: &str| v.iter().filter(|x| x.as_str() == k).count();
    for k in [
        "step_started",
        "instance_started",
        "instance_stopped",
        "rollout_finished",
        "promoted",
    ] {
        assert_eq!(
            count(&planned_kinds, k),
            count(&executed, k),
            "{k}: {planned_kinds:?} vs {executed:?}"
        );
    }
}

fn rel(revision: u32, version: &str) -> Release {
    Release {
        revision,
        version: version.into(),
    }
}

/// Drives the engine like the controller does, with a world that follows the
/// actions: starts succeed, instances become ready, drains finish.
struct Sim {
    state: AppState,
    now: Millis,
    queue: VecDeque<Input>,
    log: Vec<Action>,
    /// Versions whose instances never pass readiness.
    never_ready: Vec<String>,
}

impl Sim {
    fn new(p: Params) -> Self {
        Sim {
            state: AppState::new("demo", p),
            now: 1_000_000,
            queue: VecDeque::new(),
            log: Vec::new(),
            never_ready: Vec::new(),
        }
    }

    fn input(&mut self, input: Input) {
        let about = match &input {
            Input::Unready { id } | Input::Exited { id, .. } => Some(id.clone()),
            _ => None,
        };
        let (next, actions) = step(&self.state, input, self.now).expect("valid input");
        check_invariants(&self.state, &next, about.as_deref(), self.now);
        self.state = next;
        for a in &actions {
            match a {
                Action::Start { id, version, .. } => {
                    let port = 10_000 + self.state.next_instance_seq as u16;
                    self.queue.push_back(Input::Started {
                        id: id.clone(),
                        handle: InstanceHandle {
                            instance_id: id.clone(),
                            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                            locator: Locator::Process {
                                pid: u32::from(port),
                                start_time: 1,
                            },
                        },
                    });
                    if !self.never_ready.contains(version) {
                        self.queue.push_back(Input::Ready { id: id.clone() });
                    }
                }
                Action::Drain { id } => self.queue.push_back(Input::Drained { id: id.clone() }),
                Action::Stop { id } => self.queue.push_back(Input::Stopped { id: id.clone() }),
                _ => {}
            }
        }
        self.log.extend(actions);
    }

    /// Run until nothing is queued and the rollout ended, advancing time by `tick`.
    fn run(&mut self, tick: i64, max_ms: i64) {
        let end = self.now + max_ms;
        while self.now < end {
            if let Some(i) = self.queue.pop_front() {
                self.input(i);
                continue;
            }
            if self.state.rollout.is_none() && self.state.warm.is_none() {
                break;
            }
            self.now += tick;
            self.input(Input::Tick);
        }
    }

    fn deploy(&mut self, to: Release) {
        self.input(Input::Deploy {
            to,
            kind: RolloutKind::Deploy,
            operator: "test".into(),
            history_id: 7,
            not_before_ms: None,
        });
    }

    fn finished(&self) -> Option<(Outcome, String)> {
        self.log.iter().rev().find_map(|a| match a {
            Action::Finish { outcome, notes, .. } => Some((*outcome, notes.clone())),
            _ => None,
        })
    }

    fn routable_versions(&self) -> Vec<String> {
        self.state
            .instances
            .iter()
            .filter(|i| i.is_routable())
            .map(|i| i.version.clone())
            .collect()
    }
}

/// Invariants every transition must keep.
fn check_invariants(before: &AppState, after: &AppState, faulted: Option<&str>, now: Millis) {
    // Routing: only instances that passed readiness and are not draining.
    for g in after.routing() {
        for (id, _) in &g.backends {
            let inst = after.instance(id).expect("routed instance exists");
            assert!(inst.is_routable(), "{id} routed while {:?}", inst.phase);
        }
    }
    // No duplicate ids.
    let mut ids: Vec<&str> = after.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    let len = ids.len();
    ids.dedup();
    assert_eq!(len, ids.len(), "duplicate instance ids");
    // Capacity: the engine itself never takes a routable instance that takes
    // traffic out of service when that leaves fewer than instances -
    // max_unavailable available (crashes and failed checks are the world's
    // doing, not ours; a canary at weight 0 carries no traffic).
    let taking_traffic: Vec<String> = before
        .routing()
        .into_iter()
        .filter(|g| g.weight > 0)
        .map(|g| g.version)
        .collect();
    let drained_by_engine: Vec<&Instance> = before
        .instances
        .iter()
        .filter(|i| i.is_routable() && Some(i.id.as_str()) != faulted)
        .filter(|i| taking_traffic.contains(&i.version))
        .filter(|i| {
            after
                .instance(&i.id)
                .is_some_and(|a| matches!(a.phase, InstancePhase::Draining { .. }))
        })
        .collect();
    if !drained_by_engine.is_empty() {
        let routable = after.instances.iter().filter(|i| i.is_routable()).count() as u32;
        assert!(
            routable >= after.params.min_available().max(1),
            "drained {:?} leaving {routable} routable < min {} at {now}",
            drained_by_engine.iter().map(|i| &i.id).collect::<Vec<_>>(),
            after.params.min_available()
        );
    }
    // Weight vs capacity: a weight step gives a version more traffic only when
    // its ready instances can carry that share of the app's traffic.
    if let (Some(b), Some(a)) = (&before.rollout, &after.rollout)
        && a.phase == RolloutPhase::Progressing
        && a.history_id == b.history_id
        && a.weight != b.weight
        && let (Some(w_after), Some(w_before)) = (a.weight, b.weight)
    {
        let (release, share) = if w_after > w_before {
            (&a.to, w_after)
        } else {
            (
                a.from
                    .as_ref()
                    .expect("a stepped rollout has a stable release"),
                100 - w_after,
            )
        };
        let ready = after
            .instances
            .iter()
            .filter(|i| i.is_routable() && i.revision == release.revision)
            .count() as u32;
        let needed = crate::reconcile::scale_for(share, after.params.instances);
        assert!(
            ready >= needed,
            "{} given {share}% of the traffic with {ready} ready instance(s) < {needed} needed at {now}",
            release.version
        );
    }
    // Surge: while a rolling upgrade progresses, live instances stay within
    // n + surge (stepped strategies run the new release beside the whole stable one).
    if after.rollout.is_some() && after.params.strategy == Strategy::Rolling {
        let live = after.instances.iter().filter(|i| i.is_live()).count() as u32;
        let bound = (after.params.instances + after.params.effective_surge())
            .max(before.instances.iter().filter(|i| i.is_live()).count() as u32);
        assert!(live <= bound, "{live} live instances > {bound}");
    }
}

fn deployed(n: u32, surge: u32, unavailable: u32) -> Sim {
    let mut sim = Sim::new(params(n, surge, unavailable));
    sim.deploy(rel(1, "v1"));
    sim.run(100, 60_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
    sim.log.clear();
    sim
}

#[test]
fn first_deploy_starts_all_instances_at_once() {
    let sim = deployed(4, 1, 0);
    assert_eq!(sim.state.stable, Some(rel(1, "v1")));
    assert_eq!(sim.routable_versions(), vec!["v1"; 4]);
}

#[test]
fn rolling_upgrade_replaces_every_instance_and_keeps_capacity() {
    let mut sim = deployed(4, 1, 0);
    sim.deploy(rel(2, "v2"));
    sim.run(100, 120_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
    assert_eq!(sim.state.stable, Some(rel(2, "v2")));
    assert_eq!(sim.routable_versions(), vec!["v2"; 4]);
    assert!(sim.state.instances.iter().all(|i| i.version == "v2"));
}

#[test]
fn surge_zero_unavailable_one_replaces_in_place() {
    let mut sim = deployed(3, 0, 1);
    sim.deploy(rel(2, "v2"));
    sim.run(100, 120_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
    assert_eq!(sim.routable_versions(), vec!["v2"; 3]);
}

#[test]
fn never_ready_version_fails_at_deadline_and_old_keeps_full_capacity() {
    let mut sim = deployed(4, 1, 0);
    sim.never_ready.push("v2".into());
    sim.deploy(rel(2, "v2"));
    sim.run(100, 120_000);
    let (outcome, notes) = sim.finished().expect("finished");
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(notes.contains("progress deadline"), "{notes}");
    assert_eq!(sim.state.stable, Some(rel(1, "v1")));
    assert_eq!(sim.routable_versions(), vec!["v1"; 4]);
    assert!(sim.state.instances.iter().all(|i| i.version == "v1"));
}

#[test]
fn a_stalled_rollout_can_pause_instead_of_rolling_back() {
    let mut sim = deployed(2, 1, 0);
    sim.state.params.pause_on_deadline = true;
    sim.never_ready.push("v2".into());
    sim.deploy(rel(2, "v2"));
    sim.run(100, 60_000);
    assert_eq!(sim.state.phase_name(), "paused");
    assert!(sim.finished().is_none(), "nothing was rolled back");
    assert!(matches!(
        sim.state.rollout.as_ref().unwrap().paused,
        Some(PauseReason::ProgressDeadline { .. })
    ));
    sim.input(Input::Abort {
        by: "op".into(),
        reason: "stuck".into(),
    });
    sim.run(100, 30_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Aborted));
}

#[test]
fn crashing_version_fails_after_max_restarts() {
    let mut sim = deployed(4, 1, 0);
    sim.deploy(rel(2, "v2"));
    // Every v2 instance crashes as soon as it starts.
    for _ in 0..50 {
        let Some(i) = sim.queue.pop_front() else {
            break;
        };
        sim.input(i);
        let crashing: Vec<String> = sim
            .state
            .instances
            .iter()
            .filter(|i| i.version == "v2" && i.is_live() && i.phase != InstancePhase::Pending)
            .map(|i| i.id.clone())
            .collect();
        for id in crashing {
            sim.input(Input::Exited {
                id,
                detail: "exit code 1".into(),
                cause: ExitCause::Crashed,
            });
        }
    }
    sim.run(100, 60_000);
    let (outcome, notes) = sim.finished().expect("finished");
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(notes.contains("max_restarts"), "{notes}");
    assert_eq!(sim.routable_versions(), vec!["v1"; 4]);
}

#[test]
fn abort_sends_all_traffic_back_at_once() {
    let mut sim = deployed(4, 1, 0);
    sim.deploy(rel(2, "v2"));
    // Let the first v2 become ready (but not yet available).
    while let Some(i) = sim.queue.pop_front() {
        sim.input(i);
    }
    assert!(sim.routable_versions().contains(&"v2".to_string()));
    sim.input(Input::Abort {
        by: "alice".into(),
        reason: "looks wrong".into(),
    });
    assert_eq!(sim.routable_versions(), vec!["v1"; 4]);
    sim.run(100, 60_000);
    let (outcome, notes) = sim.finished().expect("finished");
    assert_eq!(outcome, Outcome::Aborted);
    assert!(notes.contains("alice"), "{notes}");
}

#[test]
fn second_deploy_during_rollout_is_refused_and_changes_nothing() {
    let mut sim = deployed(2, 1, 0);
    sim.deploy(rel(2, "v2"));
    let before = sim.state.clone();
    let err = step(
        &sim.state,
        Input::Deploy {
            to: rel(3, "v3"),
            kind: RolloutKind::Deploy,
            operator: "x".into(),
            history_id: 1,
            not_before_ms: None,
        },
        sim.now,
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::RolloutInProgress { .. }));
    assert_eq!(sim.state, before);
}

#[test]
fn oom_kill_of_the_new_version_rolls_back_at_once() {
    let mut sim = deployed(3, 1, 0);
    sim.state.params.max_restarts = 5;
    sim.deploy(rel(2, "v2"));
    // Let the first v2 instance start, then the kernel kills it for its memory.
    while let Some(i) = sim.queue.pop_front() {
        let started = matches!(&i, Input::Started { .. });
        sim.input(i);
        if started {
            break;
        }
    }
    let id = sim
        .state
        .instances
        .iter()
        .find(|i| i.version == "v2")
        .expect("a v2 instance")
        .id
        .clone();
    sim.input(Input::Exited {
        id,
        detail: "OOM-killed (memory limit 64 MiB)".into(),
        cause: ExitCause::OutOfMemory,
    });
    // Turned around at once: no restart of v2 was tried.
    assert!(
        sim.state
            .rollout
            .as_ref()
            .is_none_or(|r| matches!(r.phase, RolloutPhase::RollingBack { .. })),
        "{:?}",
        sim.state.rollout
    );
    assert_eq!(sim.state.rollout.as_ref().map_or(0, |r| r.restarts), 0);
    sim.run(100, 60_000);
    let (outcome, notes) = sim.finished().expect("finished");
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(
        notes.contains("OOM-killed (memory limit 64 MiB)"),
        "{notes}"
    );
}

#[test]
fn oom_kill_of_a_stable_instance_is_a_crash_like_any_other() {
    let mut sim = deployed(3, 1, 0);
    let id = sim.state.instances[0].id.clone();
    sim.input(Input::Exited {
        id,
        detail: "OOM-killed".into(),
        cause: ExitCause::OutOfMemory,
    });
    assert!(sim.state.rollout.is_none());
    assert_eq!(
        sim.state.instances.iter().filter(|i| i.is_live()).count(),
        3,
        "replaced"
    );
}

#[test]
fn crashed_stable_instance_is_replaced() {
    let mut sim = deployed(3, 1, 0);
    let id = sim.state.instances[0].id.clone();
    sim.input(Input::Exited {
        id,
        detail: "killed".into(),
        cause: ExitCause::Crashed,
    });
    assert_eq!(
        sim.state.instances.iter().filter(|i| i.is_live()).count(),
        3
    );
}

#[test]
fn reconcile_is_idempotent() {
    let mut sim = deployed(4, 1, 0);
    sim.deploy(rel(2, "v2"));
    sim.run(100, 1_500);
    let (s1, _) = step(&sim.state, Input::Tick, sim.now).unwrap();
    let (s2, a2) = step(&s1, Input::Tick, sim.now).unwrap();
    assert_eq!(s1, s2);
    assert!(a2.is_empty(), "{a2:?}");
}

#[test]
fn plan_matches_the_events_of_an_executed_rollout() {
    let mut sim = deployed(4, 1, 0);
    let planned = plan(&sim.state, rel(2, "v2")).unwrap();
    sim.deploy(rel(2, "v2"));
    sim.run(100, 120_000);
    let executed: Vec<String> = sim
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Event { kind, .. } => Some(kind.to_string()),
            _ => None,
        })
        .collect();
    let planned_kinds: Vec<String> = planned.steps.iter().map(|s| s.kind.to_string()).collect();
    assert_eq!(planned_kinds, executed);
    // 4 + 1 surge, plus one old instance still draining while its replacement starts.
    assert_eq!(planned.peak_instances, 6);
    // The peak is one of the planned steps' instance counts.
    let most = planned.steps.iter().map(|s| s.total_instances).max();
    assert_eq!(Some(planned.peak_instances), most);
    assert!(planned.min_duration_ms >= 4 * 1_000);
}

#[test]
fn a_weight_step_after_set_canary_scale_scales_the_canary_first() {
    // The shipped canary example: one canary instance, then weights up to 100%.
    let steps = vec![
        Step::SetScale { instances: 1 },
        Step::SetWeight { percent: 10 },
        Step::Pause { duration_ms: None },
        Step::SetWeight { percent: 50 },
        Step::Pause { duration_ms: None },
        Step::SetWeight { percent: 100 },
        Step::Pause { duration_ms: None },
    ];
    let mut sim = deployed_stepped(4, steps);
    sim.deploy(rel(2, "v2"));
    let ready_v2 = |s: &Sim| s.routable_versions().iter().filter(|v| *v == "v2").count();
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 10);
    assert_eq!(ready_v2(&sim), 1, "10% of 4 is carried by the one canary");
    sim.input(Input::Promote {
        by: "op".into(),
        full: false,
    });
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 50);
    assert!(ready_v2(&sim) >= 2, "50% of 4 needs two canaries");
    sim.input(Input::Promote {
        by: "op".into(),
        full: false,
    });
    run_until(&mut sim, 30_000, |s| weight_of(s, "v2") == 100);
    assert_eq!(ready_v2(&sim), 4, "100% needs the canary at full strength");
    // The stable release was never touched meanwhile.
    assert_eq!(
        sim.routable_versions()
            .iter()
            .filter(|v| *v == "v1")
            .count(),
        4
    );
}

#[test]
fn a_set_canary_scale_below_the_weight_does_not_drain_needed_canaries() {
    let steps = vec![
        Step::SetWeight { percent: 50 },
        Step::SetScale { instances: 1 },
        Step::Pause { duration_ms: None },
    ];
    let mut sim = deployed_stepped(4, steps);
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 30_000, |s| {
        s.state
            .rollout
            .as_ref()
            .is_some_and(|r| r.step == 2 && r.step_started_ms.is_some())
    });
    sim.run(100, 5_000);
    assert_eq!(weight_of(&sim, "v2"), 50);
    let ready_v2 = sim
        .routable_versions()
        .iter()
        .filter(|v| *v == "v2")
        .count();
    assert!(ready_v2 >= 2, "{ready_v2} canaries carry 50% of 4");
}

fn arb_step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::strategy::Strategy as _;
    prop_oneof![
        (0u32..=100).prop_map(|percent| Step::SetWeight { percent }),
        (0u32..6).prop_map(|instances| Step::SetScale { instances }),
        (0u64..3_000).prop_map(|d| Step::Pause {
            duration_ms: Some(d)
        }),
        Just(Step::Pause { duration_ms: None }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any list of canary steps, crashes and readiness flaps included: a weight
    /// is only ever raised when the canary's ready instances can carry it (the
    /// check is in `check_invariants`, run on every transition).
    #[test]
    fn weight_never_outgrows_the_canary(
        n in 1u32..7,
        steps in proptest::collection::vec(arb_step(), 1..8),
        faults in proptest::collection::vec((0u8..6, 0usize..16), 0..40),
    ) {
        let mut sim = deployed_stepped(n, steps);
        sim.deploy(rel(2, "v2"));
        for (kind, pick) in faults {
            let ids: Vec<String> = sim.state.instances.iter().map(|i| i.id.clone()).collect();
            match (kind, ids.get(pick % ids.len().max(1)).cloned()) {
                (0, Some(id)) => sim.input(Input::Unready { id }),
                (1, Some(id)) => sim.input(Input::Exited {
                    id,
                    detail: "boom".into(),
                    cause: ExitCause::Crashed,
                }),
                _ => {
                    if let Some(i) = sim.queue.pop_front() {
                        sim.input(i);
                    } else {
                        sim.now += 500;
                        sim.input(Input::Tick);
                    }
                }
            }
        }
        for _ in 0..20 {
            sim.run(100, 20_000);
            let Some(r) = sim.state.rollout.clone() else { break };
            let promote = Input::Promote { by: "op".into(), full: false };
            if r.phase == RolloutPhase::Progressing && step(&sim.state, promote.clone(), sim.now).is_ok() {
                sim.input(promote);
            }
        }
    }
}

fn arb_input(ids: usize) -> impl proptest::strategy::Strategy<Value = (u8, usize, u16)> {
    (0u8..8, 0..ids.max(1), 0u16..3000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random readiness flaps, crashes, drains and clock jumps during a rollout:
    /// the invariants hold at every step (checked inside `Sim::input`), and the
    /// rollout always ends once the world settles.
    #[test]
    fn invariants_hold_under_random_faults(
        n in 1u32..6, surge in 0u32..3, unavailable in 0u32..3, strategy in 0u8..3,
        events in proptest::collection::vec(arb_input(16), 0..120),
    ) {
        let unavailable = if surge == 0 && unavailable == 0 { 1 } else { unavailable };
        let mut sim = deployed(n, surge, unavailable);
        sim.state.params.strategy = match strategy {
            0 => Strategy::Rolling,
            1 => Strategy::Stepped { steps: canary_steps() },
            _ => Strategy::Stepped { steps: blue_green_steps(n) },
        };
        sim.deploy(rel(2, "v2"));
        for (kind, pick, dt) in events {
            // Half of the time, let the world do what it was asked.
            if kind < 4 {
                if let Some(i) = sim.queue.pop_front() { sim.input(i); }
                continue;
            }
            let ids: Vec<String> = sim.state.instances.iter().map(|i| i.id.clone()).collect();
            let Some(id) = ids.get(pick % ids.len().max(1)).cloned() else { continue };
            let input = match kind {
                4 => Input::Unready { id },
                5 => Input::Ready { id },
                6 => Input::Exited {
                    id,
                    detail: "boom".into(),
                    cause: if dt % 5 == 0 {
                        ExitCause::OutOfMemory
                    } else {
                        ExitCause::Crashed
                    },
                },
                _ => { sim.now += i64::from(dt); Input::Tick }
            };
            sim.input(input);
        }
        // Settle: every instance the world knows becomes ready again.
        sim.never_ready.clear();
        for inst in sim.state.instances.clone() {
            if inst.phase == InstancePhase::Starting {
                sim.queue.push_back(Input::Ready { id: inst.id });
            }
        }
        // Humans say yes at every gate.
        for _ in 0..20 {
            sim.run(100, 60_000);
            let Some(r) = sim.state.rollout.clone() else { break };
            if r.paused.is_some() {
                sim.input(Input::Resume { by: "op".into() });
            } else if r.awaiting_approval(&sim.state.params) {
                sim.input(Input::Approve { by: "op".into() });
            } else if r.phase == RolloutPhase::Progressing && r.weight.is_some() {
                let _ = step(&sim.state, Input::Promote { by: "op".into(), full: false }, sim.now)
                    .map(|_| sim.input(Input::Promote { by: "op".into(), full: false }));
            }
        }
        prop_assert!(sim.state.rollout.is_none(), "rollout never ended: {:?}", sim.state.rollout);
        let target = sim.state.stable.clone().unwrap();
        let live: Vec<&Instance> = sim.state.instances.iter().filter(|i| i.is_live()).collect();
        prop_assert_eq!(live.len() as u32, n);
        prop_assert!(live.iter().all(|i| i.revision == target.revision && i.is_routable()));
    }
}

/// Three hosts of two instances each, upgraded one host at a time.
fn on_hosts(max_unavailable_hosts: u32) -> Sim {
    let mut p = params(6, max_unavailable_hosts, 0);
    p.hosts = ["h0", "h1", "h2"]
        .iter()
        .map(|h| HostShare {
            name: (*h).into(),
            instances: 2,
            max_surge: 1,
            max_unavailable: 0,
        })
        .collect();
    p.max_unavailable_hosts = max_unavailable_hosts;
    let mut sim = Sim::new(p);
    sim.deploy(rel(1, "v1"));
    sim.run(100, 60_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
    sim.log.clear();
    sim
}

/// The host of each instance started, in order.
fn start_hosts(sim: &Sim) -> Vec<String> {
    sim.log
        .iter()
        .filter_map(|a| match a {
            Action::Start { id, .. } => sim.state.instance(id)?.host.clone(),
            _ => None,
        })
        .collect()
}

#[test]
fn instances_spread_over_hosts_and_a_rolling_upgrade_goes_host_by_host() {
    let mut sim = on_hosts(1);
    for h in ["h0", "h1", "h2"] {
        let on = sim
            .state
            .instances
            .iter()
            .filter(|i| i.is_live() && i.host.as_deref() == Some(h))
            .count();
        assert_eq!(on, 2, "{h}");
    }
    sim.deploy(rel(2, "v2"));
    sim.run(100, 120_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
    assert_eq!(
        start_hosts(&sim),
        ["h0", "h0", "h1", "h1", "h2", "h2"],
        "one host at a time"
    );
    assert_eq!(sim.routable_versions(), vec!["v2"; 6]);
}

#[test]
fn two_hosts_at_a_time_when_allowed() {
    let mut sim = on_hosts(2);
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 5_000, |s| start_hosts(s).len() >= 2);
    let first: Vec<String> = start_hosts(&sim);
    assert_eq!(first, ["h0", "h1"], "h0 and h1 start together");
    sim.run(100, 120_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
}

#[test]
fn an_unreachable_host_pauses_a_rollout_until_every_host_answers() {
    let mut sim = on_hosts(1);
    sim.deploy(rel(2, "v2"));
    run_until(&mut sim, 5_000, |s| !start_hosts(s).is_empty());
    sim.input(Input::HostsUnreachable {
        hosts: vec!["h1".into()],
        since_ms: sim.now,
    });
    let paused = sim.state.rollout.as_ref().and_then(|r| r.paused.clone());
    let text = paused.map(|p| p.to_string()).unwrap_or_default();
    assert!(text.contains("host h1 is unreachable since"), "{text}");
    let started = start_hosts(&sim).len();
    sim.run(100, 60_000);
    assert!(sim.finished().is_none(), "held while h1 does not answer");
    assert!(
        start_hosts(&sim).len() <= started + 1,
        "nothing new starts: {:?}",
        start_hosts(&sim)
    );
    assert!(!start_hosts(&sim).iter().any(|h| h == "h1" || h == "h2"));
    sim.input(Input::HostsUnreachable {
        hosts: Vec::new(),
        since_ms: 0,
    });
    assert!(
        sim.state
            .rollout
            .as_ref()
            .is_some_and(|r| r.paused.is_none())
    );
    sim.run(100, 120_000);
    assert_eq!(sim.finished().map(|f| f.0), Some(Outcome::Succeeded));
}
