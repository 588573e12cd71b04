//! A map from dotted field paths (`strategy.rolling.max_surge`, `driver.process.command[2]`)
//! to their positions in the YAML text, and back.
//!
//! serde tells us *where* a deserialization error happened but not *which field*,
//! and validation knows the field but not the line. Walking the parser's events
//! once gives both directions, and lets the raw structs stay plain serde types
//! (which keeps the generated JSON Schema clean).

use serde_saphyr::granit_parser::{Event, Marker, Parser};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Pos {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// One node of the first document: a mapping value or a sequence element.
#[derive(Debug)]
struct Entry {
    path: String,
    /// Where the key is, for mapping values.
    key: Option<Pos>,
    /// Where the value starts.
    start: Pos,
    /// Where the value ends (exclusive).
    end: Pos,
}

impl Entry {
    fn first(&self) -> Pos {
        self.key.unwrap_or(self.start)
    }
}

enum Frame {
    Map {
        path: String,
        entry: Option<usize>,
        pending_key: Option<(String, Pos)>,
    },
    Seq {
        path: String,
        entry: Option<usize>,
        next: usize,
    },
    /// Inside a complex (non-scalar) mapping key, which baton never uses.
    Skip { depth: usize },
}

/// Positions of every field in a YAML document.
#[derive(Debug, Default)]
pub(crate) struct SourceMap {
    entries: Vec<Entry>,
}

pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path one level up: `a.b[2]` -> `a.b` -> `a` -> ``.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    match path.rfind(['.', '[']) {
        Some(i) => Some(&path[..i]),
        None => Some(""),
    }
}

impl SourceMap {
    /// Indexes the first YAML document of `text`. Syntax errors just end the walk:
    /// serde-saphyr reports them with their own position.
    pub(crate) fn build(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut seen_root = false;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let start = Pos::from_marker(span.start);
            let end = Pos::from_marker(span.end);
            match event {
                Event::DocumentEnd => break,
                Event::Scalar(value, ..) => {
                    map.node(
                        &mut stack,
                        &mut seen_root,
                        Some(&value),
                        false,
                        false,
                        start,
                        end,
                    );
                }
                Event::Alias(..) => {
                    map.node(&mut stack, &mut seen_root, None, false, false, start, end);
                }
                Event::MappingStart(..) => {
                    map.node(&mut stack, &mut seen_root, None, true, false, start, end);
                }
                Event::SequenceStart(..) => {
                    map.node(&mut stack, &mut seen_root, None, false, true, start, end);
                }
                Event::MappingEnd | Event::SequenceEnd => map.close(&mut stack, start, end),
                _ => {}
            }
        }
        map
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        stack: &mut Vec<Frame>,
        seen_root: &mut bool,
        scalar: Option<&str>,
        is_map: bool,
        is_seq: bool,
        start: Pos,
        end: Pos,
    ) {
        let is_container = is_map || is_seq;
        // Work out the path of this node, or record it as a key.
        let (path, key) = match stack.last_mut() {
            None => {
                if *seen_root {
                    return;
                }
                *seen_root = true;
                (String::new(), None)
            }
            Some(Frame::Skip { depth }) => {
                if is_container {
                    *depth += 1;
                }
                return;
            }
            Some(Frame::Map {
                path, pending_key, ..
            }) => match pending_key.take() {
                None => {
                    if is_container {
                        // A complex key: skip it and name the value `?`.
                        *pending_key = Some(("?".to_owned(), start));
                        stack.push(Frame::Skip { depth: 1 });
                    } else {
                        *pending_key = Some((scalar.unwrap_or("?").to_owned(), start));
                    }
                    return;
                }
                Some((k, key_pos)) => (join(path, &k), Some(key_pos)),
            },
            Some(Frame::Seq { path, next, .. }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                (p, None)
            }
        };
        self.entries.push(Entry {
            path: path.clone(),
            key,
            start,
            end,
        });
        let entry = Some(self.entries.len() - 1);
        if is_map {
            stack.push(Frame::Map {
                path,
                entry,
                pending_key: None,
            });
        } else if is_seq {
            stack.push(Frame::Seq {
                path,
                entry,
                next: 0,
            });
        }
    }

    fn close(&mut self, stack: &mut Vec<Frame>, _start: Pos, end: Pos) {
        match stack.last_mut() {
            Some(Frame::Skip { depth }) => {
                *depth -= 1;
                if *depth == 0 {
                    stack.pop();
                }
            }
            Some(Frame::Map { entry, .. } | Frame::Seq { entry, .. }) => {
                if let Some(e) = entry.and_then(|i| self.entries.get_mut(i)) {
                    e.end = end;
                }
                stack.pop();
            }
            None => {}
        }
    }

    fn find(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Where the value at `path` starts, or, when the field is absent (it took its
    /// default), where its nearest present ancestor is.
    pub(crate) fn value_pos(&self, path: &str) -> Option<Pos> {
        let mut p = Some(path);
        while let Some(cur) = p {
            if let Some(e) = self.find(cur) {
                return Some(if cur == path { e.start } else { e.first() });
            }
            p = parent(cur);
        }
        None
    }

    /// Where the key of `path` is (its value, for sequence elements), falling back
    /// to the nearest present ancestor.
    pub(crate) fn key_pos(&self, path: &str) -> Option<Pos> {
        let mut p = Some(path);
        while let Some(cur) = p {
            if let Some(e) = self.find(cur) {
                return Some(e.first());
            }
            p = parent(cur);
        }
        None
    }

    /// The path of the innermost node at `pos`: one whose key or value starts there,
    /// else the innermost one whose extent contains it.
    pub(crate) fn path_at(&self, pos: Pos) -> Option<&str> {
        if let Some(e) = self
            .entries
            .iter()
            .rev()
            .find(|e| e.key == Some(pos) || e.start == pos)
        {
            return Some(&e.path);
        }
        self.entries
            .iter()
            .filter(|e| e.first() <= pos && pos < e.end)
            .max_by_key(|e| e.first())
            .map(|e| e.path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: demo
driver:
  process:
    command: [a, b]
    env:
      A: x
strategy: { rolling: { max_surge: 1 } }
";

    #[test]
    fn finds_positions_by_path() {
        let map = SourceMap::build(DOC);
        assert_eq!(map.value_pos("name"), Some(Pos { line: 1, column: 7 }));
        assert_eq!(map.key_pos("driver.process.env.A").map(|p| p.line), Some(6));
        assert_eq!(
            map.value_pos("driver.process.command[1]"),
            Some(Pos {
                line: 4,
                column: 18
            })
        );
        assert_eq!(
            map.value_pos("strategy.rolling.max_surge").map(|p| p.line),
            Some(7)
        );
        // Absent fields fall back to the nearest ancestor.
        assert_eq!(
            map.value_pos("strategy.rolling.min_ready").map(|p| p.line),
            Some(7)
        );
        // ... up to the document itself.
        assert_eq!(
            map.value_pos("readiness.path"),
            Some(Pos { line: 1, column: 1 })
        );
    }

    #[test]
    fn finds_paths_by_position() {
        let map = SourceMap::build(DOC);
        assert_eq!(
            map.path_at(Pos { line: 6, column: 7 }),
            Some("driver.process.env.A")
        );
        assert_eq!(
            map.path_at(Pos {
                line: 6,
                column: 10
            }),
            Some("driver.process.env.A")
        );
        assert_eq!(
            map.path_at(Pos { line: 4, column: 5 }),
            Some("driver.process.command")
        );
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
