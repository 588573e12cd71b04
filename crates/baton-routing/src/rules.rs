//! Match rules: send a request to a chosen version by header, cookie, path prefix or
//! method, before the weighted split. Pure: no I/O, no clock.
//!
//! The [`RouteRule`]s of an app are compiled once per routing snapshot into
//! [`CompiledRules`] (regexes built, header names parsed); [`CompiledRules::route`] is
//! then called per request and does not allocate. Rules are tried in order and the
//! first rule whose matches all hold wins.
//!
//! ```
//! use baton_routing::config::{Match, NamedMatch, RouteRule, ValueMatch};
//! use baton_routing::rules::CompiledRules;
//!
//! let rules = CompiledRules::compile(&[RouteRule {
//!     matches: vec![Match::Header(NamedMatch {
//!         name: "X-Canary".into(),
//!         value: ValueMatch::Equals("always".into()),
//!     })],
//!     version: "v2".into(),
//! }])
//! .unwrap();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-canary", "always".parse().unwrap());
//! assert_eq!(rules.route(&http::Method::GET, "/", &headers), Some("v2"));
//! ```

use http::header::{COOKIE, HeaderMap, HeaderName};
use regex::Regex;

use crate::config::{Match, NamedMatch, RouteRule, ValueMatch};

/// Largest compiled program accepted for one rule regex, so that a pushed config cannot
/// make the router build a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A rule list that failed to compile. Displays as `rules[2].matches[0].header: ...`,
/// naming the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules[{rule}].matches[{matcher}].{kind}: {message}")]
pub struct RuleError {
    /// Index of the rule.
    pub rule: usize,
    /// Index of the match inside the rule.
    pub matcher: usize,
    /// `header`, `cookie`, `path_prefix` or `method`.
    pub kind: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The compiled rules of one app; cheap to query, built once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct CompiledRules {
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    matchers: Vec<Matcher>,
    version: String,
}

#[derive(Debug, Clone)]
enum Matcher {
    Header { name: HeaderName, value: Value },
    Cookie { name: String, value: Value },
    PathPrefix(String),
    Method(http::Method),
}

#[derive(Debug, Clone)]
enum Value {
    Equals(String),
    Regex(Regex),
}

impl Value {
    fn compile(v: &ValueMatch) -> Result<Value, String> {
        match v {
            ValueMatch::Equals(s) => Ok(Value::Equals(s.clone())),
            ValueMatch::Regex(r) => regex::RegexBuilder::new(r)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(Value::Regex)
                .map_err(|e| format!("invalid regex {r:?}: {e}")),
        }
    }

    fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            Value::Equals(s) => s.as_bytes() == v,
            // Header values that are not visible ASCII cannot match a regex written
            // as text; treat them as non-matching rather than lossy-decoding.
            Value::Regex(re) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }

    fn matches_str(&self, v: &str) -> bool {
        match self {
            Value::Equals(s) => s == v,
            Value::Regex(re) => re.is_match(v),
        }
    }
}

impl CompiledRules {
    /// Compiles `rules`: parses header names (lower-cased) and methods and builds the
    /// regexes. Fails on the first invalid entry, naming it.
    pub fn compile(rules: &[RouteRule]) -> Result<CompiledRules, RuleError> {
        let mut out = Vec::with_capacity(rules.len());
        for (ri, rule) in rules.iter().enumerate() {
            let mut matchers = Vec::with_capacity(rule.matches.len());
            for (mi, m) in rule.matches.iter().enumerate() {
                let err = |kind: &'static str, message: String| RuleError {
                    rule: ri,
                    matcher: mi,
                    kind,
                    message,
                };
                let compiled = match m {
                    Match::Header(NamedMatch { name, value }) => {
                        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| {
                                err("header", format!("{name:?} is not a valid header name"))
                            })?;
                        let value = Value::compile(value).map_err(|m| err("header", m))?;
                        Matcher::Header { name, value }
                    }
                    Match::Cookie(NamedMatch { name, value }) => {
                        if !valid_cookie_name(name) {
                            return Err(err(
                                "cookie",
                                format!("{name:?} is not a valid cookie name"),
                            ));
                        }
                        let value = Value::compile(value).map_err(|m| err("cookie", m))?;
                        Matcher::Cookie {
                            name: name.clone(),
                            value,
                        }
                    }
                    Match::PathPrefix(p) => {
                        if !p.starts_with('/') {
                            return Err(err("path_prefix", format!("{p:?} must start with '/'")));
                        }
                        Matcher::PathPrefix(p.clone())
                    }
                    Match::Method(m) => Matcher::Method(
                        http::Method::from_bytes(m.as_bytes())
                            .map_err(|_| err("method", format!("{m:?} is not an HTTP method")))?,
                    ),
                };
                matchers.push(compiled);
            }
            out.push(CompiledRule {
                matchers,
                version: rule.version.clone(),
            });
        }
        Ok(CompiledRules { rules: out })
    }

    /// True when there is no rule (the request path can skip [`CompiledRules::route`]).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The version of the first rule whose matches all hold, or `None` to fall through
    /// to the weighted split. `path` is the request path without the query string.
    /// Does not allocate.
    pub fn route<H: RequestHeaders + ?Sized>(
        &self,
        method: &http::Method,
        path: &str,
        headers: &H,
    ) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.matchers.iter().all(|m| m.holds(method, path, headers)))
            .map(|r| r.version.as_str())
    }
}

