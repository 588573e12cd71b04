//! Desired-versus-current reconciliation, run after every input.
//!
//! Idempotent: running it twice in a row with the same `now` produces no new
//! actions the second time. This is what makes a restarted controller safe: it
//! reloads the state, re-observes the world and reconciles again.

use serde::{Deserialize, Serialize};

use crate::{
    Action, AppState, EventKind, Finished, Instance, InstancePhase, Millis, Outcome, PauseReason,
    Release, Rollout, RolloutPhase, Step, Strategy, WarmStandby, event, fail_rollout,
};

pub(crate) fn reconcile(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    end_warm_standby(s, now, actions);
    // A rollout scheduled for the next upgrade window waits, touching nothing.
    if let Some(r) = &mut s.rollout
        && let Some(t) = r.not_before_ms
    {
        if now < t || r.phase != RolloutPhase::Progressing {
            if r.phase != RolloutPhase::Progressing {
                // Aborted while waiting: nothing was started.
                r.not_before_ms = None;
            } else {
                return;
            }
        } else {
            r.start_waiting(now);
            event(
                actions,
                EventKind::WindowOpened,
                "the upgrade window is open: starting".into(),
            );
        }
    }
    check_deadline(s, now, actions);

    if let Some(r) = &s.rollout
        && r.phase == RolloutPhase::Progressing
        && r.weight.is_some()
        && let Strategy::Stepped { steps } = &s.params.strategy
    {
        let steps = steps.clone();
        reconcile_stepped(s, &steps, now, actions);
        return;
    }

    let target = match &s.rollout {
        Some(r) => r.target().cloned(),
        None => s.stable.clone(),
    };
    let Some(target) = target else {
        // Nothing to converge to (nothing deployed yet, or the first deploy
        // failed): everything goes away.
        drain_all(s, now, actions);
        if s.rollout.is_some() && !s.instances.iter().any(|i| i.is_live()) {
            finish(s, now, actions);
        }
        return;
    };

    let p = s.params.clone();
    let n = p.instances;
    let progressing = matches!(
        s.rollout.as_ref().map(|r| &r.phase),
        Some(RolloutPhase::Progressing)
    );
    // A version coming back after a failure (or the steady state) is known to
    // work: it needs no min_ready soak.
    let min_ready = if progressing { p.min_ready_ms } else { 0 };

    // A release kept warm after a blue-green switch is neither: it stays as it is.
    let warm = s.warm.as_ref().map(|w| w.release.revision);
    let is_new = |i: &Instance| i.is_live() && i.revision == target.revision;
    let is_old =
        |i: &Instance| i.is_live() && i.revision != target.revision && warm != Some(i.revision);
    let new_available = s
        .instances
        .iter()
        .filter(|i| is_new(i) && i.is_available(now, min_ready))
        .count() as u32;
    if let Some(r) = &mut s.rollout
        && progressing
        && new_available > r.best_available
    {
        r.last_progress_ms = now;
        r.best_available = new_available;
    }

    let conv = Convergence {
        target: &target,
        warm,
        min_ready,
        now,
    };
    if p.hosts.is_empty() {
        let group = Group {
            host: None,
            instances: n,
            surge: p.effective_surge(),
            min_available: p.min_available(),
        };
        converge(s, &conv, &group, actions);
    } else {
        converge_hosts(s, &conv, progressing, actions);
    }

    // Done when the target release runs at full strength and nothing else is live.
    if s.rollout.is_some() {
        let new_count = s.instances.iter().filter(|i| is_new(i)).count() as u32;
        let old_count = s.instances.iter().filter(|i| is_old(i)).count() as u32;
        let available = s
            .instances
            .iter()
            .filter(|i| is_new(i) && i.is_available(now, min_ready))
            .count() as u32;
        if old_count == 0 && new_count == n && available == n {
            finish(s, now, actions);
        }
    }
}

/// What a rolling convergence moves towards, shared by its host groups.
struct Convergence<'a> {
    target: &'a Release,
    /// The release kept warm after a blue-green switch: left alone.
    warm: Option<u32>,
    min_ready: u64,
    now: Millis,
}

