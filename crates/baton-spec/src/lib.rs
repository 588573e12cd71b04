//! baton's app spec: the YAML file that says what to run and how to upgrade it.
//!
//! Reading a spec goes raw YAML structs (`deny_unknown_fields`) -> validation ->
//! typed [`AppSpec`]. Every problem found on the way is a [`SpecError`] naming the
//! file, line, column and dotted field path, with a hint on how to fix it. Nothing
//! here does I/O except [`load_spec`] reading the file.
//!
//! The YAML format is documented by `examples/quickstart.yaml` (rolling),
//! `examples/canary.yaml`, `examples/blue-green.yaml` (with smoke tests,
//! warm-up and upgrade windows) and by the JSON
//! Schema from [`json_schema`] (checked in as `schema/baton-spec.schema.json`).

mod error;
mod jsonpath;
mod locate;
mod model;
mod raw;
mod strategy;
mod template;
mod validate;
mod window;

use std::path::Path;

pub use error::SpecError;
pub use jsonpath::JsonPath;
pub use model::{
    AnalysisSpec, AppSpec, Balance, BlueGreenSpec, BodyCompare, BodyMode, CREDENTIAL_HEADERS,
    CanarySpec, CanaryStep, ContainerDriverSpec, ContainerNetwork, DriverSpec, HeaderMatch,
    HeadersCompare, HooksSpec, HostSpec, HostsSpec, IntOrPercent, MirrorCompare, MirrorRequests,
    MirrorSpec, OnProgressDeadline, OnWindowEnd, PreflightCheck, ProcessDriverSpec, PullPolicy,
    ReadinessSpec, RollingSpec, RouterPlacement, SmokeTest, Spread, StrategySpec, TimeOfDay,
    TrafficSpec, UpgradeWindow, UpgradeWindows, WEBHOOK_EVENTS, WarmupSpec, WebhookFormat,
    WebhookSpec, Weekday,
};
pub use strategy::{StrategyKind, UnknownStrategy};
pub use template::{
    IMAGE_PLACEHOLDERS, PLACEHOLDERS, PREFLIGHT_PLACEHOLDERS, SMOKE_PLACEHOLDERS, TemplateVars,
    render_template, render_template_with,
};
pub use validate::is_valid_version;

use locate::{Pos, SourceMap, join};

/// Parses and validates the spec in `text`; `file_name` only labels errors.
/// Returns the first problem; see [`parse_spec_all`] for all of them.
// The error type is part of the agreed API; its size only matters on the cold
// error path.
#[allow(clippy::result_large_err)]
pub fn parse_spec(file_name: &str, text: &str) -> Result<AppSpec, SpecError> {
    parse_spec_all(file_name, text).map_err(|errors| {
        errors.into_iter().next().unwrap_or_else(|| SpecError {
            file: file_name.to_owned(),
            line: None,
            column: None,
            field: String::new(),
            message: "invalid spec".to_owned(),
            hint: validate::field_hint(""),
        })
    })
}

/// Like [`parse_spec`], but reports every validation problem, in file order of
/// the checks. A YAML syntax or type error stops parsing, so it comes alone.
/// The error list is never empty.
pub fn parse_spec_all(file_name: &str, text: &str) -> Result<AppSpec, Vec<SpecError>> {
    let map = SourceMap::build(text);
    if text.trim().is_empty() {
        return Err(vec![SpecError {
            file: file_name.to_owned(),
            line: None,
            column: None,
            field: String::new(),
            message: "the spec is empty".to_owned(),
            hint: "start from examples/quickstart.yaml".to_owned(),
        }]);
    }
    let spec: raw::AppSpec =
        serde_saphyr::from_str(text).map_err(|e| vec![yaml_error(file_name, &map, &e)])?;
    validate::validate(file_name, &map, spec)
}

/// Reads and parses the spec file at `path`. A file that cannot be read is a
/// [`SpecError`] with no line.
#[allow(clippy::result_large_err)]
pub fn load_spec(path: &Path) -> Result<AppSpec, SpecError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: file.clone(),
        line: None,
        column: None,
        field: String::new(),
        message: format!("cannot read the spec file: {e}"),
        hint: "check the path and that the file is readable UTF-8 text".to_owned(),
    })?;
    parse_spec(&file, &text)
}

