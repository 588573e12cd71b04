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

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::MirrorConfig;

/// How many differing JSON paths a mismatch names at most.
const MAX_JSON_REASONS: usize = 5;
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

/// Whether `method` is one of the configured mirror methods.
pub fn method_allowed(cfg: &MirrorConfig, method: &http::Method) -> bool {
    cfg.methods.iter().any(|m| m == method.as_str())
}

/// One response as captured for comparison.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Captured {
    /// HTTP status code.
    pub status: u16,
    /// The compared headers only (names as configured), in any order; a header the
    /// response did not have is simply absent.
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

/// Result of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Comparison {
    /// The responses agree on everything compared.
    Match,
    /// They differ; each reason is one line such as `status 200 vs 500`,
    /// `header content-type: application/json vs text/plain` or
    /// `body $.price: 10 vs 12`.
    Mismatch {
        /// Why, most important first.
        reasons: Vec<String>,
    },
}

impl Comparison {
    /// True for [`Comparison::Match`].
    pub fn is_match(&self) -> bool {
        matches!(self, Comparison::Match)
    }
}

/// Compares the mirror's response with the primary's: status, then the headers of
/// `cfg.compare_headers`, then the body.
///
/// Body rule: when neither body is truncated and both parse as JSON, they are compared
/// as JSON values after removing `cfg.ignore_json_paths` (invalid paths are skipped;
/// validation rejects them), naming up to five differing paths; otherwise byte for
/// byte. When either body is truncated, only the common prefix can be known, so the
/// bodies mismatch only if their first `min(len)` bytes differ (or if one is complete
/// and shorter than the captured part of the other); ignored JSON paths cannot apply.
pub fn compare(primary: &Captured, mirror: &Captured, cfg: &MirrorConfig) -> Comparison {
    let mut reasons = Vec::new();
    if primary.status != mirror.status {
        reasons.push(format!("status {} vs {}", primary.status, mirror.status));
    }
    for name in &cfg.compare_headers {
        let (a, b) = (primary.header(name), mirror.header(name));
        if a != b {
            reasons.push(format!(
                "header {}: {} vs {}",
                name.to_ascii_lowercase(),
                a.unwrap_or("(none)"),
                b.unwrap_or("(none)")
            ));
        }
    }
    compare_bodies(primary, mirror, cfg, &mut reasons);
    if reasons.is_empty() {
        Comparison::Match
    } else {
        Comparison::Mismatch { reasons }
    }
}

fn compare_bodies(a: &Captured, b: &Captured, cfg: &MirrorConfig, reasons: &mut Vec<String>) {
    if a.truncated || b.truncated {
        let n = a.body.len().min(b.body.len());
        if a.body[..n] != b.body[..n] {
            reasons.push(format!(
                "body differs at byte {} (truncated)",
                first_difference(&a.body, &b.body)
            ));
        } else if (!a.truncated && a.body.len() < b.body.len())
            || (!b.truncated && b.body.len() < a.body.len())
        {
            reasons.push(format!(
                "body length {}{} vs {}{}",
                a.body.len(),
                if a.truncated { "+" } else { "" },
                b.body.len(),
                if b.truncated { "+" } else { "" }
            ));
        }
        return;
    }
    if a.body == b.body {
        return;
    }
    let parsed = (
        serde_json::from_slice::<Value>(&a.body),
        serde_json::from_slice::<Value>(&b.body),
    );
    if let (Ok(mut va), Ok(mut vb)) = parsed {
        for p in &cfg.ignore_json_paths {
            if let Ok(path) = JsonPath::parse(p) {
                path.remove(&mut va);
                path.remove(&mut vb);
            }
        }
        let before = reasons.len();
        let mut at = String::from("$");
        diff_json(&va, &vb, &mut at, reasons);
        if reasons.len() - before > MAX_JSON_REASONS {
            let more = reasons.len() - before - MAX_JSON_REASONS;
            reasons.truncate(before + MAX_JSON_REASONS);
            reasons.push(format!("body: {more} more differing JSON paths"));
        }
        return;
    }
    reasons.push(format!(
        "body differs at byte {} ({} vs {} bytes)",
        first_difference(&a.body, &b.body),
        a.body.len(),
        b.body.len()
    ));
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Appends one reason per differing leaf, stopping a little past the limit so that a
/// huge document does not produce a huge list.
fn diff_json(a: &Value, b: &Value, at: &mut String, reasons: &mut Vec<String>) {
    if reasons.len() > MAX_JSON_REASONS * 4 {
        return;
    }
    let len = at.len();
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            for (k, va) in ma {
                push_key(at, k);
                match mb.get(k) {
                    Some(vb) => diff_json(va, vb, at, reasons),
                    None => reasons.push(format!("body {at}: {} vs (missing)", show(va))),
                }
                at.truncate(len);
            }
            for (k, vb) in mb {
                if !ma.contains_key(k) {
                    push_key(at, k);
                    reasons.push(format!("body {at}: (missing) vs {}", show(vb)));
                    at.truncate(len);
                }
            }
        }
        (Value::Array(xa), Value::Array(xb)) => {
            if xa.len() != xb.len() {
                reasons.push(format!("body {at}: length {} vs {}", xa.len(), xb.len()));
            }
            for (i, (va, vb)) in xa.iter().zip(xb).enumerate() {
                at.push_str(&format!("[{i}]"));
                diff_json(va, vb, at, reasons);
                at.truncate(len);
            }
        }
        _ if a != b => reasons.push(format!("body {at}: {} vs {}", show(a), show(b))),
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

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= MAX_VALUE_CHARS {
        s
    } else {
        let cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
        format!("{cut}...")
    }
}

