//! Traffic mirroring: which requests to copy, and how a mirrored response is compared
//! with the primary's. Pure: no I/O, no clock (times are passed in).
//!
//! Intended wiring: per eligible request (method in [`MirrorConfig::methods`], body no
//! larger than `max_body_bytes`), the request path takes `n = counter.fetch_add(1)` on
//! a per-app atomic and copies the request when [`should_mirror`]`(n, percent)`. The
//! copy runs in a background task that never delays or fails the user's request; once
//! both responses are captured (up to `max_body_bytes`, see [`Captured`]), it calls
//! [`compare`], counts the outcome in the version's metrics, and records it in the
//! app's [`MismatchSamples`] (behind a `Mutex`: only background tasks and the admin
//! reader touch it).

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use baton_spec::JsonPath;

use crate::config::{BodyCompare, MirrorConfig};

/// How many differing JSON paths a mismatch names at most.
const MAX_JSON_DIFFERENCES: usize = 5;
/// Longest rendering of one JSON value in a reason.
const MAX_VALUE_CHARS: usize = 80;
/// Longest body preview kept in a sample.
const PREVIEW_BYTES: usize = 1024;
/// Distinct paths counted in [`MismatchSamples`]; the rest are folded into `other`.
pub const MAX_PATHS: usize = 100;

/// Whether request number `counter` (a per-app counter incremented once per eligible
/// request) is mirrored at `percent` (0..=100). Deterministic and exact over time, like
/// the weighted split: of any `k` consecutive counters, the number mirrored is
/// `k * percent / 100` rounded down or up (Bresenham). Resolution 0.0001%. Does not
/// allocate.
pub fn should_mirror(counter: u64, percent: f64) -> bool {
    const SCALE: u128 = 1_000_000;
    let p = if percent.is_nan() {
        0.0
    } else {
        percent.clamp(0.0, 100.0)
    };
    // Parts per million, 0..=1_000_000: exact for every percentage with 4 decimals.
    let ppm = (p * 10_000.0).round() as u128;
    let n = u128::from(counter);
    (n + 1) * ppm / SCALE > n * ppm / SCALE
}

pub use crate::config::DEFAULT_IGNORED_HEADERS;

/// Headers that carry credentials: never captured, compared, stored, recorded or
/// shown, whatever the config says (it can only add to them).
pub use baton_spec::CREDENTIAL_HEADERS;

/// Whether `name` carries credentials (built in, or named in `extra`).
pub fn is_credential(name: &str, extra: &[String]) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
        || extra.iter().any(|c| c.eq_ignore_ascii_case(name))
}

/// Text put in place of what a mask pattern matched.
const MASKED: &str = "<masked>";

/// Which response headers are compared.
#[derive(Debug, Clone)]
enum HeaderSelect {
    /// Only these (lower-case names).
    Only(Vec<String>),
    /// Every header but these (lower-case names).
    AllExcept(HashSet<String>),
}

/// A [`MirrorConfig`] compiled once per config push: which requests are copied, what
/// of a response is captured and how two captures are compared. Also used by the
/// control plane to compare the answers of a replay the same way.
#[derive(Debug, Clone)]
pub struct CompareRules {
    methods: Vec<String>,
    paths: Vec<String>,
    exclude_paths: Vec<String>,
    max_body_bytes: usize,
    status: bool,
    headers: HeaderSelect,
    /// Credential headers (lower case): never captured.
    credentials: Vec<String>,
    body: BodyCompare,
    json_paths: Vec<JsonPath>,
    masks: Vec<regex::Regex>,
}

impl CompareRules {
    /// Compiles `cfg`; the error names the field and what is wrong with it.
    pub fn compile(cfg: &MirrorConfig) -> Result<CompareRules, String> {
        for (k, method) in cfg.methods.iter().enumerate() {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(format!("methods[{k}]: {method:?} is not an HTTP method"));
            }
        }
        for (field, list) in [("paths", &cfg.paths), ("exclude_paths", &cfg.exclude_paths)] {
            for (k, p) in list.iter().enumerate() {
                if !p.starts_with('/') {
                    return Err(format!("{field}[{k}]: {p:?} must start with '/'"));
                }
            }
        }
        let credentials: Vec<String> = CREDENTIAL_HEADERS
            .iter()
            .map(|s| s.to_string())
            .chain(cfg.redact_headers.iter().map(|h| h.to_ascii_lowercase()))
            .collect();
        let header_list = |field: &str, list: &[String]| -> Result<Vec<String>, String> {
            list.iter()
                .enumerate()
                .map(|(k, h)| {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .map(|n| n.as_str().to_string())
                        .map_err(|_| format!("{field}[{k}]: {h:?} is not a header name"))
                })
                .collect()
        };
        header_list("redact_headers", &cfg.redact_headers)?;
        let only = header_list("compare_headers", &cfg.compare_headers)?;
        if let Some(c) = only.iter().find(|h| credentials.contains(h)) {
            return Err(format!(
                "compare_headers: {c:?} carries credentials, which are never captured; \
                 leave it out"
            ));
        }
        let headers = if only.is_empty() {
            HeaderSelect::AllExcept(
                header_list("ignore_headers", &cfg.ignore_headers)?
                    .into_iter()
                    .chain(credentials.iter().cloned())
                    .collect(),
            )
        } else {
            HeaderSelect::Only(only)
        };
        let json_paths = cfg
            .ignore_json_paths
            .iter()
            .enumerate()
            .map(|(k, p)| JsonPath::parse(p).map_err(|e| format!("ignore_json_paths[{k}]: {e}")))
            .collect::<Result<_, _>>()?;
        let masks = cfg
            .mask_patterns
            .iter()
            .enumerate()
            .map(|(k, p)| {
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("mask_patterns[{k}]: {p:?} is not a valid pattern: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(CompareRules {
            methods: cfg.methods.clone(),
            paths: cfg.paths.clone(),
            exclude_paths: cfg.exclude_paths.clone(),
            max_body_bytes: cfg.max_body_bytes,
            status: cfg.compare_status,
            headers,
            credentials,
            body: cfg.body,
            json_paths,
            masks,
        })
    }

