//! The routing configuration pushed by the control plane, and its validation.
//!
//! These types are the wire format of `PUT /v1/config`; they do no I/O.
//!
//! Unknown fields are accepted on purpose (no `deny_unknown_fields`): the router
//! outlives control-plane restarts and upgrades, so a newer control plane must be able
//! to push to an older router. Strict checking belongs to the spec parser upstream.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::limits::AppLimits;

/// The whole routing table of the router. Replaced as a unit on every push.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RoutingConfig {
    /// Fencing number: a push with a lower generation than the live one is refused.
    pub generation: u64,
    /// One entry per application, each with its own listener.
    pub apps: Vec<AppRoutes>,
}

/// The routes of one application.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AppRoutes {
    /// Application name, unique within a config.
    pub app: String,
    /// Address the router listens on for this app's users. Port 0 binds any free port
    /// (the bound address is reported in the push result).
    pub listen: SocketAddr,
    /// When no backend is ready, hold a request up to this long waiting for a new
    /// config, then answer 503.
    pub hold_timeout_ms: u64,
    /// Weighted split between versions.
    pub versions: Vec<VersionRoute>,
    /// Match rules, tried in order before the weighted split; the first rule whose
    /// matches all hold picks the version (see [`crate::rules`]). A rule naming a
    /// version that is absent or has no ready backend falls through to the split, so a
    /// rollback that removes a version never has to edit the rules first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// Version-sticky cohorts (see [`crate::sticky`]); `None` routes each request by
    /// weight alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyConfig>,
    /// Traffic mirroring to a version under test (see [`crate::mirror`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
    /// Shielding: idempotent requests that another version answers with a 5xx (or that
    /// fail to reach it) are retried once on the stable version named here; `None`
    /// never shields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield: Option<ShieldConfig>,
    /// Timeouts and size limits of this app's traffic.
    #[serde(default)]
    pub limits: AppLimits,
    /// How a request picks one of its version's backends.
    #[serde(default, skip_serializing_if = "Balance::is_round_robin")]
    pub balance: Balance,
}

/// Load balancing over one version's backends. JSON: `"round_robin"` or
/// `"least_requests"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight (over all workers); ties go
    /// round robin. Suits backends whose requests vary in cost, or that differ in
    /// speed: a slow backend stops receiving new requests while it is busy.
    LeastRequests,
}

impl Balance {
    fn is_round_robin(&self) -> bool {
        *self == Balance::RoundRobin
    }
}

/// Shielding of one app. JSON: `{"version": "v1"}`.
///
/// When a request was routed to a version other than `version` and is idempotent
/// (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) with a buffered body, a 5xx answer or a
/// failed attempt is retried once on a backend of `version` and the user gets that
/// answer. The failure still counts against the version that failed (in its stats
/// and metrics); the retry counts as a request of `version`. Non-idempotent requests
/// are never shielded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShieldConfig {
    /// The stable version that answers in place of a failing one.
    pub version: String,
}

/// One version of an application and its backends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VersionRoute {
    /// Version name, unique within an app.
    pub version: String,
    /// Relative weight; 0 means no user traffic.
    pub weight: u32,
    /// Instances serving this version.
    pub backends: Vec<Backend>,
}

/// One instance the router may send requests to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Instance id (informational; the router keys its counters by address).
    pub id: String,
    /// Where the instance listens for HTTP/1.1.
    pub address: SocketAddr,
}

/// One match rule: when every entry of `matches` holds, the request goes to `version`.
/// An empty `matches` always holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// Conditions, all of which must hold.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// The version the matching requests go to.
    pub version: String,
}

/// One condition of a [`RouteRule`]. JSON: `{"header": {"name": "X-Canary", "equals":
/// "always"}}`, `{"header": {"name": "X-User", "regex": "^qa-"}}`, `{"cookie": {"name":
/// "canary", "equals": "1"}}`, `{"path_prefix": "/api/"}`, `{"method": "GET"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// A request header (any of its values) matches. Names are case-insensitive.
    Header(NamedMatch),
    /// A cookie of the `Cookie` header(s) matches; the first cookie with that name counts.
    Cookie(NamedMatch),
    /// The request path (without the query) starts with this string.
    PathPrefix(String),
    /// The request method equals this one (case-sensitive, as HTTP methods are).
    Method(String),
}

