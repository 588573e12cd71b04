//! What `baton apply` admits, decided before anything changes: listen
//! addresses no other app uses, a version change the user meant, and the diff
//! shown for it. Pure functions; the control plane gathers their inputs (the
//! other apps' specs, what runs now) and acts on their answers.

use std::net::SocketAddr;

use baton_spec::{AppSpec, StrategySpec};
use serde::Serialize;
use serde_json::Value;

/// The router addresses an app's spec asks for, with the spec field naming each.
pub fn addresses(spec: &AppSpec) -> Vec<(SocketAddr, &'static str)> {
    let mut out = vec![(spec.listen, "listen")];
    if let StrategySpec::BlueGreen(b) = &spec.strategy
        && let Some(preview) = b.preview_listen
    {
        out.push((preview, "strategy.blue_green.preview_listen"));
    }
    out
}

/// Two listen addresses that cannot both be bound: the same port on the same
/// IP, or on any IP when one of them is the wildcard (0.0.0.0 / ::).
/// Port 0 (any free port) never overlaps.
pub fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The first address of `spec` that another app already uses, as a message
/// naming both apps, the address and what to do.
pub fn listen_conflict<'a>(
    spec: &AppSpec,
    file: &str,
    others: impl IntoIterator<Item = &'a AppSpec>,
) -> Option<String> {
    for other in others.into_iter().filter(|o| o.name != spec.name) {
        for (mine, field) in addresses(spec) {
            for (theirs, their_field) in addresses(other) {
                if overlap(mine, theirs) {
                    return Some(format!(
                        "{file}: {field} {mine} of app {} is already used by app {} (its {their_field} {theirs}); \
                         each app needs its own address: change `{field}` in {file} to a free port \
                         (e.g. {}), or remove {} first with `baton delete {}`",
                        spec.name,
                        other.name,
                        SocketAddr::new(mine.ip(), mine.port().wrapping_add(10).max(1)),
                        other.name,
                        other.name,
                    ));
                }
            }
        }
    }
    None
}

/// Compare two versions the way people read them: runs of digits as numbers,
/// the rest as text (`v2` < `v10`, `1.9.0` < `1.10.0`).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let ord = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// Why applying a spec that declares `declared` would start a rollout the
/// user may not expect, given the version running (or being rolled out) now.
/// `None`: no rollout, or an upgrade to a newer version.
pub fn unexpected_version_change(
    app: &str,
    running: Option<&str>,
    declared: Option<&str>,
) -> Option<String> {
    let (running, declared) = (running?, declared?);
    if running == declared {
        return None;
    }
    match compare_versions(declared, running) {
        std::cmp::Ordering::Greater => None,
        _ => Some(format!(
            "the spec declares version {declared} but {app} runs {running}: applying it would \
             downgrade {app} to {declared}. If that is what you want, run apply again with --yes; \
             otherwise set `version:` in the file to {running} (or remove the line) to change \
             only the rest of the spec"
        )),
    }
}

/// One changed field of an app's spec, as `apply` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Change {
    /// Dotted path of the field, such as `strategy.canary.steps` or `listen`.
    pub field: String,
    /// The value before (JSON), `null` when the field is new.
    pub from: Value,
    /// The value after (JSON), `null` when the field is gone.
    pub to: Value,
}

/// The fields that differ between two specs, in field order.
pub fn diff(old: &AppSpec, new: &AppSpec) -> Vec<Change> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff_values("", &a, &b, &mut out);
    out
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ => out.push(Change {
            field: path.to_string(),
            from: a.clone(),
            to: b.clone(),
        }),
    }
}