    /// Whether a request with this method and path (without the query) is eligible:
    /// its method is listed, its path is under one of `paths` (when any are given)
    /// and under none of `exclude_paths`.
    pub fn wants(&self, method: &http::Method, path: &str) -> bool {
        self.methods.iter().any(|m| m == method.as_str())
            && (self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str())))
            && !self
                .exclude_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    /// Largest request body copied, and largest response body captured.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Whether header `name` carries credentials under these rules.
    pub fn is_credential(&self, name: &str) -> bool {
        self.credentials
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
    }

    /// The compared headers of a response, sorted by name, several values of one
    /// header joined with ", ". Credential headers are never among them.
    pub fn capture_headers(&self, headers: &http::HeaderMap) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |name: &http::HeaderName| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("(not text)"))
                .collect();
            if !values.is_empty() {
                out.push((name.as_str().to_string(), values.join(", ")));
            }
        };
        match &self.headers {
            HeaderSelect::Only(names) => {
                for n in names {
                    if let Ok(n) = http::HeaderName::from_bytes(n.as_bytes()) {
                        add(&n);
                    }
                }
            }
            HeaderSelect::AllExcept(skip) => {
                for name in headers.keys() {
                    if !skip.contains(name.as_str()) && !name.as_str().starts_with("x-baton-") {
                        add(name);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Compares the mirror's response with the primary's: status, headers, then the
    /// body as the rules say.
    ///
    /// Body rule (`json`): when neither body is truncated and both parse as JSON,
    /// they are compared as JSON values after removing the ignored paths, naming up
    /// to five differing paths; otherwise as text (`text`: after masking). When
    /// either body is truncated, only the common prefix can be known, so the bodies
    /// differ only if their first `min(len)` bytes do (or if one is complete and
    /// shorter than the captured part of the other).
    pub fn compare(&self, primary: &Captured, mirror: &Captured) -> Comparison {
        let mut out = Vec::new();
        if self.status && primary.status != mirror.status {
            out.push(Difference::Status {
                primary: primary.status,
                mirror: mirror.status,
            });
        }
        let names: std::collections::BTreeSet<&str> = primary
            .headers
            .iter()
            .chain(&mirror.headers)
            .map(|(k, _)| k.as_str())
            .collect();
        for name in names {
            let (a, b) = (primary.header(name), mirror.header(name));
            if a != b {
                out.push(Difference::Header {
                    name: name.to_ascii_lowercase(),
                    primary: a.map(str::to_owned),
                    mirror: b.map(str::to_owned),
                });
            }
        }
        if self.body != BodyCompare::Ignore {
            self.compare_bodies(primary, mirror, &mut out);
        }
        if out.is_empty() {
            Comparison::Match
        } else {
            Comparison::Mismatch { differences: out }
        }
    }

    fn compare_bodies(&self, a: &Captured, b: &Captured, out: &mut Vec<Difference>) {
        if a.truncated || b.truncated {
            let n = a.body.len().min(b.body.len());
            if a.body[..n] != b.body[..n] {
                out.push(Difference::Body {
                    detail: format!(
                        "differs at byte {} (truncated)",
                        first_difference(&a.body, &b.body)
                    ),
                });
            } else if (!a.truncated && a.body.len() < b.body.len())
                || (!b.truncated && b.body.len() < a.body.len())
            {
                out.push(Difference::Body {
                    detail: format!(
                        "length {}{} vs {}{}",
                        a.body.len(),
                        if a.truncated { "+" } else { "" },
                        b.body.len(),
                        if b.truncated { "+" } else { "" }
                    ),
                });
            }
            return;
        }
        if a.body == b.body {
            return;
        }
        if self.body == BodyCompare::Json
            && let (Ok(mut va), Ok(mut vb)) = (
                serde_json::from_slice::<Value>(&a.body),
                serde_json::from_slice::<Value>(&b.body),
            )
        {
            for path in &self.json_paths {
                path.remove(&mut va);
                path.remove(&mut vb);
            }
            let before = out.len();
            let mut at = String::from("$");
            diff_json(&va, &vb, &mut at, out);
            if out.len() - before > MAX_JSON_DIFFERENCES {
                let more = out.len() - before - MAX_JSON_DIFFERENCES;
                out.truncate(before + MAX_JSON_DIFFERENCES);
                out.push(Difference::More { count: more });
            }
            return;
        }
        if self.body == BodyCompare::Bytes {
            out.push(Difference::Body {
                detail: format!(
                    "differs at byte {} ({} vs {} bytes)",
                    first_difference(&a.body, &b.body),
                    a.body.len(),
                    b.body.len()
                ),
            });
            return;
        }
        let (ta, tb) = (self.masked(&a.body), self.masked(&b.body));
        if ta == tb {
            return;
        }
        let line = ta
            .lines()
            .zip(tb.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(ta.lines().count().min(tb.lines().count()));
        let nth = |t: &str| t.lines().nth(line).map(|l| clip(l.to_string()));
        out.push(Difference::Text {
            line: line + 1,
            primary: nth(&ta),
            mirror: nth(&tb),
        });
    }

    /// The body as text, every match of a mask pattern replaced.
    fn masked(&self, body: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(body).into_owned();
        for m in &self.masks {
            if let std::borrow::Cow::Owned(t) = m.replace_all(&text, MASKED) {
                text = t;
            }
        }
        text
    }
}

/// One response as captured for comparison.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Captured {
    /// HTTP status code.
    pub status: u16,
    /// The compared headers only (see [`CompareRules::capture_headers`]); a header
    /// the response did not have is simply absent.
    pub headers: Vec<(String, String)>,
    /// The body, or its first `max_body_bytes` when `truncated`.
    pub body: Bytes,
    /// True when the body was longer than what was captured.
    pub truncated: bool,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One way two answers differ, as shown to a person: what (a status, a header, a
/// JSON path, a line of text) and the value on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// Different status codes.
    Status { primary: u16, mirror: u16 },
    /// A compared header differs; `None`: the side did not send it.
    Header {
        name: String,
        primary: Option<String>,
        mirror: Option<String>,
    },
    /// A JSON value differs at `path`; `None`: the side has no such member.
    Json {
        path: String,
        primary: Option<Value>,
        mirror: Option<Value>,
    },
    /// An array has a different length at `path`.
    Length {
        path: String,
        primary: usize,
        mirror: usize,
    },
    /// The bodies compared as text differ first at this line (1-based).
    Text {
        line: usize,
        primary: Option<String>,
        mirror: Option<String>,
    },
    /// The bodies compared as bytes differ.
    Body { detail: String },
    /// More JSON paths differ than are named.
    More { count: usize },
    /// The copy got no answer to compare.
    MirrorFailed { error: String },
}

impl Difference {
    /// What differs, without the values: `status`, `header content-type`,
    /// `$.items[*].price` (indices folded, so one field of every element of an array
    /// counts as one), `body`. Counted per path in [`MirrorReport`].
    pub fn field(&self) -> String {
        match self {
            Difference::Status { .. } => "status".into(),
            Difference::Header { name, .. } => format!("header {name}"),
            Difference::Json { path, .. } => fold_indices(path),
            Difference::Length { path, .. } => format!("{} (length)", fold_indices(path)),
            Difference::Text { .. } | Difference::Body { .. } | Difference::More { .. } => {
                "body".into()
            }
            Difference::MirrorFailed { .. } => "no answer from the mirror".into(),
        }
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let val = |v: &Option<Value>| v.as_ref().map_or("(missing)".into(), show);
        match self {
            Difference::Status { primary, mirror } => write!(f, "status {primary} vs {mirror}"),
            Difference::Header {
                name,
                primary,
                mirror,
            } => write!(f, "header {name}: {} vs {}", opt(primary), opt(mirror)),
            Difference::Json {
                path,
                primary,
                mirror,
            } => write!(f, "body {path}: {} vs {}", val(primary), val(mirror)),
            Difference::Length {
                path,
                primary,
                mirror,
            } => write!(f, "body {path}: length {primary} vs {mirror}"),
            Difference::Text {
                line,
                primary,
                mirror,
            } => write!(
                f,
                "body line {line}: {} vs {}",
                primary
                    .as_deref()
                    .map_or("(none)".into(), |s| format!("{s:?}")),
                mirror
                    .as_deref()
                    .map_or("(none)".into(), |s| format!("{s:?}"))
            ),
            Difference::Body { detail } => write!(f, "body {detail}"),
            Difference::More { count } => write!(f, "body: {count} more differing JSON paths"),
            Difference::MirrorFailed { error } => write!(f, "mirror failed: {error}"),
        }
    }
}

/// `$.items[3].id` as `$.items[*].id`.
fn fold_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find(']') {
            Some(j) if !after[..j].is_empty() && after[..j].bytes().all(|c| c.is_ascii_digit()) => {
                out.push_str("[*]");
                rest = &after[j + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Result of [`CompareRules::compare`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Comparison {
    /// The responses agree on everything compared.
    Match,
    /// They differ, most important first.
    Mismatch {
        /// How.
        differences: Vec<Difference>,
    },
}

impl Comparison {
    /// True for [`Comparison::Match`].
    pub fn is_match(&self) -> bool {
        matches!(self, Comparison::Match)
    }

    /// One line per difference, such as `status 200 vs 500`,
    /// `header content-type: application/json vs text/plain` or
    /// `body $.price: 10 vs 12`.
    pub fn reasons(&self) -> Vec<String> {
        match self {
            Comparison::Match => Vec::new(),
            Comparison::Mismatch { differences } => {
                differences.iter().map(ToString::to_string).collect()
            }
        }
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Appends one difference per differing leaf, stopping a little past the limit so
/// that a huge document does not produce a huge list.
fn diff_json(a: &Value, b: &Value, at: &mut String, out: &mut Vec<Difference>) {
    if out.len() > MAX_JSON_DIFFERENCES * 4 {
        return;
    }
    let len = at.len();
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            for (k, va) in ma {
                push_key(at, k);
                match mb.get(k) {
                    Some(vb) => diff_json(va, vb, at, out),
                    None => out.push(Difference::Json {
                        path: at.clone(),
                        primary: Some(kept(va)),
                        mirror: None,
                    }),
                }
                at.truncate(len);
            }
            for (k, vb) in mb {
                if !ma.contains_key(k) {
                    push_key(at, k);
                    out.push(Difference::Json {
                        path: at.clone(),
                        primary: None,
                        mirror: Some(kept(vb)),
                    });
                    at.truncate(len);
                }
            }
        }
        (Value::Array(xa), Value::Array(xb)) => {
            if xa.len() != xb.len() {
                out.push(Difference::Length {
                    path: at.clone(),
                    primary: xa.len(),
                    mirror: xb.len(),
                });
            }
            for (i, (va, vb)) in xa.iter().zip(xb).enumerate() {
                at.push_str(&format!("[{i}]"));
                diff_json(va, vb, at, out);
                at.truncate(len);
            }
        }
        _ if a != b => out.push(Difference::Json {
            path: at.clone(),
            primary: Some(kept(a)),
            mirror: Some(kept(b)),
        }),
        _ => {}
    }
}

fn push_key(at: &mut String, k: &str) {
    if !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        at.push('.');
        at.push_str(k);
    } else {
        at.push_str(&format!("[{}]", Value::String(k.to_string())));
    }
}

/// A value as kept in a difference: itself when short, else its text cut short (a
/// sample must stay small whatever the answers hold).
fn kept(v: &Value) -> Value {
    let s = v.to_string();
    if s.len() <= MAX_VALUE_CHARS {
        v.clone()
    } else {
        Value::String(clip(s))
    }
}

fn clip(s: String) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        s
    } else {
        let cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}...")
    }
}

fn show(v: &Value) -> String {
    clip(v.to_string())
}

/// A captured response as shown to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedSummary {
    /// HTTP status code.
    pub status: u16,
    /// The compared headers.
    pub headers: Vec<(String, String)>,
    /// Captured body length in bytes.
    pub body_bytes: usize,
    /// True when the body was longer than captured.
    pub truncated: bool,
    /// The first 1 KiB of the body, lossily decoded as UTF-8.
    pub body_preview: String,
}

impl From<&Captured> for CapturedSummary {
    fn from(c: &Captured) -> Self {
        let n = c.body.len().min(PREVIEW_BYTES);
        CapturedSummary {
            status: c.status,
            headers: c.headers.clone(),
            body_bytes: c.body.len(),
            truncated: c.truncated,
            body_preview: String::from_utf8_lossy(&c.body[..n]).into_owned(),
        }
    }
}

/// One differing pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MismatchSample {
    /// Request method.
    pub method: String,
    /// Request path (without the query, which may carry secrets).
    pub path: String,
    /// What the user got.
    pub primary: CapturedSummary,
    /// What the mirror answered.
    pub mirror: CapturedSummary,
    /// How they differ, most important first.
    #[serde(default)]
    pub differences: Vec<Difference>,
    /// The same, one line each (see [`Comparison::reasons`]).
    pub reasons: Vec<String>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Match and mismatch counts of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PathCounts {
    /// Comparisons that matched.
    pub matches: u64,
    /// Comparisons that differed.
    pub mismatches: u64,
}

impl PathCounts {
    fn add(&mut self, other: PathCounts) {
        self.matches += other.matches;
        self.mismatches += other.mismatches;
    }

    /// Share of comparisons that differed, 0 when there were none.
    pub fn mismatch_rate(&self) -> f64 {
        let n = self.matches + self.mismatches;
        if n == 0 {
            0.0
        } else {
            self.mismatches as f64 / n as f64
        }
    }
}

/// How often one field (see [`Difference::field`]) differed on a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldCount {
    /// Such as `$.items[*].price` or `header content-type`.
    pub field: String,
    /// Differing pairs in which it differed.
    pub count: u64,
}

/// Counts of one path, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    /// Request path.
    pub path: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: PathCounts,
    /// What differed on it, most often first (at most [`MAX_FIELDS`]).
    #[serde(default)]
    pub fields: Vec<FieldCount>,
}

/// Fields counted per path; more are folded into the last one seen.
pub const MAX_FIELDS: usize = 10;

/// What [`MismatchSamples::report`] returns: the samples (oldest first) and the
/// per-path counts (most mismatches first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MirrorReport {
    /// What these comparisons belong to (set by the control plane, such as a
    /// rollout's mirror step); a config with another session starts afresh.
    #[serde(default)]
    pub session: String,
    /// Comparisons of all paths.
    pub total: PathCounts,
    /// Per path, most mismatches first, then by path.
    pub paths: Vec<PathReport>,
    /// Comparisons of paths evicted from `paths` (only when more than
    /// [`MAX_PATHS`] distinct paths were seen).
    pub other: PathCounts,
    /// The last differing pairs, oldest first.
    pub samples: Vec<MismatchSample>,
}