/// A header or cookie name and how its value must look.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NamedMatch {
    /// Header or cookie name.
    pub name: String,
    /// The value test.
    #[serde(flatten)]
    pub value: ValueMatch,
}

/// How a header or cookie value is tested.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    /// Byte-for-byte equality.
    Equals(String),
    /// An unanchored regular expression (`regex` crate syntax; use `^...$` to anchor).
    Regex(String),
}

/// Default name of the sticky cohort cookie.
pub const DEFAULT_STICKY_COOKIE: &str = "baton_cohort";

/// Version-sticky cohorts of one app. JSON: `{"cookie": "baton_cohort", "max_age_s":
/// 604800}`, both optional.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StickyConfig {
    /// Name of the cookie that carries the client's cohort number.
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// Lifetime of the cookie, in seconds.
    #[serde(default = "default_sticky_max_age")]
    pub max_age_s: u64,
    /// The version whose share grows during a rollout (the canary). Cohorts are laid
    /// out with this version first, so raising its weight only moves clients onto it
    /// and nobody already on it is moved back. `None`: the versions' config order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_version: Option<String>,
}

impl Default for StickyConfig {
    fn default() -> Self {
        StickyConfig {
            cookie: default_sticky_cookie(),
            max_age_s: default_sticky_max_age(),
            new_version: None,
        }
    }
}

fn default_sticky_cookie() -> String {
    DEFAULT_STICKY_COOKIE.to_string()
}

fn default_sticky_max_age() -> u64 {
    7 * 24 * 3600
}

/// Mirroring of one app's traffic to a version under test. JSON: `{"version": "v2",
/// "percent": 10}`; every other field is optional.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MirrorConfig {
    /// The version that receives the copies. When it is absent or has no ready
    /// backend, nothing is mirrored.
    pub version: String,
    /// Share of eligible requests copied, 0..=100.
    pub percent: f64,
    /// Methods eligible for mirroring (only idempotent ones are safe to send twice).
    #[serde(default = "default_mirror_methods")]
    pub methods: Vec<String>,
    /// Path prefixes eligible for mirroring; empty: every path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Path prefixes never mirrored.
    #[serde(default)]
    pub exclude_paths: Vec<String>,
    /// Requests with a larger body are not mirrored; responses are captured up to this
    /// many bytes for comparison.
    #[serde(default = "default_mirror_max_body")]
    pub max_body_bytes: usize,
    /// Whether the status codes are compared.
    #[serde(default = "default_true")]
    pub compare_status: bool,
    /// When not empty, only these response headers are compared (case-insensitive);
    /// when empty, every header but `ignore_headers` and credentials.
    #[serde(default)]
    pub compare_headers: Vec<String>,
    /// Response headers left out when `compare_headers` is empty.
    #[serde(default = "default_ignored_headers")]
    pub ignore_headers: Vec<String>,
    /// How the bodies are compared.
    #[serde(default)]
    pub body: BodyCompare,
    /// JSON paths left out of the body comparison: `$.a.b`, `$.a[*].b`, `$.a[0]`,
    /// `$.*.id`.
    #[serde(default)]
    pub ignore_json_paths: Vec<String>,
    /// Regular expressions whose matches are masked before bodies are compared as
    /// text (a body that is not JSON, or `body: text`).
    #[serde(default)]
    pub mask_patterns: Vec<String>,
    /// Headers that carry credentials besides `Authorization`, `Proxy-Authorization`,
    /// `Cookie` and `Set-Cookie`: never captured, stored or shown.
    #[serde(default)]
    pub redact_headers: Vec<String>,
    /// How many differing pairs are kept for the control plane to show.
    #[serde(default = "default_mirror_samples")]
    pub max_samples: usize,
    /// What the comparisons belong to; when it changes, the kept counts and samples
    /// start afresh.
    #[serde(default)]
    pub session: String,
}

