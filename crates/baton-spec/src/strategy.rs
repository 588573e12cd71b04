//! Strategies by kind: the names `deploy --strategy` and the upgrade history
//! use, and baton's defaults for a strategy the spec does not spell out (a
//! one-off `deploy --strategy canary` of an app whose spec says `rolling`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{
    AppSpec, BlueGreenSpec, CanarySpec, CanaryStep, HeaderMatch, RollingSpec, StrategySpec,
};
use crate::validate::defaults;

/// The kind of a strategy, named `rolling`, `canary` or `blue-green`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    Rolling,
    Canary,
    BlueGreen,
}

impl StrategyKind {
    /// `rolling`, `canary` or `blue-green`.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Rolling => "rolling",
            StrategyKind::Canary => "canary",
            StrategyKind::BlueGreen => "blue-green",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {0:?}: use rolling, blue-green or canary")]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;

    /// `blue-green` and the spec's own spelling `blue_green` both work.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.replace('_', "-").as_str() {
            "rolling" => Ok(StrategyKind::Rolling),
            "canary" => Ok(StrategyKind::Canary),
            "blue-green" => Ok(StrategyKind::BlueGreen),
            other => Err(UnknownStrategy(other.to_string())),
        }
    }
}

/// How long each pause of the default canary lasts.
const DEFAULT_CANARY_PAUSE: Duration = Duration::from_secs(30);

impl StrategySpec {
    pub fn kind(&self) -> StrategyKind {
        match self {
            StrategySpec::Rolling(_) => StrategyKind::Rolling,
            StrategySpec::Canary(_) => StrategyKind::Canary,
            StrategySpec::BlueGreen(_) => StrategyKind::BlueGreen,
        }
    }

    /// A strategy of `kind` with baton's defaults (those of `rolling: {}` and
    /// `blue_green: {}`; a canary of 10%, 50% and 100% with a 30 s pause
    /// between).
    pub fn defaults(kind: StrategyKind) -> StrategySpec {
        match kind {
            StrategyKind::Rolling => StrategySpec::Rolling(RollingSpec {
                max_surge: defaults::MAX_SURGE,
                max_unavailable: defaults::MAX_UNAVAILABLE,
                min_ready: defaults::MIN_READY,
                progress_deadline: defaults::PROGRESS_DEADLINE,
                max_restarts: defaults::MAX_RESTARTS,
            }),
            StrategyKind::Canary => StrategySpec::Canary(CanarySpec {
                steps: vec![
                    CanaryStep::SetWeight(10),
                    CanaryStep::Pause(Some(DEFAULT_CANARY_PAUSE)),
                    CanaryStep::SetWeight(50),
                    CanaryStep::Pause(Some(DEFAULT_CANARY_PAUSE)),
                    CanaryStep::SetWeight(100),
                ],
                min_ready: defaults::MIN_READY,
                progress_deadline: defaults::PROGRESS_DEADLINE,
                max_restarts: defaults::MAX_RESTARTS,
                header_route: None,
                sticky: false,
                shielding: false,
            }),
            StrategyKind::BlueGreen => StrategySpec::BlueGreen(BlueGreenSpec {
                preview_listen: None,
                preview_header: HeaderMatch {
                    name: defaults::PREVIEW_HEADER_NAME.into(),
                    equals: defaults::PREVIEW_HEADER_VALUE.into(),
                },
                auto_promote_after: None,
                scale_down_delay: defaults::SCALE_DOWN_DELAY,
                min_ready: defaults::MIN_READY,
                progress_deadline: defaults::PROGRESS_DEADLINE,
                max_restarts: defaults::MAX_RESTARTS,
            }),
        }
    }
}

impl AppSpec {
    /// The strategy a rollout of `kind` runs under: the spec's own when it is
    /// of that kind, otherwise that kind with baton's defaults.
    pub fn strategy_of_kind(&self, kind: StrategyKind) -> StrategySpec {
        if self.strategy.kind() == kind {
            self.strategy.clone()
        } else {
            StrategySpec::defaults(kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_names_in_either_spelling() {
        for kind in [
            StrategyKind::Rolling,
            StrategyKind::Canary,
            StrategyKind::BlueGreen,
        ] {
            assert_eq!(kind.as_str().parse::<StrategyKind>(), Ok(kind));
            assert_eq!(StrategySpec::defaults(kind).kind(), kind);
        }
        assert_eq!("blue_green".parse(), Ok(StrategyKind::BlueGreen));
        assert_eq!(
            "linear".parse::<StrategyKind>().unwrap_err().to_string(),
            "unknown strategy \"linear\": use rolling, blue-green or canary"
        );
    }
}