impl MirrorReport {
    /// The reports of several routers (one per host) as one: counts added per path
    /// and field, samples interleaved by time and bounded by `max_samples`.
    pub fn merge(reports: impl IntoIterator<Item = MirrorReport>, max_samples: usize) -> Self {
        let mut out = MirrorReport::default();
        let mut paths: HashMap<String, (PathCounts, HashMap<String, u64>)> = HashMap::new();
        for r in reports {
            if out.session.is_empty() {
                out.session = r.session;
            }
            out.total.add(r.total);
            out.other.add(r.other);
            for p in r.paths {
                let e = paths.entry(p.path).or_default();
                e.0.add(p.counts);
                for f in p.fields {
                    *e.1.entry(f.field).or_default() += f.count;
                }
            }
            out.samples.extend(r.samples);
        }
        out.samples.sort_by_key(|s| s.at_ms);
        let extra = out.samples.len().saturating_sub(max_samples);
        out.samples.drain(..extra);
        out.paths = paths
            .into_iter()
            .map(|(path, (counts, fields))| PathReport {
                path,
                counts,
                fields: sorted_fields(fields.into_iter()),
            })
            .collect();
        sort_paths(&mut out.paths);
        out
    }

    /// The paths whose answers differed, worst first, as `GET /items 85 of 85
    /// differ ($.items[*].price, $.items[*].cost)`, at most `n`.
    pub fn worst_paths(&self, n: usize) -> Vec<String> {
        self.paths
            .iter()
            .filter(|p| p.counts.mismatches > 0)
            .take(n)
            .map(|p| {
                let fields: Vec<&str> = p.fields.iter().take(3).map(|f| f.field.as_str()).collect();
                format!(
                    "{} {} of {} differ ({})",
                    p.path,
                    p.counts.mismatches,
                    p.counts.matches + p.counts.mismatches,
                    fields.join(", ")
                )
            })
            .collect()
    }
}