/// A parsed ignore path: `$` followed by `.key`, `.*`, `[N]` or `[*]` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
    /// Every element of an array, or every value of an object.
    Any,
}

impl JsonPath {
    /// Parses `$.a.b`, `$.a[*].b`, `$.a[0]`, `$.*.id`. The error says what is wrong.
    pub fn parse(s: &str) -> Result<JsonPath, String> {
        let rest = s
            .strip_prefix('$')
            .ok_or_else(|| format!("{s:?} must start with '$'"))?;
        let mut segments = Vec::new();
        let mut r = rest;
        while !r.is_empty() {
            if let Some(after) = r.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() {
                    return Err(format!("{s:?}: empty key after '.'"));
                }
                segments.push(if key == "*" {
                    Segment::Any
                } else {
                    Segment::Key(key.to_string())
                });
                r = &after[end..];
            } else if let Some(after) = r.strip_prefix('[') {
                let end = after
                    .find(']')
                    .ok_or_else(|| format!("{s:?}: '[' without ']'"))?;
                let inner = &after[..end];
                segments.push(if inner == "*" {
                    Segment::Any
                } else {
                    Segment::Index(
                        inner
                            .parse()
                            .map_err(|_| format!("{s:?}: [{inner}] is neither an index nor [*]"))?,
                    )
                });
                r = &after[end + 1..];
            } else {
                return Err(format!("{s:?}: expected '.' or '[' at {r:?}"));
            }
        }
        if segments.is_empty() {
            return Err(format!(
                "{s:?}: ignoring the whole body ($) is not supported"
            ));
        }
        Ok(JsonPath { segments })
    }

    /// Removes what the path points at from `v`: object keys are deleted, array
    /// elements are replaced by `null` (deleting would shift the indices of the rest).
    pub fn remove(&self, v: &mut Value) {
        remove_at(v, &self.segments);
    }
}

fn remove_at(v: &mut Value, segs: &[Segment]) {
    let Some((first, rest)) = segs.split_first() else {
        return;
    };
    let last = rest.is_empty();
    match (first, v) {
        (Segment::Key(k), Value::Object(m)) => {
            if last {
                m.remove(k);
            } else if let Some(child) = m.get_mut(k) {
                remove_at(child, rest);
            }
        }
        (Segment::Index(i), Value::Array(a)) => {
            if let Some(child) = a.get_mut(*i) {
                if last {
                    *child = Value::Null;
                } else {
                    remove_at(child, rest);
                }
            }
        }
        (Segment::Any, Value::Array(a)) => {
            for child in a.iter_mut() {
                if last {
                    *child = Value::Null;
                } else {
                    remove_at(child, rest);
                }
            }
        }
        (Segment::Any, Value::Object(m)) => {
            if last {
                m.clear();
            } else {
                for child in m.values_mut() {
                    remove_at(child, rest);
                }
            }
        }
        _ => {}
    }
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
    /// Request path (without the query).
    pub path: String,
    /// What the user got.
    pub primary: CapturedSummary,
    /// What the mirror answered.
    pub mirror: CapturedSummary,
    /// Why they differ (see [`Comparison::Mismatch`]).
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

/// Counts of one path, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    /// Request path.
    pub path: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: PathCounts,
}