/// The JSON Schema (draft 2020-12) of the YAML spec format, for editors and docs.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(raw::AppSpec).to_value()
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (`prot` -> `port`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts a serde-saphyr error (syntax, unknown field, wrong type...) into a
/// [`SpecError`], finding the field from the error's position.
fn yaml_error(file: &str, map: &SourceMap, err: &serde_saphyr::Error) -> SpecError {
    use serde_saphyr::Error as E;

    let pos = err.location().and_then(|l| {
        let line = usize::try_from(l.line()).ok()?;
        let column = usize::try_from(l.column()).ok()?;
        (line > 0).then_some(Pos { line, column })
    });
    let here = pos
        .and_then(|p| map.path_at(p))
        .unwrap_or_default()
        .to_owned();
    let (field, message, hint) = match err.without_snippet() {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let path = if here.ends_with(field.as_str()) {
                here.clone()
            } else {
                join(locate::parent(&here).unwrap_or(""), field)
            };
            let hint = if expected.is_empty() {
                // A map that takes no settings, such as a canary `approval: {}`.
                validate::field_hint(locate::parent(&path).unwrap_or(""))
            } else {
                let mut hint = format!("valid fields here: {}", backticked(expected));
                if let Some(close) = suggest(field, expected) {
                    hint = format!("did you mean `{close}`? {hint}");
                }
                hint
            };
            (path, format!("unknown field `{field}`"), hint)
        }
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let what = if here.starts_with("strategy.canary.steps[") {
                "canary step"
            } else if here.starts_with("hooks.smoke[") {
                "smoke test"
            } else if here.starts_with("strategy") {
                "strategy"
            } else if here.starts_with("driver") {
                "driver"
            } else {
                "choice"
            };
            let path = locate::parent(&here)
                .filter(|_| here.ends_with(variant.as_str()))
                .unwrap_or(&here)
                .to_owned();
            let mut hint = format!("valid choices: {}", backticked(expected));
            if let Some(close) = suggest(variant, expected) {
                hint = format!("did you mean `{close}`? {hint}");
            }
            (path, format!("unknown {what} `{variant}`"), hint)
        }
        E::SerdeMissingField { field, .. } => {
            // serde-saphyr places this error at the end of the mapping, which may be
            // inside another field; the field name tells which mapping it was.
            let parent = match *field {
                "command" => "driver.process",
                _ => "",
            };
            let path = join(parent, field);
            let hint = validate::field_hint(&path);
            let at = map.key_pos(parent).unwrap_or(Pos { line: 1, column: 1 });
            return SpecError {
                file: file.to_owned(),
                line: Some(at.line),
                column: Some(at.column),
                field: path,
                message: format!("missing required field `{field}`"),
                hint,
            };
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            here.clone(),
            format!("expected {expected}, found {unexpected}"),
            validate::field_hint(&here),
        ),
        E::Message { msg, .. }
            if msg.starts_with("only one ") || msg.starts_with("no ") && msg.contains(" given") =>
        {
            // From raw::OneKeyVisitor: about the whole `driver`/`strategy` map, or
            // one canary step or smoke test.
            let path = if msg.contains("canary step") {
                element_path(&here, "strategy.canary.steps").unwrap_or("strategy.canary.steps")
            } else if msg.contains("smoke test") {
                element_path(&here, "hooks.smoke").unwrap_or("hooks.smoke")
            } else if msg.contains("strategy") {
                "strategy"
            } else {
                "driver"
            };
            (path.to_owned(), msg.clone(), validate::field_hint(path))
        }
        other => {
            let mut message = strip_location(&other.to_string());
            if message == "expected mapping start" {
                message = "expected a map (`key: value` lines, or `{ key: value }`)".to_owned();
            }
            let hint = if here.is_empty() {
                "check the YAML syntax: indent with spaces (not tabs), close every quote and \
                 bracket, and put `: ` after each key"
                    .to_owned()
            } else {
                validate::field_hint(&here)
            };
            (here.clone(), message, hint)
        }
    };
    SpecError {
        file: file.to_owned(),
        line: pos.map(|p| p.line),
        column: pos.map(|p| p.column),
        field,
        message,
        hint,
    }
}

/// The element of the list `list` that `path` is in:
/// (`strategy.canary.steps[2].pause.until`, `strategy.canary.steps`) ->
/// `strategy.canary.steps[2]`.
fn element_path<'p>(path: &'p str, list: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(list)?.strip_prefix('[')?;
    let close = rest.find(']')?;
    Some(&path[..list.len() + 1 + close + 1])
}

/// serde-saphyr appends " at line L column C" to some messages; we print the
/// position ourselves.
fn strip_location(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message);
    match first_line.rfind(" at line ") {
        Some(i) => first_line[..i].to_owned(),
        None => first_line.to_owned(),
    }
}

#[cfg(test)]
mod tests;