/// A set of instances converged together: all of an app's (one machine), or
/// one host's share.
struct Group {
    /// `None`: every instance (an app on one machine).
    host: Option<String>,
    instances: u32,
    surge: u32,
    min_available: u32,
}

impl Group {
    fn holds(&self, i: &Instance) -> bool {
        self.host.is_none() || i.host == self.host
    }
}

/// Converge one group to `c.target`: start new instances within the surge
/// allowance, drain old ones without letting the group's routable capacity drop
/// below its minimum.
fn converge(s: &mut AppState, c: &Convergence<'_>, g: &Group, actions: &mut Vec<Action>) {
    let (target, now) = (c.target, c.now);
    let n = g.instances;
    let is_new = |i: &Instance| g.holds(i) && i.is_live() && i.revision == target.revision;
    let is_old = |i: &Instance| {
        g.holds(i) && i.is_live() && i.revision != target.revision && c.warm != Some(i.revision)
    };
    let new_count = s.instances.iter().filter(|i| is_new(i)).count() as u32;
    let old_count = s.instances.iter().filter(|i| is_old(i)).count() as u32;
    let new_available = s
        .instances
        .iter()
        .filter(|i| is_new(i) && i.is_available(now, c.min_ready))
        .count() as u32;
    let old_ready = s
        .instances
        .iter()
        .filter(|i| is_old(i) && i.is_routable())
        .count() as u32;

    // Scale up the target release, within the surge allowance while old
    // instances still run.
    let max_total = if old_count > 0 { n + g.surge } else { n };
    let room = max_total.saturating_sub(new_count + old_count);
    let to_start = n.saturating_sub(new_count).min(room);
    for _ in 0..to_start {
        start_instance(s, target, g.host.clone(), now, actions);
    }

    // Scale down old instances without letting routable capacity drop below
    // `instances - max_unavailable`. Instances that take no traffic go first:
    // removing them costs no capacity.
    let min_available = g.min_available;
    let mut available = old_ready + new_available;
    let mut drain_ids = Vec::new();
    for inst in s.instances.iter().filter(|i| is_old(i) && !i.is_routable()) {
        drain_ids.push(inst.id.clone());
    }
    let mut old_routable: Vec<&Instance> = s
        .instances
        .iter()
        .filter(|i| is_old(i) && i.is_routable())
        .collect();
    old_routable.sort_by_key(|i| i.created_ms);
    for inst in old_routable {
        if available > min_available && available > 1 {
            available -= 1;
            drain_ids.push(inst.id.clone());
        }
    }

    // Too many of the target release (the instance count was lowered): shed
    // the extra ones, not-yet-ready first, keeping capacity.
    let new_after = new_count + to_start;
    if new_after > n {
        let mut extra: Vec<&Instance> = s.instances.iter().filter(|i| is_new(i)).collect();
        extra.sort_by_key(|i| (i.is_routable(), std::cmp::Reverse(i.created_ms)));
        let mut excess = new_after - n;
        for inst in extra {
            if excess == 0 {
                break;
            }
            if inst.is_routable() {
                if available <= min_available.max(1) {
                    break;
                }
                available -= 1;
            }
            drain_ids.push(inst.id.clone());
            excess -= 1;
        }
    }
    for id in drain_ids {
        drain(s, &id, now, actions);
    }
}

