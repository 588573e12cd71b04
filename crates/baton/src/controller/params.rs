//! The pure part of the controller: an app's spec turned into the engine's
//! parameters. No I/O, no state.

use std::time::Duration;

use baton_engine::{AppState, EngineError, Params, Release};
use baton_spec::{AppSpec, StrategyKind, StrategySpec};

/// Resolve the spec's strategy into engine parameters.
pub fn params_of(spec: &AppSpec) -> Params {
    let hosts = host_shares(spec);
    Params {
        pause_on_deadline: spec.on_progress_deadline == baton_spec::OnProgressDeadline::Pause,
        approval_by_another: spec.approval_by_another_person,
        max_unavailable_hosts: spec.hosts.as_ref().map_or(0, |h| h.max_unavailable_hosts()),
        hosts,
        ..strategy_params(spec)
    }
}

/// The instances of an app on all its hosts together (`instances` itself on
/// one machine).
pub fn total_instances(spec: &AppSpec) -> u32 {
    match &spec.hosts {
        Some(h) => h.shares(spec.instances).iter().map(|(_, n)| n).sum(),
        None => spec.instances,
    }
}

/// Each host's share of the instances, with the surge and unavailability a
/// rolling upgrade may use inside it (the rolling settings resolved against
/// the host's own count; a stepped strategy brings the new release up beside
/// the old one, so it surges by the whole share and loses none).
fn host_shares(spec: &AppSpec) -> Vec<baton_engine::HostShare> {
    let Some(hosts) = &spec.hosts else {
        return Vec::new();
    };
    hosts
        .shares(spec.instances)
        .into_iter()
        .map(|(name, n)| {
            let (max_surge, max_unavailable) = match &spec.strategy {
                StrategySpec::Rolling(r) => {
                    let surge = r.max_surge.resolve_up(n);
                    let unavailable = r.max_unavailable.resolve_down(n);
                    // A host must be able to replace an instance (as one
                    // instance always surges by one).
                    if surge == 0 && unavailable == 0 || n == 1 {
                        (surge.max(1), unavailable)
                    } else {
                        (surge, unavailable)
                    }
                }
                _ => (n, 0),
            };
            baton_engine::HostShare {
                name,
                instances: n,
                max_surge,
                max_unavailable,
            }
        })
        .collect()
}

/// The strategy part of the engine parameters.
fn strategy_params(spec: &AppSpec) -> Params {
    use baton_engine::{Step, Strategy};
    use baton_spec::CanaryStep;
    let n = total_instances(spec);
    let ms = |d: Duration| d.as_millis() as u64;
    match &spec.strategy {
        StrategySpec::Rolling(r) => Params {
            instances: n,
            max_surge: r.max_surge.resolve_up(n),
            max_unavailable: r.max_unavailable.resolve_down(n),
            min_ready_ms: ms(r.min_ready),
            progress_deadline_ms: ms(r.progress_deadline),
            max_restarts: r.max_restarts,
            pause_on_deadline: false,
            strategy: Strategy::Rolling,
            hosts: Vec::new(),
            max_unavailable_hosts: 0,
            approval_by_another: false,
        },
        StrategySpec::Canary(c) => with_checks(
            spec,
            0,
            Params {
                instances: n,
                // A first release (nothing to compare with) comes up all at once.
                max_surge: n,
                max_unavailable: 0,
                min_ready_ms: ms(c.min_ready),
                progress_deadline_ms: ms(c.progress_deadline),
                max_restarts: c.max_restarts,
                pause_on_deadline: false,
                hosts: Vec::new(),
                max_unavailable_hosts: 0,
                approval_by_another: false,
                strategy: Strategy::Stepped {
                    steps: c
                        .steps
                        .iter()
                        .map(|s| match s {
                            CanaryStep::SetWeight(p) => Step::SetWeight { percent: *p },
                            CanaryStep::Pause(d) => Step::Pause {
                                duration_ms: d.map(ms),
                            },
                            CanaryStep::Approval => Step::Approval,
                            CanaryStep::SetCanaryScale(k) => Step::SetScale { instances: *k },
                            CanaryStep::Analysis(d) => Step::Analysis {
                                duration_ms: ms(*d),
                            },
                            CanaryStep::Mirror {
                                percent, duration, ..
                            } => Step::Mirror {
                                percent: *percent,
                                duration_ms: ms(*duration),
                            },
                        })
                        .collect(),
                },
            },
        ),
        StrategySpec::BlueGreen(b) => with_checks(
            spec,
            1,
            Params {
                instances: n,
                max_surge: n,
                max_unavailable: 0,
                min_ready_ms: ms(b.min_ready),
                progress_deadline_ms: ms(b.progress_deadline),
                max_restarts: b.max_restarts,
                pause_on_deadline: false,
                hosts: Vec::new(),
                max_unavailable_hosts: 0,
                approval_by_another: false,
                strategy: Strategy::Stepped {
                    steps: vec![
                        Step::SetScale { instances: n },
                        match b.auto_promote_after {
                            Some(d) => Step::Pause {
                                duration_ms: Some(ms(d)),
                            },
                            None => Step::Approval,
                        },
                        Step::SetWeight { percent: 100 },
                        Step::ScaleDownDelay {
                            duration_ms: ms(b.scale_down_delay),
                        },
                    ],
                },
            },
        ),
    }
}

/// Smoke tests run as a `Checks` step at `at` (before any user traffic).
fn with_checks(spec: &AppSpec, at: usize, mut params: Params) -> Params {
    if let baton_engine::Strategy::Stepped { steps } = &mut params.strategy
        && !spec.hooks.smoke.is_empty()
    {
        steps.insert(at.min(steps.len()), baton_engine::Step::Checks);
    }
    params
}

/// The spec a rollout of `kind` runs under: `spec` with its strategy
/// replaced by that kind's (its own when it is of that kind, baton's defaults
/// otherwise; see [`AppSpec::strategy_of_kind`]). `None`: the spec's own.
pub fn with_strategy(spec: &AppSpec, kind: Option<StrategyKind>) -> AppSpec {
    let mut spec = spec.clone();
    if let Some(kind) = kind {
        spec.strategy = spec.strategy_of_kind(kind);
    }
    spec
}

/// What `baton plan` shows: the parameters and the plan of a rollout to
/// `to` from `state`, under `spec` with a one-off strategy of `kind`.
pub fn plan(
    spec: &AppSpec,
    state: &AppState,
    kind: Option<StrategyKind>,
    to: Release,
) -> Result<(StrategyKind, Params, baton_engine::Plan), EngineError> {
    let spec = with_strategy(spec, kind);
    let mut state = state.clone();
    state.params = params_of(&spec);
    let plan = baton_engine::plan(&state, to)?;
    Ok((spec.strategy.kind(), state.params, plan))
}
