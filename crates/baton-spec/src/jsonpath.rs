//! JSON paths, as a spec names the parts of a JSON answer to leave out of a mirror
//! comparison: `$` followed by `.key`, `.*`, `[N]` or `[*]` segments. Parsed once
//! where the spec is validated, and again by the router that applies them.

use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