fn sorted_fields(fields: impl Iterator<Item = (String, u64)>) -> Vec<FieldCount> {
    let mut v: Vec<FieldCount> = fields
        .map(|(field, count)| FieldCount { field, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.field.cmp(&b.field)));
    v
}

/// Most mismatches first, then the highest mismatch rate, then by path.
fn sort_paths(paths: &mut [PathReport]) {
    paths.sort_by(|a, b| {
        b.counts
            .mismatches
            .cmp(&a.counts.mismatches)
            .then_with(|| {
                b.counts
                    .mismatch_rate()
                    .total_cmp(&a.counts.mismatch_rate())
            })
            .then_with(|| a.path.cmp(&b.path))
    });
}

/// Counts of one tracked path.
#[derive(Debug, Clone, Default)]
struct PathEntry {
    counts: PathCounts,
    fields: Vec<(String, u64)>,
}

/// The mirror results of one app: the last `max_samples` differing pairs and
/// match/mismatch counts, with what differed, for up to [`MAX_PATHS`] paths. When a
/// new path arrives and the map is full, the path with the fewest comparisons is
/// evicted and its counts move to `other`, so totals stay exact and busy paths stay
/// visible. When the samples are full, the oldest sample of the path with the most
/// samples goes, so one busy path does not hide the others.
#[derive(Debug, Clone, Default)]
pub struct MismatchSamples {
    session: String,
    max_samples: usize,
    samples: VecDeque<MismatchSample>,
    paths: HashMap<String, PathEntry>,
    other: PathCounts,
    total: PathCounts,
}

