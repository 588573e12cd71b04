//! The validated, typed app spec that the rest of baton works with.
//!
//! Every value here has passed validation (see `validate.rs`), and every default
//! has been filled in. The serde form of these types is the JSON stored in the
//! database: it must round-trip exactly through `serde_json`, so durations are
//! written as humantime strings (`"1s 500ms"`), which are lossless down to the
//! nanosecond, and [`IntOrPercent`] is written as `1` or `"25%"` like the YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One application: what to run, how to tell it is ready, and how to upgrade it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Matches `^[a-z0-9][a-z0-9-]{0,62}$`.
    pub name: String,
    /// Free text shown in the upgrade history, such as `production`. Default `default`.
    pub environment: String,
    /// Desired version, if the spec names one. Matches `[A-Za-z0-9._-]{1,64}`.
    pub version: Option<String>,
    /// Where baton's router accepts user traffic for this app.
    pub listen: SocketAddr,
    /// Desired number of instances, 1..=1000.
    pub instances: u32,
    /// How instances are started and stopped.
    pub driver: DriverSpec,
    /// How baton decides that an instance may take traffic.
    pub readiness: ReadinessSpec,
    /// How one version replaces another.
    pub strategy: StrategySpec,
    /// Longest wait for the in-flight requests of a draining instance. Default 30s.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
}

/// How instances are run. More drivers (ssh, container, kubernetes) come later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverSpec {
    /// Local child processes of baton.
    Process(ProcessDriverSpec),
}

/// Runs each instance as a local process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessDriverSpec {
    /// The argv template, never empty. Each element may hold placeholders
    /// (see [`crate::render_template`]).
    pub command: Vec<String>,
    /// Extra environment variables; the values are templates too.
    pub env: BTreeMap<String, String>,
    /// Working directory of the process, if not baton's own.
    pub workdir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL when stopping an instance. Default 10s.
    #[serde(with = "duration_text")]
    pub stop_grace: Duration,
}

/// The HTTP readiness probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSpec {
    /// Path probed with `GET`; starts with `/`. Default `/healthz`.
    pub path: String,
    /// Time between probes. Default 1s, never zero.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Time allowed for one probe. Default 1s, never zero.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive successes that make an instance ready. Default 1, at least 1.
    pub success_threshold: u32,
    /// Consecutive failures that make a ready instance unready. Default 3, at least 1.
    pub failure_threshold: u32,
    /// Wait after start before the first probe. Default 0.
    #[serde(with = "duration_text")]
    pub initial_delay: Duration,
}

/// How a new version replaces the old one. Blue-green and canary come later,
/// as further variants (`blue_green: {...}`, `canary: {...}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategySpec {
    /// Replace instances a few at a time.
    Rolling(RollingSpec),
}

/// Rolling update parameters, with the Kubernetes meanings and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingSpec {
    /// Instances allowed above `instances` during the rollout. Default 25%, rounded up.
    pub max_surge: IntOrPercent,
    /// Instances allowed below `instances` during the rollout. Default 25%, rounded down.
    pub max_unavailable: IntOrPercent,
    /// How long a new instance must stay ready before it counts as available. Default 0.
    #[serde(with = "duration_text")]
    pub min_ready: Duration,
    /// A rollout that makes no progress for this long fails. Default 10m.
    #[serde(with = "duration_text")]
    pub progress_deadline: Duration,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    pub max_restarts: u32,
}

/// An absolute count of instances or a percentage of the desired count.
///
/// Serialized like the YAML: `1` or `"25%"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntOrPercent {
    /// An absolute number of instances.
    Count(u32),
    /// A percentage, 0..=100, of the desired instance count.
    Percent(u32),
}

impl IntOrPercent {
    /// Resolves against `total` instances, rounding a percentage up
    /// (the Kubernetes rule for `max_surge`).
    pub fn resolve_up(&self, total: u32) -> u32 {
        match *self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(p) * u64::from(total);
                u32::try_from(scaled.div_ceil(100)).unwrap_or(u32::MAX)
            }
        }
    }

    /// Resolves against `total` instances, rounding a percentage down
    /// (the Kubernetes rule for `max_unavailable`).
    pub fn resolve_down(&self, total: u32) -> u32 {
        match *self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(p) * u64::from(total);
                u32::try_from(scaled / 100).unwrap_or(u32::MAX)
            }
        }
    }

    /// Parses `"3"` or `"25%"`. The percentage is not range-checked here.
    pub(crate) fn parse(text: &str) -> Option<IntOrPercent> {
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(number) => number.trim().parse().ok().map(IntOrPercent::Percent),
            None => text.parse().ok().map(IntOrPercent::Count),
        }
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Count(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Count(n) => serializer.serialize_u32(*n),
            IntOrPercent::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercent;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a percentage such as \"25%\"")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("count out of range"))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("count out of range"))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                IntOrPercent::parse(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Serde adapter writing a `Duration` as a humantime string (`"1m 30s"`).
///
/// humantime prints every unit down to nanoseconds and parses the same units
/// back, so the round trip is exact.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