/// How a mirrored body is compared with the user's.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyCompare {
    /// As JSON values (ignored paths removed) when both parse, else as text.
    #[default]
    Json,
    /// As text, after masking.
    Text,
    /// Byte for byte.
    Bytes,
    /// Not at all.
    Ignore,
}

// By hand because of the f64: bitwise equality of `percent` keeps `Eq` lawful (NaN is
// rejected by validation anyway) so the config types can stay `Eq`.
impl PartialEq for MirrorConfig {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.percent.to_bits() == other.percent.to_bits()
            && self.methods == other.methods
            && self.paths == other.paths
            && self.exclude_paths == other.exclude_paths
            && self.max_body_bytes == other.max_body_bytes
            && self.compare_status == other.compare_status
            && self.compare_headers == other.compare_headers
            && self.ignore_headers == other.ignore_headers
            && self.body == other.body
            && self.ignore_json_paths == other.ignore_json_paths
            && self.mask_patterns == other.mask_patterns
            && self.redact_headers == other.redact_headers
            && self.max_samples == other.max_samples
            && self.session == other.session
    }
}

impl Eq for MirrorConfig {}

impl MirrorConfig {
    /// A config mirroring `percent` of GET/HEAD requests to `version`, with the
    /// defaults for everything else.
    pub fn new(version: impl Into<String>, percent: f64) -> Self {
        MirrorConfig {
            version: version.into(),
            percent,
            methods: default_mirror_methods(),
            paths: Vec::new(),
            exclude_paths: Vec::new(),
            max_body_bytes: default_mirror_max_body(),
            compare_status: true,
            compare_headers: Vec::new(),
            ignore_headers: default_ignored_headers(),
            body: BodyCompare::Json,
            ignore_json_paths: Vec::new(),
            mask_patterns: Vec::new(),
            redact_headers: Vec::new(),
            max_samples: default_mirror_samples(),
            session: String::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_mirror_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

fn default_mirror_max_body() -> usize {
    64 * 1024
}

/// Response headers never compared by default: they differ between any two answers
/// (dates, servers, hop-by-hop framing, tracing ids) or repeat the body's length.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "age",
    "expires",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "x-request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
];

/// [`DEFAULT_IGNORED_HEADERS`] as owned names.
pub fn default_ignored_headers() -> Vec<String> {
    DEFAULT_IGNORED_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect()
}

fn default_mirror_samples() -> usize {
    20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, port: u16) -> AppRoutes {
        AppRoutes {
            app: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            hold_timeout_ms: 100,
            versions: vec![],
            rules: vec![],
            sticky: None,
            mirror: None,
            shield: None,
            limits: AppLimits::default(),
            balance: Default::default(),
        }
    }

    #[test]
    fn rejects_duplicates() {
        let cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 1), app("a", 2)],
        };
        assert!(cfg.validate().unwrap_err().contains("duplicate app"));
        let cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 1), app("b", 1)],
        };
        assert!(cfg.validate().unwrap_err().contains("listen"));
        let cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 0), app("b", 0)],
        };
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn old_json_still_parses() {
        let old = r#"{"generation": 3, "apps": [{"app": "web", "listen": "127.0.0.1:8080",
            "hold_timeout_ms": 100, "versions": [{"version": "v1", "weight": 1,
            "backends": [{"id": "a", "address": "127.0.0.1:9000"}]}]}]}"#;
        let cfg: RoutingConfig = serde_json::from_str(old).unwrap();
        let a = &cfg.apps[0];
        assert!(a.rules.is_empty() && a.sticky.is_none() && a.mirror.is_none());
        // And a config without policies serialises as before.
        assert!(!serde_json::to_string(&cfg).unwrap().contains("rules"));
    }

    #[test]
    fn policies_json_shape() {
        let text = r#"{"generation": 1, "apps": [{"app": "web", "listen": "127.0.0.1:0",
            "hold_timeout_ms": 100, "versions": [],
            "rules": [
                {"matches": [{"header": {"name": "X-Canary", "equals": "always"}}], "version": "v2"},
                {"matches": [{"header": {"name": "X-User", "regex": "^qa-"}},
                             {"cookie": {"name": "canary", "equals": "1"}},
                             {"path_prefix": "/api/"}, {"method": "GET"}], "version": "v2"}
            ],
            "sticky": {},
            "mirror": {"version": "v2", "percent": 5, "ignore_json_paths": ["$.timestamp"]},
            "shield": {"version": "v1"},
            "limits": {"max_body_bytes": 1000}
        }]}"#;
        let cfg: RoutingConfig = serde_json::from_str(text).unwrap();
        cfg.validate().unwrap();
        let a = &cfg.apps[0];
        assert_eq!(
            a.rules[0].matches[0],
            Match::Header(NamedMatch {
                name: "X-Canary".into(),
                value: ValueMatch::Equals("always".into())
            })
        );
        assert_eq!(a.rules[1].matches[2], Match::PathPrefix("/api/".into()));
        assert_eq!(a.sticky, Some(StickyConfig::default()));
        assert_eq!(a.shield.as_ref().map(|s| s.version.as_str()), Some("v1"));
        assert_eq!(a.limits.max_body_bytes, 1000);
        assert_eq!(
            a.limits.client_header_timeout_ms,
            AppLimits::default().client_header_timeout_ms
        );
        assert_eq!(a.sticky.as_ref().unwrap().cookie, "baton_cohort");
        let m = a.mirror.as_ref().unwrap();
        assert_eq!(m.methods, vec!["GET", "HEAD"]);
        assert_eq!(m.max_body_bytes, 65536);
        assert!(m.compare_headers.is_empty());
        assert!(m.ignore_headers.iter().any(|h| h == "date"));
        assert_eq!(m.max_samples, 20);
        let back: RoutingConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn invalid_policies_are_named() {
        let mut cfg = RoutingConfig {
            generation: 1,
            apps: vec![app("a", 1)],
        };
        cfg.apps[0].rules = vec![
            RouteRule {
                matches: vec![],
                version: "v2".into(),
            },
            RouteRule {
                matches: vec![Match::Header(NamedMatch {
                    name: "x".into(),
                    value: ValueMatch::Regex("[".into()),
                })],
                version: "v2".into(),
            },
        ];
        let e = cfg.validate().unwrap_err();
        assert!(
            e.starts_with("apps[0].rules[1].matches[0].header: invalid regex"),
            "{e}"
        );
        cfg.apps[0].rules.clear();
        cfg.apps[0].mirror = Some(MirrorConfig::new("v2", 101.0));
        assert!(
            cfg.validate()
                .unwrap_err()
                .starts_with("apps[0].mirror.percent")
        );
        let mut m = MirrorConfig::new("v2", f64::NAN);
        // Bitwise equality keeps Eq reflexive even for NaN (which validation rejects).
        assert_eq!(m, m.clone());
        m.percent = 10.0;
        m.ignore_json_paths = vec!["timestamp".into()];
        cfg.apps[0].mirror = Some(m);
        assert!(
            cfg.validate()
                .unwrap_err()
                .starts_with("apps[0].mirror.ignore_json_paths[0]")
        );
        cfg.apps[0].mirror = None;
        cfg.apps[0].sticky = Some(StickyConfig {
            cookie: "a b".into(),
            max_age_s: 1,
            new_version: None,
        });
        assert!(
            cfg.validate()
                .unwrap_err()
                .starts_with("apps[0].sticky.cookie")
        );
    }

    #[test]
    fn json_round_trip() {
        let cfg = RoutingConfig {
            generation: 7,
            apps: vec![app("a", 8080)],
        };
        let s = serde_json::to_string(&cfg).unwrap();
        let back: RoutingConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(cfg, back);
    }
}