impl MismatchSamples {
    /// Keeps at most `max_samples` differing pairs.
    pub fn new(max_samples: usize) -> Self {
        MismatchSamples {
            max_samples,
            ..Default::default()
        }
    }

    /// Follows a config push: a new `session` starts afresh; the sample bound is
    /// applied, dropping the oldest samples.
    pub fn configure(&mut self, session: &str, max_samples: usize) {
        if self.session != session {
            *self = MismatchSamples::new(max_samples);
            self.session = session.to_string();
        }
        self.set_max_samples(max_samples);
    }

    /// Changes the sample bound, dropping the oldest samples.
    pub fn set_max_samples(&mut self, max_samples: usize) {
        self.max_samples = max_samples;
        while self.samples.len() > max_samples {
            self.samples.pop_front();
        }
    }

    /// Records one comparison of a request to `path` (without the query).
    pub fn record(
        &mut self,
        method: &str,
        path: &str,
        primary: &Captured,
        mirror: &Captured,
        outcome: &Comparison,
        at_ms: u64,
    ) {
        match outcome {
            Comparison::Match => self.total.matches += 1,
            Comparison::Mismatch { .. } => self.total.mismatches += 1,
        }
        let entry = self.path_entry(path);
        match outcome {
            Comparison::Match => entry.counts.matches += 1,
            Comparison::Mismatch { differences } => {
                entry.counts.mismatches += 1;
                let mut seen: Vec<String> = differences.iter().map(Difference::field).collect();
                seen.sort();
                seen.dedup();
                for field in seen {
                    if let Some(i) = entry.fields.iter().position(|(f, _)| *f == field) {
                        entry.fields[i].1 += 1;
                    } else if entry.fields.len() < MAX_FIELDS {
                        entry.fields.push((field, 1));
                    }
                }
            }
        }
        if let Comparison::Mismatch { differences } = outcome
            && self.max_samples > 0
        {
            if self.samples.len() >= self.max_samples {
                self.evict_sample();
            }
            self.samples.push_back(MismatchSample {
                method: method.to_string(),
                path: path.to_string(),
                primary: primary.into(),
                mirror: mirror.into(),
                differences: differences.clone(),
                reasons: outcome.reasons(),
                at_ms,
            });
        }
    }

    /// Drops the oldest sample of the path holding the most samples.
    fn evict_sample(&mut self) {
        let mut per_path: HashMap<&str, usize> = HashMap::new();
        for s in &self.samples {
            *per_path.entry(s.path.as_str()).or_default() += 1;
        }
        let most = per_path.values().copied().max().unwrap_or(0);
        let victim = self
            .samples
            .iter()
            .position(|s| per_path.get(s.path.as_str()) == Some(&most))
            .unwrap_or(0);
        self.samples.remove(victim);
    }

    fn path_entry(&mut self, path: &str) -> &mut PathEntry {
        if !self.paths.contains_key(path) && self.paths.len() >= MAX_PATHS {
            let victim = self
                .paths
                .iter()
                .min_by(|(pa, a), (pb, b)| {
                    (a.counts.matches + a.counts.mismatches)
                        .cmp(&(b.counts.matches + b.counts.mismatches))
                        .then_with(|| pa.cmp(pb))
                })
                .map(|(p, _)| p.clone());
            if let Some(e) = victim.and_then(|p| self.paths.remove(&p)) {
                self.other.add(e.counts);
            }
        }
        self.paths.entry(path.to_string()).or_default()
    }

    /// Counts of one path, if it is tracked.
    pub fn counts(&self, path: &str) -> Option<PathCounts> {
        self.paths.get(path).map(|e| e.counts)
    }