/// A request's header lines as the rules read them: the parsed head on the HTTP/1
/// engine, hyper's map for HTTP/2.
pub trait RequestHeaders {
    /// The values of every header line called `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

impl RequestHeaders for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }
}

impl RequestHeaders for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }
}

impl Matcher {
    fn holds<H: RequestHeaders + ?Sized>(
        &self,
        method: &http::Method,
        path: &str,
        headers: &H,
    ) -> bool {
        match self {
            Matcher::Header { name, value } => headers.values(name).any(|v| value.matches_bytes(v)),
            Matcher::Cookie { name, value } => {
                find_cookie(headers, name).is_some_and(|v| value.matches_str(v))
            }
            Matcher::PathPrefix(p) => path.starts_with(p.as_str()),
            Matcher::Method(m) => method == m,
        }
    }
}

/// The value of the first cookie called `name` in the request's `Cookie` header(s)
/// (HTTP/2 clients may send several), with surrounding double quotes removed; `None`
/// when there is no such cookie or its value is not UTF-8. Scans bytes without
/// allocating or validating the rest of the header.
pub fn find_cookie<'h, H: RequestHeaders + ?Sized>(headers: &'h H, name: &str) -> Option<&'h str> {
    let name = name.as_bytes();
    // A static, so the name outlives the values borrowed through it.
    static COOKIE_HEADER: HeaderName = COOKIE;
    for hv in headers.values(&COOKIE_HEADER) {
        for pair in hv.split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if !pair.starts_with(name) {
                continue;
            }
            let rest = pair[name.len()..].trim_ascii_start();
            let Some(v) = rest.strip_prefix(b"=") else {
                continue;
            };
            let v = v.trim_ascii();
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            return std::str::from_utf8(v).ok();
        }
    }
    None
}