/// Converge an app on several hosts, host by host: at most
/// `max_unavailable_hosts` hosts are worked on at once while a rollout moves
/// forward (a rollback works on every host at once), and a paused rollout
/// touches nothing. Instances on a host no longer in the spec go once every
/// host has its share available.
fn converge_hosts(
    s: &mut AppState,
    c: &Convergence<'_>,
    progressing: bool,
    actions: &mut Vec<Action>,
) {
    let hosts = s.params.hosts.clone();
    let rolling_out = progressing && s.rollout.is_some();
    if rolling_out && s.rollout.as_ref().is_some_and(|r| r.paused.is_some()) {
        return;
    }
    let limit = if rolling_out {
        s.params.max_unavailable_hosts.max(1) as usize
    } else {
        usize::MAX
    };
    let target = c.target.revision;
    let on = |i: &Instance, h: &str| i.host.as_deref() == Some(h);
    // Per host: (untouched by this rollout, done).
    let standing: Vec<(bool, bool)> = hosts
        .iter()
        .map(|h| {
            let mine = || s.instances.iter().filter(|i| on(i, &h.name));
            let new_live = mine()
                .filter(|i| i.is_live() && i.revision == target)
                .count() as u32;
            let new_available = mine()
                .filter(|i| {
                    i.is_live() && i.revision == target && i.is_available(c.now, c.min_ready)
                })
                .count() as u32;
            let old_live = mine()
                .filter(|i| i.is_live() && i.revision != target && c.warm != Some(i.revision))
                .count();
            let leaving = mine().any(|i| !i.is_live() && i.revision != target);
            let done = old_live == 0 && new_live == h.instances && new_available == h.instances;
            (new_live == 0 && !leaving && old_live > 0, done)
        })
        .collect();
    let mut busy = standing.iter().filter(|(u, d)| !u && !d).count();
    for (h, (untouched, done)) in hosts.iter().zip(&standing) {
        if *untouched && !done {
            if busy >= limit {
                continue;
            }
            busy += 1;
        }
        let group = Group {
            host: Some(h.name.clone()),
            instances: h.instances,
            surge: h.max_surge,
            min_available: h.instances.saturating_sub(h.max_unavailable),
        };
        converge(s, c, &group, actions);
    }
    if standing.iter().all(|(_, done)| *done) {
        let stray: Vec<String> = s
            .instances
            .iter()
            .filter(|i| i.is_live() && !hosts.iter().any(|h| on(i, &h.name)))
            .map(|i| i.id.clone())
            .collect();
        for id in stray {
            drain(s, &id, c.now, actions);
        }
    }
}

/// Add a pending instance of `release` (on `host`) and ask the driver to start it.
fn start_instance(
    s: &mut AppState,
    release: &Release,
    host: Option<String>,
    now: Millis,
    actions: &mut Vec<Action>,
) {
    let id = format!("{}-r{}-{}", s.app, release.revision, s.next_instance_seq);
    s.next_instance_seq += 1;
    s.instances.push(Instance {
        id: id.clone(),
        revision: release.revision,
        version: release.version.clone(),
        phase: InstancePhase::Pending,
        address: None,
        handle: None,
        created_ms: now,
        host: host.clone(),
    });
    // Every start is an event, so that the plan shows each instance count it
    // reaches (its peak included).
    let on = host.map(|h| format!(" on {h}")).unwrap_or_default();
    event(
        actions,
        EventKind::InstanceStarting,
        format!("{id} ({}) starting{on}", release.version),
    );
    actions.push(Action::Start {
        id,
        revision: release.revision,
        version: release.version.clone(),
    });
}

fn check_deadline(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    let Some(r) = &s.rollout else { return };
    if r.phase != RolloutPhase::Progressing {
        return;
    }
    // Waiting on purpose (paused, or at a gate whose instances are up) is not
    // a lack of progress.
    let at_gate =
        r.step_started_ms.is_some() && r.current_step(&s.params).is_some_and(Step::is_gate);
    if r.paused.is_some() || at_gate {
        return;
    }
    let idle = now.saturating_sub(r.last_progress_ms);
    if idle > s.params.progress_deadline_ms as i64 {
        let target_rev = r.to.revision;
        let ready = s
            .instances
            .iter()
            .filter(|i| i.revision == target_rev && i.is_routable())
            .count();
        let reason = format!(
            "progress deadline exceeded: no new instance of {} became available for {} \
             (progress_deadline {}); {} of {} ready",
            r.to.version,
            fmt_ms(idle),
            fmt_ms(s.params.progress_deadline_ms as i64),
            ready,
            s.params.instances
        );
        if s.params.pause_on_deadline {
            if let Some(r) = &mut s.rollout {
                r.paused = Some(PauseReason::ProgressDeadline {
                    detail: reason.clone(),
                });
            }
            event(
                actions,
                EventKind::Paused,
                format!("{reason}; paused for a person (`baton resume` or `baton abort`)"),
            );
        } else {
            fail_rollout(s, reason, false, now, actions);
        }
    }
}