    /// A copy of everything, for the admin API.
    pub fn report(&self) -> MirrorReport {
        let mut paths: Vec<PathReport> = self
            .paths
            .iter()
            .map(|(p, e)| PathReport {
                path: p.clone(),
                counts: e.counts,
                fields: sorted_fields(e.fields.iter().cloned()),
            })
            .collect();
        sort_paths(&mut paths);
        MirrorReport {
            session: self.session.clone(),
            total: self.total,
            paths,
            other: self.other,
            samples: self.samples.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_map;

    fn json(status: u16, body: &str) -> Captured {
        Captured {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
            truncated: false,
        }
    }

    fn cfg(ignore: &[&str]) -> MirrorConfig {
        let mut c = MirrorConfig::new("v2", 100.0);
        c.ignore_json_paths = ignore.iter().map(|s| s.to_string()).collect();
        c
    }

    fn reasons(c: Comparison) -> Vec<String> {
        c.reasons()
    }

    fn compare(a: &Captured, b: &Captured, cfg: &MirrorConfig) -> Comparison {
        CompareRules::compile(cfg).unwrap().compare(a, b)
    }

    #[test]
    fn ignored_json_paths_match() {
        let a = json(
            200,
            r#"{"timestamp": 1, "price": 10, "items": [{"id": "a", "n": 1}, {"id": "b", "n": 2}]}"#,
        );
        let b = json(
            200,
            r#"{"items": [{"id": "x", "n": 1}, {"n": 2, "id": "y"}], "price": 10, "timestamp": 2}"#,
        );
        let c = cfg(&["$.timestamp", "$.items[*].id"]);
        assert_eq!(compare(&a, &b, &c), Comparison::Match);
        // Without the ignore paths, both differences are named.
        let r = reasons(compare(&a, &b, &cfg(&[])));
        assert!(r.contains(&"body $.timestamp: 1 vs 2".to_string()), "{r:?}");
        assert!(
            r.contains(&r#"body $.items[0].id: "a" vs "x""#.to_string()),
            "{r:?}"
        );
    }

    #[test]
    fn differing_field_is_named() {
        let a = json(200, r#"{"price": 10, "name": "x", "ts": 5}"#);
        let b = json(200, r#"{"price": 12, "name": "x", "ts": 6, "extra": true}"#);
        let r = reasons(compare(&a, &b, &cfg(&["$.ts"])));
        assert_eq!(
            r,
            vec![
                "body $.price: 10 vs 12".to_string(),
                "body $.extra: (missing) vs true".to_string()
            ]
        );
    }

    #[test]
    fn index_and_nested_paths() {
        let a = json(200, r#"{"a": {"b": [1, 2, 3]}, "weird key": 1}"#);
        let b = json(200, r#"{"a": {"b": [9, 2]}, "weird key": 2}"#);
        let r = reasons(compare(&a, &b, &cfg(&["$.a.b[0]"])));
        assert_eq!(
            r,
            vec![
                "body $.a.b: length 3 vs 2".to_string(),
                r#"body $["weird key"]: 1 vs 2"#.to_string()
            ]
        );
        let many_a = json(200, &format!("[{}]", vec!["1"; 30].join(",")));
        let many_b = json(200, &format!("[{}]", vec!["2"; 30].join(",")));
        let r = reasons(compare(&many_a, &many_b, &cfg(&[])));
        assert_eq!(r.len(), MAX_JSON_DIFFERENCES + 1);
        assert!(r.last().unwrap().contains("more differing"), "{r:?}");
    }

    #[test]
    fn status_and_header_differences() {
        let a = json(200, "{}");
        let mut b = json(500, "{}");
        b.headers = vec![("content-type".into(), "text/plain".into())];
        assert_eq!(
            reasons(compare(&a, &b, &cfg(&[]))),
            vec![
                "status 200 vs 500".to_string(),
                "header content-type: application/json vs text/plain".to_string()
            ]
        );
        b.headers.clear();
        b.status = 200;
        assert_eq!(
            reasons(compare(&a, &b, &cfg(&[]))),
            vec!["header content-type: application/json vs (none)".to_string()]
        );
    }

    #[test]
    fn non_json_bodies_compare_bytes() {
        let a = json(200, "hello world");
        let b = json(200, "hello there");
        assert_eq!(
            reasons(compare(&a, &b, &cfg(&[]))),
            vec![r#"body line 1: "hello world" vs "hello there""#.to_string()]
        );
        assert!(compare(&a, &a.clone(), &cfg(&[])).is_match());
        // JSON on one side only: bytes.
        let c = json(200, "{}");
        assert_eq!(reasons(compare(&a, &c, &cfg(&[]))).len(), 1);
        // Same JSON, different formatting: a match.
        assert!(
            compare(
                &json(200, r#"{"a":1}"#),
                &json(200, "{ \"a\" : 1 }\n"),
                &cfg(&[])
            )
            .is_match()
        );
    }

    #[test]
    fn truncated_bodies_compare_prefixes() {
        let mut a = json(200, r#"{"timestamp": 1, "big": "aaaa"#);
        a.truncated = true;
        let mut b = a.clone();
        b.body = Bytes::from_static(br#"{"timestamp": 1, "big": "aaaaaaaa"#);
        // Same prefix: a match (nothing known differs).
        assert!(compare(&a, &b, &cfg(&[])).is_match());
        // Different prefix: a mismatch, even under an ignore path (JSON is not parsed).
        b.body = Bytes::from_static(br#"{"timestamp": 2, "big": "aaaaaaaa"#);
        assert_eq!(
            reasons(compare(&a, &b, &cfg(&["$.timestamp"]))),
            vec!["body differs at byte 14 (truncated)".to_string()]
        );
        // A complete body shorter than the other's captured prefix: a mismatch.
        let short = json(200, r#"{"timestamp": 1"#);
        assert_eq!(
            reasons(compare(&short, &a, &cfg(&[]))),
            vec![format!("body length 15 vs {}+", a.body.len())]
        );
    }

    #[test]
    fn should_mirror_is_exact() {
        let n = (0..1000).filter(|&i| should_mirror(i, 5.0)).count();
        assert_eq!(n, 50);
        // Any 1,000 consecutive counters, anywhere.
        for start in [1u64, 17, 999, 123_456_789, u64::MAX - 2000] {
            let n = (start..start + 1000)
                .filter(|&i| should_mirror(i, 5.0))
                .count();
            assert_eq!(n, 50, "from {start}");
        }
        // Evenly spread: no two mirrored requests closer than 20 at 5%.
        let picked: Vec<u64> = (0..200).filter(|&i| should_mirror(i, 5.0)).collect();
        assert!(picked.windows(2).all(|w| w[1] - w[0] == 20), "{picked:?}");
        assert_eq!((0..1000).filter(|&i| should_mirror(i, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|&i| should_mirror(i, 100.0)).count(), 1000);
        assert_eq!((0..1000).filter(|&i| should_mirror(i, 250.0)).count(), 1000);
        assert_eq!((0..1000).filter(|&i| should_mirror(i, f64::NAN)).count(), 0);
        assert_eq!((0..10_000).filter(|&i| should_mirror(i, 0.5)).count(), 50);
    }

    #[test]
    fn which_requests_are_mirrored() {
        let mut c = MirrorConfig::new("v2", 1.0);
        let r = CompareRules::compile(&c).unwrap();
        assert!(r.wants(&http::Method::GET, "/anything"));
        assert!(r.wants(&http::Method::HEAD, "/"));
        assert!(!r.wants(&http::Method::POST, "/"));
        c.paths = vec!["/api/".into(), "/items".into()];
        c.exclude_paths = vec!["/api/admin".into()];
        let r = CompareRules::compile(&c).unwrap();
        assert!(r.wants(&http::Method::GET, "/api/x"));
        assert!(r.wants(&http::Method::GET, "/items/3"));
        assert!(!r.wants(&http::Method::GET, "/api/admin/users"));
        assert!(!r.wants(&http::Method::GET, "/"));
        c.paths = vec!["api".into()];
        assert_eq!(
            CompareRules::compile(&c).unwrap_err(),
            r#"paths[0]: "api" must start with '/'"#
        );
    }

    #[test]
    fn bad_configs_are_named() {
        let mut c = MirrorConfig::new("v2", 1.0);
        c.mask_patterns = vec!["(".into()];
        assert!(
            CompareRules::compile(&c)
                .unwrap_err()
                .starts_with(r#"mask_patterns[0]: "(" is not a valid pattern"#)
        );
        let mut c = MirrorConfig::new("v2", 1.0);
        c.compare_headers = vec!["Set-Cookie".into()];
        assert!(
            CompareRules::compile(&c)
                .unwrap_err()
                .contains("carries credentials")
        );
        let mut c = MirrorConfig::new("v2", 1.0);
        c.redact_headers = vec!["bad header".into()];
        assert!(
            CompareRules::compile(&c)
                .unwrap_err()
                .starts_with("redact_headers[0]")
        );
    }

    #[test]
    fn captured_headers_leave_out_noise_and_never_hold_credentials() {
        let h = header_map(&[
            ("Content-Type", "application/json"),
            ("Date", "Mon, 30 Nov 2026 20:00:00 GMT"),
            ("Server", "sample"),
            ("Traceparent", "00-abc-def-01"),
            ("Set-Cookie", "session=secret"),
            ("X-Api-Key", "secret"),
            ("Vary", "accept"),
            ("Vary", "origin"),
            ("X-Baton-Mirror", "1"),
        ]);
        let mut c = MirrorConfig::new("v2", 1.0);
        c.redact_headers = vec!["x-api-key".into()];
        let r = CompareRules::compile(&c).unwrap();
        assert_eq!(
            r.capture_headers(&h),
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("vary".to_string(), "accept, origin".to_string()),
            ]
        );
        // Only some: just those.
        c.compare_headers = vec!["Content-Type".into(), "X-Missing".into()];
        let r = CompareRules::compile(&c).unwrap();
        assert_eq!(
            r.capture_headers(&h),
            vec![("content-type".to_string(), "application/json".to_string())]
        );
        // Ignoring one more.
        let mut c = MirrorConfig::new("v2", 1.0);
        c.redact_headers = vec!["x-api-key".into()];
        c.ignore_headers.push("vary".into());
        let r = CompareRules::compile(&c).unwrap();
        assert_eq!(r.capture_headers(&h).len(), 1);
        assert!(r.is_credential("COOKIE") && !r.is_credential("accept"));
    }

    #[test]
    fn status_and_body_can_be_left_out_and_text_masked() {
        let a = json(200, "served at 12:00:01 by pid 41\nprice 10\n");
        let mut b = json(503, "served at 12:00:02 by pid 97\nprice 10\n");
        let mut c = MirrorConfig::new("v2", 1.0);
        c.compare_status = false;
        c.body = BodyCompare::Ignore;
        assert!(compare(&a, &b, &c).is_match());
        c.body = BodyCompare::Text;
        assert_eq!(
            reasons(compare(&a, &b, &c)),
            vec![
                r#"body line 1: "served at 12:00:01 by pid 41" vs "served at 12:00:02 by pid 97""#
                    .to_string()
            ]
        );
        c.mask_patterns = vec![r"\d\d:\d\d:\d\d".into(), r"pid \d+".into()];
        assert!(compare(&a, &b, &c).is_match());
        b.body = Bytes::from_static(b"served at 12:00:02 by pid 97\nprice 12\n");
        let out = compare(&a, &b, &c);
        assert_eq!(
            reasons(out.clone()),
            vec![r#"body line 2: "price 10" vs "price 12""#.to_string()]
        );
        // Masks also apply to a JSON-mode body that is not JSON.
        c.body = BodyCompare::Json;
        assert_eq!(reasons(compare(&a, &b, &c)), reasons(out));
        c.body = BodyCompare::Bytes;
        assert_eq!(
            reasons(compare(&a, &b, &c)),
            vec!["body differs at byte 17 (38 vs 38 bytes)".to_string()]
        );
    }

    #[test]
    fn differences_name_fields_with_both_values() {
        let a = json(
            200,
            r#"{"items": [{"id": 1, "price": 4.5}, {"id": 2, "price": 3}]}"#,
        );
        let b = json(
            200,
            r#"{"items": [{"id": 1, "cost": 4.5}, {"id": 2, "cost": 3}]}"#,
        );
        let Comparison::Mismatch { differences } = compare(&a, &b, &cfg(&[])) else {
            panic!("they differ")
        };
        assert_eq!(
            differences[0],
            Difference::Json {
                path: "$.items[0].price".into(),
                primary: Some(serde_json::json!(4.5)),
                mirror: None
            }
        );
        let fields: Vec<String> = differences.iter().map(Difference::field).collect();
        assert_eq!(
            fields,
            vec![
                "$.items[*].price",
                "$.items[*].cost",
                "$.items[*].price",
                "$.items[*].cost"
            ]
        );
        let text = serde_json::to_value(&differences[1]).unwrap();
        assert_eq!(
            text,
            serde_json::json!({"kind": "json", "path": "$.items[0].cost", "primary": null, "mirror": 4.5})
        );
        assert_eq!(
            fold_indices(r#"$["a[1]"][12].b[x]"#),
            r#"$["a[*]"][*].b[x]"#
        );
    }

    #[test]
    fn samples_are_bounded_and_counted_per_path() {
        let mut s = MismatchSamples::new(3);
        let a = json(200, r#"{"v": 1}"#);
        let b = json(200, r#"{"v": 2}"#);
        let c = cfg(&[]);
        for i in 0..10 {
            let path = if i % 2 == 0 { "/same" } else { "/differs" };
            let other = if i % 2 == 0 { &a } else { &b };
            let outcome = compare(&a, other, &c);
            s.record("GET", path, &a, other, &outcome, i);
        }
        assert_eq!(
            s.counts("/same"),
            Some(PathCounts {
                matches: 5,
                mismatches: 0
            })
        );
        assert_eq!(
            s.counts("/differs"),
            Some(PathCounts {
                matches: 0,
                mismatches: 5
            })
        );
        let r = s.report();
        assert_eq!(
            r.total,
            PathCounts {
                matches: 5,
                mismatches: 5
            }
        );
        assert_eq!(r.paths[0].path, "/differs");
        assert_eq!(
            r.paths[0].fields,
            vec![FieldCount {
                field: "$.v".into(),
                count: 5
            }]
        );
        assert_eq!(
            r.worst_paths(3),
            vec!["/differs 5 of 5 differ ($.v)".to_string()]
        );
        assert_eq!(r.samples.len(), 3);
        assert_eq!(
            r.samples.iter().map(|x| x.at_ms).collect::<Vec<_>>(),
            vec![5, 7, 9]
        );
        assert!(r.samples.iter().all(|x| x.path == "/differs"));
        assert_eq!(r.samples[0].reasons, vec!["body $.v: 1 vs 2".to_string()]);
        assert_eq!(r.samples[0].mirror.body_preview, r#"{"v": 2}"#);
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            text.contains(r#""path":"/differs","matches":0,"mismatches":5"#),
            "{text}"
        );
        s.set_max_samples(1);
        assert_eq!(s.report().samples.len(), 1);
        // A new session starts afresh; the same one keeps everything.
        s.configure("", 1);
        assert_eq!(s.report().total.mismatches, 5);
        s.configure("rollout 7 step 2", 1);
        assert_eq!(
            s.report(),
            MirrorReport {
                session: "rollout 7 step 2".into(),
                ..MirrorReport::default()
            }
        );
    }

    #[test]
    fn full_samples_keep_every_path_in_view() {
        let mut s = MismatchSamples::new(4);
        let a = json(200, r#"{"v": 1}"#);
        let b = json(200, r#"{"v": 2}"#);
        let c = cfg(&[]);
        let outcome = compare(&a, &b, &c);
        s.record("GET", "/rare", &a, &b, &outcome, 0);
        for i in 1..20 {
            s.record("GET", "/busy", &a, &b, &outcome, i);
        }
        let paths: Vec<String> = s.report().samples.iter().map(|x| x.path.clone()).collect();
        assert_eq!(paths, vec!["/rare", "/busy", "/busy", "/busy"]);
    }

    #[test]
    fn reports_of_several_routers_merge() {
        let a = json(200, r#"{"v": 1}"#);
        let b = json(200, r#"{"v": 2}"#);
        let c = cfg(&[]);
        let differ = compare(&a, &b, &c);
        let mut one = MismatchSamples::new(5);
        let mut two = MismatchSamples::new(5);
        one.record("GET", "/x", &a, &b, &differ, 1);
        one.record("GET", "/y", &a, &a, &Comparison::Match, 2);
        two.record("GET", "/x", &a, &b, &differ, 3);
        two.record("GET", "/x", &a, &a, &Comparison::Match, 4);
        let m = MirrorReport::merge([one.report(), two.report()], 1);
        assert_eq!(
            m.total,
            PathCounts {
                matches: 2,
                mismatches: 2
            }
        );
        assert_eq!(m.paths[0].path, "/x");
        assert_eq!(
            m.paths[0].counts,
            PathCounts {
                matches: 1,
                mismatches: 2
            }
        );
        assert_eq!(m.paths[0].fields[0].count, 2);
        assert_eq!(m.samples.len(), 1);
        assert_eq!(m.samples[0].at_ms, 3, "the newest are kept");
    }

    #[test]
    fn path_map_is_bounded() {
        let mut s = MismatchSamples::new(0);
        let a = json(200, "1");
        for _ in 0..3 {
            s.record("GET", "/busy", &a, &a, &Comparison::Match, 0);
        }
        for i in 0..(MAX_PATHS * 2) {
            s.record("GET", &format!("/p{i}"), &a, &a, &Comparison::Match, 0);
        }
        let r = s.report();
        assert_eq!(r.paths.len(), MAX_PATHS);
        assert_eq!(s.counts("/busy").map(|c| c.matches), Some(3));
        let tracked: u64 = r.paths.iter().map(|p| p.counts.matches).sum();
        assert_eq!(tracked + r.other.matches, r.total.matches);
        assert_eq!(r.total.matches, 3 + 2 * MAX_PATHS as u64);
        assert!(r.samples.is_empty());
    }
}