/// True for a non-empty cookie name made of letters, digits and `-_.` (a safe subset
/// of RFC 6265 tokens), at most 64 bytes.
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_map;
    use http::Method;

    fn header(name: &str, v: ValueMatch) -> Match {
        Match::Header(NamedMatch {
            name: name.into(),
            value: v,
        })
    }

    fn cookie(name: &str, v: ValueMatch) -> Match {
        Match::Cookie(NamedMatch {
            name: name.into(),
            value: v,
        })
    }

    fn eq(s: &str) -> ValueMatch {
        ValueMatch::Equals(s.into())
    }

    fn rule(matches: Vec<Match>, version: &str) -> RouteRule {
        RouteRule {
            matches,
            version: version.into(),
        }
    }

    fn route<'r>(r: &'r CompiledRules, path: &str, h: &[(&str, &str)]) -> Option<&'r str> {
        r.route(&Method::GET, path, &header_map(h))
    }

    #[test]
    fn header_equals_is_case_insensitive_on_name_only() {
        let r =
            CompiledRules::compile(&[rule(vec![header("X-Canary", eq("always"))], "v2")]).unwrap();
        assert_eq!(route(&r, "/", &[("x-canary", "always")]), Some("v2"));
        assert_eq!(route(&r, "/", &[("X-CANARY", "always")]), Some("v2"));
        assert_eq!(route(&r, "/", &[("x-canary", "Always")]), None);
        assert_eq!(route(&r, "/", &[("x-canary", "never")]), None);
        // Missing header.
        assert_eq!(route(&r, "/", &[]), None);
        // Any of several values.
        assert_eq!(
            route(&r, "/", &[("x-canary", "no"), ("x-canary", "always")]),
            Some("v2")
        );
    }

    #[test]
    fn header_regex() {
        let r = CompiledRules::compile(&[rule(
            vec![header("x-user", ValueMatch::Regex("^qa-[0-9]+$".into()))],
            "v2",
        )])
        .unwrap();
        assert_eq!(route(&r, "/", &[("x-user", "qa-17")]), Some("v2"));
        assert_eq!(route(&r, "/", &[("x-user", "qa-x")]), None);
        assert_eq!(route(&r, "/", &[("x-user", "bob-qa-1")]), None);
        assert_eq!(route(&r, "/", &[]), None);
    }

    #[test]
    fn cookie_equals_across_several_cookie_headers() {
        let r = CompiledRules::compile(&[rule(vec![cookie("canary", eq("1"))], "v2")]).unwrap();
        assert_eq!(route(&r, "/", &[("cookie", "canary=1")]), Some("v2"));
        assert_eq!(
            route(&r, "/", &[("cookie", "a=b;  canary=1 ; c=d")]),
            Some("v2")
        );
        assert_eq!(
            route(&r, "/", &[("cookie", "a=b"), ("cookie", "x=y; canary=1")]),
            Some("v2")
        );
        assert_eq!(route(&r, "/", &[("cookie", "canary=\"1\"")]), Some("v2"));
        assert_eq!(route(&r, "/", &[("cookie", "canary=0")]), None);
        assert_eq!(route(&r, "/", &[("cookie", "notcanary=1")]), None);
        assert_eq!(route(&r, "/", &[("cookie", "canary")]), None);
        assert_eq!(route(&r, "/", &[]), None);
        // The first cookie of that name counts.
        assert_eq!(route(&r, "/", &[("cookie", "canary=0; canary=1")]), None);
    }

    #[test]
    fn path_prefix_and_method() {
        let r = CompiledRules::compile(&[rule(
            vec![
                Match::PathPrefix("/api/".into()),
                Match::Method("POST".into()),
            ],
            "v2",
        )])
        .unwrap();
        let h = HeaderMap::new();
        assert_eq!(r.route(&Method::POST, "/api/orders", &h), Some("v2"));
        assert_eq!(r.route(&Method::GET, "/api/orders", &h), None);
        assert_eq!(r.route(&Method::POST, "/apix", &h), None);
        assert_eq!(r.route(&Method::POST, "/", &h), None);
    }

    #[test]
    fn all_matches_must_hold_and_first_rule_wins() {
        let r = CompiledRules::compile(&[
            rule(
                vec![
                    header("x-canary", eq("always")),
                    Match::PathPrefix("/api/".into()),
                ],
                "v3",
            ),
            rule(vec![header("x-canary", eq("always"))], "v2"),
            rule(vec![], "v1"),
        ])
        .unwrap();
        assert_eq!(route(&r, "/api/x", &[("x-canary", "always")]), Some("v3"));
        assert_eq!(route(&r, "/web", &[("x-canary", "always")]), Some("v2"));
        // An empty rule matches everything.
        assert_eq!(route(&r, "/web", &[]), Some("v1"));
        assert!(!r.is_empty());
        assert_eq!(
            CompiledRules::default().route(&Method::GET, "/", &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn invalid_entries_are_named() {
        let e = CompiledRules::compile(&[
            rule(vec![], "v1"),
            rule(
                vec![
                    header("x-a", eq("1")),
                    header("x-b", ValueMatch::Regex("(".into())),
                ],
                "v2",
            ),
        ])
        .unwrap_err();
        assert_eq!((e.rule, e.matcher, e.kind), (1, 1, "header"));
        assert!(
            e.to_string()
                .starts_with("rules[1].matches[1].header: invalid regex")
        );
        let e =
            CompiledRules::compile(&[rule(vec![header("bad name", eq("1"))], "v2")]).unwrap_err();
        assert!(e.to_string().contains("not a valid header name"), "{e}");
        let e = CompiledRules::compile(&[rule(vec![Match::PathPrefix("api".into())], "v2")])
            .unwrap_err();
        assert_eq!(e.kind, "path_prefix");
        let e = CompiledRules::compile(&[rule(vec![cookie("a;b", eq("1"))], "v2")]).unwrap_err();
        assert_eq!(e.kind, "cookie");
    }

    #[test]
    fn find_cookie_edge_cases() {
        let h = header_map(&[("cookie", "a=1; b = 2 ;c=; d=x=y")]);
        assert_eq!(find_cookie(&h, "a"), Some("1"));
        assert_eq!(find_cookie(&h, "b"), Some("2"));
        assert_eq!(find_cookie(&h, "c"), Some(""));
        assert_eq!(find_cookie(&h, "d"), Some("x=y"));
        assert_eq!(find_cookie(&h, "e"), None);
    }
}