/// A value of a [`Change`] as one short line of text.
pub fn show(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, listen: &str) -> AppSpec {
        let yaml = format!(
            "name: {name}\nlisten: {listen}\ninstances: 2\ndriver:\n  process:\n    command: [\"sh\"]\nreadiness:\n  path: /healthz\nstrategy:\n  rolling: {{}}\n"
        );
        baton_spec::parse_spec("test.yaml", &yaml).expect("valid spec")
    }

    fn blue_green(name: &str, listen: &str, preview: &str) -> AppSpec {
        let mut s = spec(name, listen);
        let StrategySpec::BlueGreen(mut b) =
            s.strategy_of_kind(baton_spec::StrategyKind::BlueGreen)
        else {
            unreachable!("blue-green is a strategy")
        };
        b.preview_listen = Some(preview.parse().unwrap());
        s.strategy = StrategySpec::BlueGreen(b);
        s
    }

    #[test]
    fn two_apps_on_one_address_conflict_and_the_message_names_both() {
        let demo = spec("demo", "127.0.0.1:8080");
        let shop = spec("shop", "127.0.0.1:8080");
        let msg = listen_conflict(&shop, "shop.yaml", [&demo]).expect("a conflict");
        assert!(msg.contains("127.0.0.1:8080"), "{msg}");
        assert!(
            msg.contains("app shop") && msg.contains("app demo"),
            "{msg}"
        );
        assert!(msg.contains("shop.yaml"), "{msg}");
        // Re-applying an app over itself is no conflict; other ports neither.
        assert_eq!(listen_conflict(&demo, "demo.yaml", [&demo]), None);
        let other = spec("shop", "127.0.0.1:8090");
        assert_eq!(listen_conflict(&other, "shop.yaml", [&demo]), None);
    }

    #[test]
    fn preview_listeners_and_wildcards_count() {
        let demo = spec("demo", "127.0.0.1:8081");
        let shop = blue_green("shop", "127.0.0.1:8082", "127.0.0.1:8081");
        let msg = listen_conflict(&shop, "bg.yaml", [&demo]).expect("a conflict");
        assert!(
            msg.contains("strategy.blue_green.preview_listen 127.0.0.1:8081"),
            "{msg}"
        );
        // The other way round: a new app on another app's preview address.
        let msg = listen_conflict(&demo, "q.yaml", [&shop]).expect("a conflict");
        assert!(
            msg.contains("its strategy.blue_green.preview_listen"),
            "{msg}"
        );
        let any = spec("any", "0.0.0.0:8082");
        assert!(listen_conflict(&any, "a.yaml", [&shop]).is_some());
        assert!(!overlap(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap()
        ));
        assert!(!overlap(
            "127.0.0.1:80".parse().unwrap(),
            "127.0.0.2:80".parse().unwrap()
        ));
    }

    #[test]
    fn versions_compare_as_people_read_them() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("v2", "v10"), Less);
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Greater);
        assert_eq!(compare_versions("v1", "v1"), Equal);
        assert_eq!(compare_versions("v1.2", "v1.2.1"), Less);
        assert_eq!(compare_versions("v01", "v1"), Equal);
    }

    #[test]
    fn a_downgrade_needs_confirmation_an_upgrade_does_not() {
        assert_eq!(
            unexpected_version_change("shop", Some("v4"), Some("v5")),
            None
        );
        assert_eq!(
            unexpected_version_change("shop", Some("v4"), Some("v4")),
            None
        );
        assert_eq!(unexpected_version_change("shop", None, Some("v1")), None);
        assert_eq!(unexpected_version_change("shop", Some("v4"), None), None);
        let msg = unexpected_version_change("shop", Some("v4"), Some("v1")).expect("refused");
        assert!(msg.contains("downgrade shop to v1"), "{msg}");
        assert!(msg.contains("--yes"), "{msg}");
    }

    #[test]
    fn diff_lists_the_changed_fields_only() {
        let a = spec("demo", "127.0.0.1:8080");
        let mut b = a.clone();
        b.listen = "127.0.0.1:9090".parse().unwrap();
        b.instances = 3;
        let changes = diff(&a, &b);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["instances", "listen"]);
        assert_eq!(show(&changes[1].from), "127.0.0.1:8080");
        assert_eq!(show(&changes[1].to), "127.0.0.1:9090");
        assert!(diff(&a, &a).is_empty());
    }
}