/// What [`MismatchSamples::report`] returns: the samples (oldest first) and the
/// per-path counts (most mismatches first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorReport {
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

/// The mirror results of one app: a ring of the last `max_samples` differing pairs and
/// match/mismatch counts for up to [`MAX_PATHS`] paths. When a new path arrives and the
/// map is full, the path with the fewest comparisons is evicted and its counts move to
/// `other`, so totals stay exact and busy paths stay visible.
#[derive(Debug, Clone, Default)]
pub struct MismatchSamples {
    max_samples: usize,
    samples: VecDeque<MismatchSample>,
    paths: HashMap<String, PathCounts>,
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

    /// Changes the sample bound (after a config push), dropping the oldest samples.
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
        let counts = self.path_counts(path);
        let bump = |c: &mut PathCounts| match outcome {
            Comparison::Match => c.matches += 1,
            Comparison::Mismatch { .. } => c.mismatches += 1,
        };
        bump(counts);
        bump(&mut self.total);
        if let Comparison::Mismatch { reasons } = outcome
            && self.max_samples > 0
        {
            if self.samples.len() >= self.max_samples {
                self.samples.pop_front();
            }
            self.samples.push_back(MismatchSample {
                method: method.to_string(),
                path: path.to_string(),
                primary: primary.into(),
                mirror: mirror.into(),
                reasons: reasons.clone(),
                at_ms,
            });
        }
    }

    fn path_counts(&mut self, path: &str) -> &mut PathCounts {
        if !self.paths.contains_key(path) && self.paths.len() >= MAX_PATHS {
            let victim = self
                .paths
                .iter()
                .min_by(|(pa, a), (pb, b)| {
                    (a.matches + a.mismatches)
                        .cmp(&(b.matches + b.mismatches))
                        .then_with(|| pa.cmp(pb))
                })
                .map(|(p, _)| p.clone());
            if let Some(c) = victim.and_then(|p| self.paths.remove(&p)) {
                self.other.matches += c.matches;
                self.other.mismatches += c.mismatches;
            }
        }
        self.paths.entry(path.to_string()).or_default()
    }

    /// Counts of one path, if it is tracked.
    pub fn counts(&self, path: &str) -> Option<PathCounts> {
        self.paths.get(path).copied()
    }

    /// A copy of everything, for the admin API.
    pub fn report(&self) -> MirrorReport {
        let mut paths: Vec<PathReport> = self
            .paths
            .iter()
            .map(|(p, c)| PathReport {
                path: p.clone(),
                counts: *c,
            })
            .collect();
        paths.sort_by(|a, b| {
            b.counts
                .mismatches
                .cmp(&a.counts.mismatches)
                .then_with(|| a.path.cmp(&b.path))
        });
        MirrorReport {
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
        match c {
            Comparison::Match => vec![],
            Comparison::Mismatch { reasons } => reasons,
        }
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
        assert_eq!(r.len(), MAX_JSON_REASONS + 1);
        assert!(r.last().unwrap().contains("more differing"), "{r:?}");
    }

    #[test]
    fn status_and_header_differences() {
        let a = json(200, "{}");
        let mut b = json(500, "{}");
        b.headers = vec![("Content-Type".into(), "text/plain".into())];
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
            vec!["body differs at byte 6 (11 vs 11 bytes)".to_string()]
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
    fn json_path_parsing() {
        for ok in [
            "$.a", "$.a.b", "$.a[*].b", "$.a[0]", "$.*.id", "$[0]", "$[*]",
        ] {
            assert!(JsonPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["a.b", "$", "$.", "$.a[", "$.a[x]", "$a", "$..a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
        let mut v: Value =
            serde_json::from_str(r#"{"x": {"id": 1, "k": 2}, "y": {"id": 3}}"#).unwrap();
        JsonPath::parse("$.*.id").unwrap().remove(&mut v);
        assert_eq!(v, serde_json::json!({"x": {"k": 2}, "y": {}}));
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
    fn methods() {
        let c = MirrorConfig::new("v2", 1.0);
        assert!(method_allowed(&c, &http::Method::GET));
        assert!(method_allowed(&c, &http::Method::HEAD));
        assert!(!method_allowed(&c, &http::Method::POST));
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