/// Every new request to the new release (once; the event says so).
fn switch_all_traffic(r: &mut Rollout, to: &str, from: &str, actions: &mut Vec<Action>) {
    if r.weight != Some(100) {
        r.weight = Some(100);
        event(
            actions,
            EventKind::WeightSet,
            format!("{to} 100%, {from} 0%"),
        );
    }
}

fn fmt_ms(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

fn drain(s: &mut AppState, id: &str, now: Millis, actions: &mut Vec<Action>) {
    let Some(inst) = s.instances.iter_mut().find(|i| i.id == id) else {
        return;
    };
    if !inst.is_live() {
        return;
    }
    inst.phase = InstancePhase::Draining { since_ms: now };
    let version = inst.version.clone();
    event(
        actions,
        EventKind::InstanceDraining,
        format!("{id} ({version}) removed from routing, draining"),
    );
    actions.push(Action::Drain { id: id.to_string() });
}

fn drain_all(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    let ids: Vec<String> = s
        .instances
        .iter()
        .filter(|i| i.is_live())
        .map(|i| i.id.clone())
        .collect();
    for id in ids {
        drain(s, &id, now, actions);
    }
}

fn finish(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    let Some(r) = s.rollout.take() else { return };
    let (outcome, notes, version) = match &r.phase {
        RolloutPhase::Progressing => {
            s.stable = Some(r.to.clone());
            let notes = match (&s.warm, &r.switched_back_to) {
                (Some(w), _) => format!(
                    "{} kept ready for {} for an instant rollback",
                    w.release.version,
                    fmt_ms(w.until_ms.saturating_sub(now))
                ),
                (None, Some(v)) => format!(
                    "switched back to {v}, kept ready since the switch to {}",
                    r.from.as_ref().map_or("?", |f| f.version.as_str())
                ),
                (None, None) => String::new(),
            };
            (Outcome::Succeeded, notes, r.to.version.clone())
        }
        RolloutPhase::RollingBack { reason, aborted } => match &r.from {
            Some(from) => (
                if *aborted {
                    Outcome::Aborted
                } else {
                    Outcome::RolledBack
                },
                format!(
                    "{reason}; rolled back to {} (from {})",
                    from.version, r.to.version
                ),
                from.version.clone(),
            ),
            None => (Outcome::Failed, reason.clone(), r.to.version.clone()),
        },
    };
    event(
        actions,
        EventKind::RolloutFinished,
        format!(
            "{} → {}: {}{}",
            r.from.as_ref().map_or("nothing", |f| f.version.as_str()),
            r.to.version,
            outcome.as_str(),
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({notes})")
            }
        ),
    );
    actions.push(Action::Finish {
        history_id: r.history_id,
        outcome,
        notes: notes.clone(),
    });
    s.last_finished = Some(Finished {
        history_id: r.history_id,
        outcome,
        notes,
        version,
        finished_ms: now,
    });
}

/// Instances of the new release needed before `percent` of traffic goes to it.
pub(crate) fn scale_for(percent: u32, n: u32) -> u32 {
    if percent == 0 {
        0
    } else {
        (n * percent.min(100)).div_ceil(100).max(1)
    }
}

/// Instances of the new release the current step needs available.
///
/// A weight step is only taken once the new release has the instances to
/// carry it (capacity invariant): the weight it is at or about to be set to
/// needs `scale_for(weight)` instances, whatever a `SetScale` step said
/// earlier. `SetScale` can ask for more than the weight needs, never fewer.
fn desired_new_scale(r: &Rollout, steps: &[Step], n: u32) -> u32 {
    let Some(step) = steps.get(r.step) else {
        return n;
    };
    if matches!(step, Step::ScaleDownDelay { .. }) {
        // The switch is complete only with the whole new release available.
        return n;
    }
    let weight = r.weight.unwrap_or(0);
    let weight = match step {
        Step::SetWeight { percent } => (*percent).max(weight),
        _ => weight,
    };
    let for_weight = scale_for(weight, n);
    let wanted = match r.scale {
        Some(scale) => scale.min(n).max(for_weight),
        None => for_weight,
    };
    match step {
        // Smoke tests and mirrored traffic need at least one instance of the
        // new release, even at weight 0.
        Step::Checks | Step::Mirror { .. } => wanted.max(1),
        _ => wanted,
    }
}

