//! The pure part of the controller: an app's spec turned into the engine's
//! parameters. No I/O, no state.

use std::time::Duration;

use baton_engine::Params;
use baton_spec::{AppSpec, StrategySpec};

/// Resolve the spec's strategy into engine parameters.
pub fn params_of(spec: &AppSpec) -> Params {
    Params {
        pause_on_deadline: spec.on_progress_deadline == baton_spec::OnProgressDeadline::Pause,
        ..strategy_params(spec)
    }
}

/// The strategy part of the engine parameters.
fn strategy_params(spec: &AppSpec) -> Params {
    use baton_engine::{Step, Strategy};
    use baton_spec::CanaryStep;
    let n = spec.instances;
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

/// The strategy `deploy --strategy NAME` uses: the spec's own when it is of
/// that kind, otherwise that kind with baton's defaults.
pub fn strategy_by_name(spec: &AppSpec, name: &str) -> Result<StrategySpec, String> {
    use baton_spec::{
        BlueGreenSpec, CanarySpec, CanaryStep, HeaderMatch, IntOrPercent, RollingSpec,
    };
    let name = name.replace('_', "-");
    if strategy_name(spec) == name {
        return Ok(spec.strategy.clone());
    }
    const DEADLINE: Duration = Duration::from_secs(600);
    match name.as_str() {
        "rolling" => Ok(StrategySpec::Rolling(RollingSpec {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
            min_ready: Duration::ZERO,
            progress_deadline: DEADLINE,
            max_restarts: 3,
        })),
        "canary" => Ok(StrategySpec::Canary(CanarySpec {
            steps: vec![
                CanaryStep::SetWeight(10),
                CanaryStep::Pause(Some(Duration::from_secs(30))),
                CanaryStep::SetWeight(50),
                CanaryStep::Pause(Some(Duration::from_secs(30))),
                CanaryStep::SetWeight(100),
            ],
            min_ready: Duration::ZERO,
            progress_deadline: DEADLINE,
            max_restarts: 3,
            header_route: None,
            sticky: false,
            shielding: false,
        })),
        "blue-green" => Ok(StrategySpec::BlueGreen(BlueGreenSpec {
            preview_listen: None,
            preview_header: HeaderMatch {
                name: "X-Baton-Preview".into(),
                equals: "1".into(),
            },
            auto_promote_after: None,
            scale_down_delay: Duration::from_secs(30),
            min_ready: Duration::ZERO,
            progress_deadline: DEADLINE,
            max_restarts: 3,
        })),
        other => Err(format!(
            "unknown strategy {other:?}: use rolling, blue-green or canary"
        )),
    }
}

pub fn strategy_name(spec: &AppSpec) -> &'static str {
    strategy_kind(&spec.strategy)
}

/// `rolling`, `canary` or `blue-green`.
pub fn strategy_kind(strategy: &StrategySpec) -> &'static str {
    match strategy {
        StrategySpec::Rolling(_) => "rolling",
        StrategySpec::Canary(_) => "canary",
        StrategySpec::BlueGreen(_) => "blue-green",
    }
}
