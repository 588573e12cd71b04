//! Desired-versus-current reconciliation, run after every input.
//!
//! Idempotent: running it twice in a row with the same `now` produces no new
//! actions the second time. This is what makes a restarted controller safe: it
//! reloads the state, re-observes the world and reconciles again.

use crate::{
    Action, AppState, Finished, Instance, InstancePhase, Millis, Outcome, RolloutPhase, event,
    fail_rollout,
};

pub(crate) fn reconcile(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    check_deadline(s, now, actions);

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

    let is_new = |i: &Instance| i.is_live() && i.revision == target.revision;
    let is_old = |i: &Instance| i.is_live() && i.revision != target.revision;
    let new_count = s.instances.iter().filter(|i| is_new(i)).count() as u32;
    let old_count = s.instances.iter().filter(|i| is_old(i)).count() as u32;
    let new_available = s
        .instances
        .iter()
        .filter(|i| is_new(i) && i.is_available(now, min_ready))
        .count() as u32;
    let old_ready = s
        .instances
        .iter()
        .filter(|i| is_old(i) && i.is_routable())
        .count() as u32;

    if let Some(r) = &mut s.rollout
        && progressing
        && new_available > r.best_available
    {
        r.last_progress_ms = now;
        r.best_available = new_available;
    }

    // Scale up the target release, within the surge allowance while old
    // instances still run.
    let max_total = if old_count > 0 {
        n + p.effective_surge()
    } else {
        n
    };
    let room = max_total.saturating_sub(new_count + old_count);
    let to_start = n.saturating_sub(new_count).min(room);
    for _ in 0..to_start {
        let id = format!("{}-r{}-{}", s.app, target.revision, s.next_instance_seq);
        s.next_instance_seq += 1;
        s.instances.push(Instance {
            id: id.clone(),
            revision: target.revision,
            version: target.version.clone(),
            phase: InstancePhase::Pending,
            address: None,
            handle: None,
            created_ms: now,
        });
        actions.push(Action::Start {
            id,
            revision: target.revision,
            version: target.version.clone(),
        });
    }

    // Scale down old instances without letting routable capacity drop below
    // `instances - max_unavailable`. Instances that take no traffic go first:
    // removing them costs no capacity.
    let min_available = p.min_available();
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

fn check_deadline(s: &mut AppState, now: Millis, actions: &mut Vec<Action>) {
    let Some(r) = &s.rollout else { return };
    if r.phase != RolloutPhase::Progressing {
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
        fail_rollout(s, reason, false, now, actions);
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
        "instance_draining",
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
            (Outcome::Succeeded, String::new(), r.to.version.clone())
        }
        RolloutPhase::RollingBack { reason, aborted } => match &r.from {
            Some(from) => (
                if *aborted {
                    Outcome::Aborted
                } else {
                    Outcome::RolledBack
                },
                format!("{reason}; rolled back to {}", from.version),
                from.version.clone(),
            ),
            None => (Outcome::Failed, reason.clone(), r.to.version.clone()),
        },
    };
    event(
        actions,
        "rollout_finished",
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