/// One line saying what a step does, as `plan`, the event log and `status` show it.
pub fn describe_step(step: &Step) -> String {
    describe(step)
}

fn describe(step: &Step) -> String {
    match step {
        Step::SetWeight { percent } => format!("set_weight {percent}%"),
        Step::SetScale { instances } => format!(
            "run {instances} instance{} of the new release",
            if *instances == 1 { "" } else { "s" }
        ),
        Step::Pause {
            duration_ms: Some(d),
        } => format!("pause {}", fmt_ms(*d as i64)),
        Step::Pause { duration_ms: None } => "pause until promoted".into(),
        Step::Approval => "wait for approval".into(),
        Step::Checks => "run the smoke tests against the new release".into(),
        Step::Analysis { duration_ms } => format!("analysis for {}", fmt_ms(*duration_ms as i64)),
        Step::Mirror {
            percent,
            duration_ms,
        } => {
            format!(
                "mirror {percent}% of requests for {}",
                fmt_ms(*duration_ms as i64)
            )
        }
        Step::ScaleDownDelay { duration_ms } => {
            format!(
                "switch done: keep the old release ready for {}",
                fmt_ms(*duration_ms as i64)
            )
        }
    }
}

/// Canary and blue-green: the stable release keeps all its instances while
/// the new one is scaled and weighted step by step.
fn reconcile_stepped(s: &mut AppState, steps: &[Step], now: Millis, actions: &mut Vec<Action>) {
    let n = s.params.instances;
    let min_ready = s.params.min_ready_ms;
    let Some(r) = s.rollout.clone() else { return };
    let Some(from) = r.from.clone() else { return };
    let to = r.to.clone();

    // Walk the steps as far as the world allows right now.
    for _ in 0..=steps.len() + 1 {
        let Some(r) = s.rollout.as_ref() else { return };
        if r.paused.is_some() {
            break;
        }
        let desired = desired_new_scale(r, steps, n);
        let available = s
            .instances
            .iter()
            .filter(|i| i.is_live() && i.revision == to.revision && i.is_available(now, min_ready))
            .count() as u32;
        if available < desired {
            break;
        }
        // Ready instances of the stable release: a weight step that moves
        // traffic back to it waits until it can carry its share.
        let old_ready = s
            .instances
            .iter()
            .filter(|i| i.is_routable() && i.revision == from.revision)
            .count() as u32;
        let step_index = r.step;
        let r = s.rollout.as_mut().expect("checked above");
        if available > r.best_available {
            r.best_available = available;
            r.last_progress_ms = now;
        }
        if r.step_started_ms.is_none() {
            r.step_started_ms = Some(now);
            r.last_progress_ms = now;
            match steps.get(step_index) {
                Some(step) => event(
                    actions,
                    EventKind::StepStarted,
                    format!(
                        "step {} of {}: {}",
                        step_index + 1,
                        steps.len(),
                        describe(step)
                    ),
                ),
                None => event(
                    actions,
                    EventKind::Promoting,
                    format!("all steps done: promoting {} to 100%", to.version),
                ),
            }
        }
        if let Some(Step::ScaleDownDelay { duration_ms }) = steps.get(step_index) {
            // Blue-green: the switch is done, so the rollout is. The old
            // release stays ready, out of routing, for an instant rollback.
            switch_all_traffic(r, &to.version, &from.version, actions);
            s.warm = Some(WarmStandby {
                release: from.clone(),
                until_ms: now.saturating_add(*duration_ms as i64),
            });
            event(
                actions,
                EventKind::WarmStandby,
                format!(
                    "{} stays ready, out of routing, for {}: `baton rollback {}` switches back to it at once",
                    from.version,
                    fmt_ms(*duration_ms as i64),
                    s.app
                ),
            );
            finish(s, now, actions);
            return;
        }
        let started = r.step_started_ms.unwrap_or(now);
        let advance = match steps.get(step_index) {
            None => {
                // Full promotion: the new release at full strength takes all
                // traffic in one switch, then the old release is drained.
                switch_all_traffic(r, &to.version, &from.version, actions);
                drain_release(s, &from, now, actions);
                if !s
                    .instances
                    .iter()
                    .any(|i| i.is_live() && i.revision != to.revision)
                {
                    finish(s, now, actions);
                }
                return;
            }
            Some(Step::SetWeight { percent }) => {
                let percent = (*percent).min(100);
                if old_ready < scale_for(100 - percent, n) {
                    // Scale first, then shift: the stable release is being
                    // brought back to strength (it is always kept whole).
                    false
                } else {
                    r.weight = Some(percent);
                    event(
                        actions,
                        EventKind::WeightSet,
                        format!(
                            "{} {percent}%, {} {}%",
                            to.version,
                            from.version,
                            100 - percent
                        ),
                    );
                    true
                }
            }
            Some(Step::SetScale { instances }) => {
                r.scale = Some((*instances).min(n));
                true
            }
            Some(
                Step::Pause {
                    duration_ms: Some(d),
                }
                | Step::Analysis { duration_ms: d }
                | Step::Mirror { duration_ms: d, .. },
            ) => now.saturating_sub(started) >= *d as i64,
            Some(
                Step::Pause { duration_ms: None }
                | Step::Approval
                | Step::Checks
                | Step::ScaleDownDelay { .. },
            ) => false,
        };
        if !advance {
            break;
        }
        r.step += 1;
        r.step_started_ms = None;
        r.last_progress_ms = now;
    }

    // Scale: the new release to what the step needs, the stable one kept whole.
    let Some(r) = s.rollout.clone() else { return };
    if matches!(r.paused, Some(PauseReason::HostsUnreachable { .. })) {
        // Nothing is started or stopped on hosts that cannot be asked.
        return;
    }
    let desired = desired_new_scale(&r, steps, n);
    scale_release(s, &to, desired, now, actions);
    scale_release(s, &from, n, now, actions);
}

