//! The YAML format exactly as written by users: plain serde structs with
//! `deny_unknown_fields`, before any validation or defaulting.
//!
//! The JSON Schema published in `schema/baton-spec.schema.json` is generated from
//! these types, so their doc comments are what editors show as field help.
//! Values that need a friendly error (durations, addresses, percentages) are kept
//! as text here and checked in `validate.rs`, where the error can carry a hint.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A baton app spec: one application, how to run it and how to upgrade it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "baton app spec")]
pub(crate) struct AppSpec {
    /// Application name: lowercase letters, digits and '-', at most 63 characters,
    /// starting with a letter or digit.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// Environment shown in the upgrade history, such as `production` or `staging`.
    /// Default `default`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Desired version (letters, digits, '.', '_' and '-', at most 64 characters).
    /// Optional: a version can also be given to `baton deploy`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub version: Option<String>,
    /// Address where baton's router accepts user traffic for this app, as IP:PORT,
    /// such as `127.0.0.1:8080` or `[::]:8080`.
    pub listen: String,
    /// Desired number of instances, 1 to 1000. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub instances: Option<u32>,
    /// Longest wait for the in-flight requests of a draining instance. Default `30s`.
    #[serde(default)]
    pub drain_timeout: Option<HumanDuration>,
    /// How instances are started and stopped.
    pub driver: DriverSpec,
    /// How baton decides that an instance may take traffic. All fields have defaults.
    #[serde(default)]
    pub readiness: Option<ReadinessSpec>,
    /// How a new version replaces the old one. Default: rolling with default settings.
    #[serde(default)]
    pub strategy: Option<StrategySpec>,
}

/// The driver that runs instances. Exactly one key.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DriverSpec {
    /// Run each instance as a local process started by baton.
    Process(ProcessDriverSpec),
}

/// Runs each instance as a local process.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProcessDriverSpec {
    /// The command to run: a list of arguments, or one string split like a shell
    /// does (single and double quotes group words). Placeholders `{version}`,
    /// `{port}`, `{app}`, `{instance}` and `{baton}` (the path of the baton binary)
    /// are replaced for each instance.
    pub command: CommandLine,
    /// Extra environment variables. Values may use the same placeholders as `command`.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory of the process. Default: baton's own.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping an instance. Default `10s`.
    #[serde(default)]
    pub stop_grace: Option<HumanDuration>,
}

/// The HTTP readiness probe: `GET path` must answer 2xx.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadinessSpec {
    /// Path probed with GET; starts with '/'. Default `/healthz`.
    #[serde(default)]
    pub path: Option<String>,
    /// Time between probes. Default `1s`.
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    /// Time allowed for one probe. Default `1s`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Consecutive successes that make an instance ready. Default 1.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub success_threshold: Option<u32>,
    /// Consecutive failures that make a ready instance unready. Default 3.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<u32>,
    /// Wait after an instance starts before the first probe. Default `0s`.
    #[serde(default)]
    pub initial_delay: Option<HumanDuration>,
}

/// The upgrade strategy. Exactly one key; `blue_green` and `canary` will join `rolling`.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StrategySpec {
    /// Replace instances a few at a time (`rolling: {}` or `rolling:` takes all defaults).
    Rolling(RollingSpec),
}

/// Rolling update settings, with the Kubernetes meanings and defaults.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollingSpec {
    /// Instances allowed above `instances` during the rollout: a count such as `1`
    /// or a percentage such as `25%` (rounded up). Default `25%`.
    #[serde(default)]
    pub max_surge: Option<IntOrPercentText>,
    /// Instances allowed below `instances` during the rollout: a count such as `0`
    /// or a percentage such as `25%` (rounded down). Default `25%`.
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercentText>,
    /// How long a new instance must stay ready before it counts as available. Default `0s`.
    #[serde(default)]
    pub min_ready: Option<HumanDuration>,
    /// A rollout that makes no progress for this long fails. Default `10m`.
    #[serde(default)]
    pub progress_deadline: Option<HumanDuration>,
    /// Crashes of new-version instances tolerated before the rollout fails. Default 3.
    #[serde(default)]
    pub max_restarts: Option<u32>,
}

/// An externally tagged enum read by hand, so that every mistake (a plain string,
/// no key, two keys, an unknown key) gets an error at the right position; the
/// derived form reports some of these at the end of the document instead.
trait OneKeyEnum: Sized {
    /// What the key names, for messages: "driver", "strategy".
    const WHAT: &'static str;
    const VARIANTS: &'static [&'static str];
    /// Reads the value of variant `key` from `map`.
    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error>;
}

struct OneKeyVisitor<T>(PhantomData<T>);

impl<'de, T: OneKeyEnum> Visitor<'de> for OneKeyVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a map with one key naming the {} ({})",
            T::WHAT,
            T::VARIANTS.join(", ")
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!(
                "no {} given; choose one of: {}",
                T::WHAT,
                T::VARIANTS.join(", ")
            )));
        };
        let value = T::value(&key, &mut map)?;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::custom(format!(
                "only one {} may be given, found `{key}` and `{extra}`",
                T::WHAT
            )));
        }
        Ok(value)
    }
}

impl OneKeyEnum for DriverSpec {
    const WHAT: &'static str = "driver";
    const VARIANTS: &'static [&'static str] = &["process"];

    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
        match key {
            "process" => Ok(DriverSpec::Process(map.next_value()?)),
            other => Err(A::Error::unknown_variant(other, Self::VARIANTS)),
        }
    }
}

impl<'de> Deserialize<'de> for DriverSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneKeyVisitor(PhantomData))
    }
}

impl OneKeyEnum for StrategySpec {
    const WHAT: &'static str = "strategy";
    const VARIANTS: &'static [&'static str] = &["rolling"];

    fn value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Self, A::Error> {
        match key {
            // `rolling:` with no value takes all the defaults, like `rolling: {}`.
            "rolling" => Ok(StrategySpec::Rolling(
                map.next_value::<Option<RollingSpec>>()?.unwrap_or_default(),
            )),
            other => Err(A::Error::unknown_variant(other, Self::VARIANTS)),
        }
    }
}

impl<'de> Deserialize<'de> for StrategySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OneKeyVisitor(PhantomData))
    }
}

/// A duration as written by the user, such as `500ms`, `2s` or `1m30s`.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(crate) struct HumanDuration(pub String);

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ns, us, ms, s, m, h, d), \
                            units may be combined.",
            "examples": ["500ms", "2s", "1m30s"],
        })
    }
}

/// A count (`1`) or a percentage (`"25%"`), kept as text until validation.
#[derive(Debug)]
pub(crate) struct IntOrPercentText(pub String);

impl JsonSchema for IntOrPercentText {
    fn schema_name() -> Cow<'static, str> {
        "IntOrPercent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of instances, or a percentage of `instances` such as \"25%\".",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+%$" },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for IntOrPercentText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercentText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a percentage such as \"25%\"")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_string()))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrPercentText(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A command given as a list of arguments or as one shell-like string.
#[derive(Debug)]
pub(crate) enum CommandLine {
    /// `command: ["app", "--port", "{port}"]`
    List(Vec<String>),
    /// `command: app --port {port}`
    Line(String),
}

impl JsonSchema for CommandLine {
    fn schema_name() -> Cow<'static, str> {
        "Command".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A list of arguments, or one string split like a shell does.",
            "anyOf": [
                { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                { "type": "string", "minLength": 1 },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CommandLine;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings or one command string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CommandLine::Line(v.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    args.push(arg);
                }
                Ok(CommandLine::List(args))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