/// Start or drain instances of `release` until `count` are live. On several
/// hosts the count is spread over them in proportion to their shares, rounded
/// up: every host with a share runs at least one instance of a release that
/// has any, so that every host's router can send it its weight.
fn scale_release(
    s: &mut AppState,
    release: &Release,
    count: u32,
    now: Millis,
    actions: &mut Vec<Action>,
) {
    if s.params.hosts.is_empty() {
        scale_group(s, release, None, count, now, actions);
        return;
    }
    let n = u64::from(s.params.instances.max(1));
    for h in s.params.hosts.clone() {
        let share = (u64::from(count) * u64::from(h.instances)).div_ceil(n) as u32;
        scale_group(
            s,
            release,
            Some(h.name),
            share.min(h.instances),
            now,
            actions,
        );
    }
}

fn scale_group(
    s: &mut AppState,
    release: &Release,
    host: Option<String>,
    count: u32,
    now: Millis,
    actions: &mut Vec<Action>,
) {
    let live: Vec<&Instance> = s
        .instances
        .iter()
        .filter(|i| {
            i.is_live() && i.revision == release.revision && (host.is_none() || i.host == host)
        })
        .collect();
    let have = live.len() as u32;
    if have > count {
        let mut extra: Vec<&Instance> = live;
        extra.sort_by_key(|i| (i.is_routable(), std::cmp::Reverse(i.created_ms)));
        let ids: Vec<String> = extra
            .iter()
            .take((have - count) as usize)
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            drain(s, &id, now, actions);
        }
        return;
    }
    for _ in have..count {
        start_instance(s, release, host.clone(), now, actions);
    }
}

fn drain_release(s: &mut AppState, release: &Release, now: Millis, actions: &mut Vec<Action>) {
    let ids: Vec<String> = s
        .instances
        .iter()
        .filter(|i| i.is_live() && i.revision == release.revision)
        .map(|i| i.id.clone())
        .collect();
    for id in ids {
        drain(s, &id, now, actions);
    }
}

/// The end of a blue-green warm standby: its delay is over, or a new rollout
/// started (a rollback to the warm release itself took it over before this).
fn end_warm_standby(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    let Some(w) = &s.warm else { return };
    let why = if s.rollout.is_some() {
        "a new rollout started"
    } else if now >= w.until_ms {
        "its scale_down_delay is over"
    } else {
        return;
    };
    let Some(w) = s.warm.take() else { return };
    event(
        actions,
        EventKind::WarmStandbyEnded,
        format!(
            "{} is no longer kept ready ({why}): draining it",
            w.release.version
        ),
    );
    let keep = [
        s.stable.as_ref().map(|r| r.revision),
        s.rollout.as_ref().map(|r| r.to.revision),
    ];
    let ids: Vec<String> = s
        .instances
        .iter()
        .filter(|i| i.is_live() && i.revision == w.release.revision)
        .filter(|i| !keep.contains(&Some(i.revision)))
        .map(|i| i.id.clone())
        .collect();
    for id in ids {
        drain(s, &id, now, actions);
    }
}

/// Where a canary or blue-green rollout is, for `status`: its step and what
/// the step waits for. `None` for rolling rollouts and first releases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepProgress {
    /// 1-based; `count + 1` during the final promotion to 100%.
    pub number: usize,
    pub count: usize,
    /// `None` during the final promotion.
    pub step: Option<Step>,
    pub description: String,
    pub waiting: StepWait,
}

/// What the current step of a rollout waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "for")]
pub enum StepWait {
    /// The next upgrade window.
    Window { opens_ms: Millis },
    /// Held by an operator, an inconclusive analysis or a missed deadline.
    Paused { why: String },
    /// The new release's instances this step needs are not all available yet.
    Instances { available: u32, needed: u32 },
    /// A timed step (pause, analysis, mirror): this long is left.
    Time { remaining_ms: u64 },
    /// An approval gate: `baton approve`.
    Approval,
    /// A pause without a duration: `baton promote`.
    Promotion,
    /// The smoke tests are running.
    Checks,
    /// The final promotion: the old release's instances still draining.
    Drain { remaining: u32 },
}

/// Where the rollout in flight is, if it moves by steps. Pure: reads the
/// state at `now`.
pub fn progress(s: &AppState, now: Millis) -> Option<StepProgress> {
    let r = s.rollout.as_ref()?;
    if r.phase != RolloutPhase::Progressing || r.weight.is_none() {
        return None;
    }
    let Strategy::Stepped { steps } = &s.params.strategy else {
        return None;
    };
    let step = steps.get(r.step).cloned();
    let description = match &step {
        Some(st) => describe(st),
        None => format!("promote {} to 100%", r.to.version),
    };
    let n = s.params.instances;
    let needed = desired_new_scale(r, steps, n);
    let available = s
        .instances
        .iter()
        .filter(|i| {
            i.is_live() && i.revision == r.to.revision && i.is_available(now, s.params.min_ready_ms)
        })
        .count() as u32;
    let waiting = if let Some(opens_ms) = r.not_before_ms {
        StepWait::Window { opens_ms }
    } else if let Some(why) = &r.paused {
        StepWait::Paused {
            why: why.to_string(),
        }
    } else if step.is_none() {
        StepWait::Drain {
            remaining: s
                .instances
                .iter()
                .filter(|i| i.revision != r.to.revision)
                .count() as u32,
        }
    } else if r.step_started_ms.is_none() || available < needed {
        StepWait::Instances { available, needed }
    } else {
        let started = r.step_started_ms.unwrap_or(now);
        let left = |d: u64| d.saturating_sub(now.saturating_sub(started).max(0) as u64);
        match &step {
            Some(Step::Approval) => StepWait::Approval,
            Some(Step::Pause { duration_ms: None }) => StepWait::Promotion,
            Some(Step::Checks) => StepWait::Checks,
            Some(
                Step::Pause {
                    duration_ms: Some(d),
                }
                | Step::Analysis { duration_ms: d }
                | Step::Mirror { duration_ms: d, .. },
            ) => StepWait::Time {
                remaining_ms: left(*d),
            },
            _ => StepWait::Instances { available, needed },
        }
    };
    Some(StepProgress {
        number: r.step + 1,
        count: steps.len(),
        step,
        description,
        waiting,
    })
}
