//! Placeholders in commands and environment values, and shell-style splitting
//! of a command given as one string.
//!
//! A placeholder is `{` + a name of ASCII letters, digits or `_` + `}`. Any other
//! brace is literal text, so JSON such as `{"a": 1}` in an env value needs no escaping.

/// The values substituted into command and env templates for one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateVars<'a> {
    /// `{version}`: the version being started.
    pub version: &'a str,
    /// `{port}`: the port the instance must listen on.
    pub port: u16,
    /// `{app}`: the app name.
    pub app: &'a str,
    /// `{instance}`: the instance id.
    pub instance: &'a str,
    /// `{baton}`: the path of the running baton binary.
    pub baton: &'a str,
}

/// The placeholder names an instance command or env value may use.
/// `{host}` is the address the instance listens on (127.0.0.1 on this machine, the
/// host's address on a remote host); the launcher supplies it as an extra value.
pub const PLACEHOLDERS: [&str; 6] = ["version", "port", "app", "instance", "baton", "host"];

/// The placeholder names a pre-flight command may use (there is no instance yet).
/// For a container app, `{image}` is the image reference and `{digest}` the digest it
/// resolved to (a vulnerability scanner takes either); both are empty for processes.
pub const PREFLIGHT_PLACEHOLDERS: [&str; 5] = ["version", "app", "baton", "image", "digest"];

/// The placeholder names a container image reference may use.
pub const IMAGE_PLACEHOLDERS: [&str; 2] = ["version", "app"];

/// The placeholder names a smoke test command may use: `{preview_url}` is the
/// base URL that reaches only the new release, without a trailing '/'.
pub const SMOKE_PLACEHOLDERS: [&str; 4] = ["preview_url", "version", "app", "baton"];

/// Replaces `{version}`, `{port}`, `{app}`, `{instance}` and `{baton}` in `template`.
/// Anything else, including unknown placeholders, is copied unchanged (validation
/// has already rejected unknown placeholders in a spec).
pub fn render_template(template: &str, vars: &TemplateVars) -> String {
    render_template_with(template, vars, &[])
}

/// [`render_template`] with more placeholders: each `(name, value)` of `extra`
/// replaces `{name}`, e.g. `&[("preview_url", "http://127.0.0.1:8081")]` for a
/// smoke test command. `extra` comes first, so it may also override a standard one.
pub fn render_template_with(template: &str, vars: &TemplateVars, extra: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some((before, name, after)) = next_placeholder(rest) {
        out.push_str(before);
        if let Some((_, value)) = extra.iter().find(|(n, _)| *n == name) {
            out.push_str(value);
            rest = after;
            continue;
        }
        match name {
            "version" => out.push_str(vars.version),
            "port" => out.push_str(&vars.port.to_string()),
            "app" => out.push_str(vars.app),
            "instance" => out.push_str(vars.instance),
            "baton" => out.push_str(vars.baton),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Names of the placeholders in `template` that are not in `allowed`.
pub(crate) fn unknown_placeholders<'t>(template: &'t str, allowed: &[&str]) -> Vec<&'t str> {
    let mut unknown = Vec::new();
    let mut rest = template;
    while let Some((_, name, after)) = next_placeholder(rest) {
        if !allowed.contains(&name) {
            unknown.push(name);
        }
        rest = after;
    }
    unknown
}

/// Finds the first `{name}` in `text`: returns the text before it, the name, and the text after.
fn next_placeholder(text: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(open) = text[from..].find('{').map(|i| i + from) {
        let after_open = &text[open + 1..];
        let name_len = after_open
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after_open.len());
        if name_len > 0 && after_open[name_len..].starts_with('}') {
            return Some((
                &text[..open],
                &after_open[..name_len],
                &after_open[name_len + 1..],
            ));
        }
        from = open + 1;
    }
    None
}

/// Splits a command line into words the way a POSIX shell would for simple cases:
/// whitespace separates words; single quotes keep everything literally; double
/// quotes group words and honour `\"`, `\\`, `\$` and `` \` ``; outside quotes a
/// backslash escapes the next character. No expansion of any kind.
pub(crate) fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated double quote".to_owned()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("a backslash ends the command".to_owned()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            version: "v2",
            port: 41000,
            app: "demo",
            instance: "demo-3",
            baton: "/usr/bin/baton",
        }
    }

    #[test]
    fn renders_all_placeholders() {
        assert_eq!(
            render_template("{baton} sample --port {port} --version {version}", &vars()),
            "/usr/bin/baton sample --port 41000 --version v2"
        );
        assert_eq!(render_template("{app}/{instance}", &vars()), "demo/demo-3");
    }

    #[test]
    fn leaves_other_braces_alone() {
        assert_eq!(render_template(r#"{"a": 1}"#, &vars()), r#"{"a": 1}"#);
        assert_eq!(render_template("{nope} {", &vars()), "{nope} {");
        assert_eq!(render_template("{{port}}", &vars()), "{41000}");
        assert_eq!(render_template("", &vars()), "");
    }

    #[test]
    fn finds_unknown_placeholders() {
        assert_eq!(
            unknown_placeholders("{port} {prot} {x_1}", &PLACEHOLDERS),
            vec!["prot", "x_1"]
        );
        assert!(unknown_placeholders(r#"{"json": {}} {port}"#, &PLACEHOLDERS).is_empty());
        assert_eq!(
            unknown_placeholders("{preview_url} {port}", &SMOKE_PLACEHOLDERS),
            vec!["port"]
        );
    }

    #[test]
    fn renders_extra_placeholders() {
        assert_eq!(
            render_template_with(
                "{preview_url}/healthz?v={version}&x={nope}",
                &vars(),
                &[("preview_url", "http://127.0.0.1:8081")]
            ),
            "http://127.0.0.1:8081/healthz?v=v2&x={nope}"
        );
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_command(r#"  app --name 'a b' "c \"d\"" e\ f  "#).unwrap(),
            vec!["app", "--name", "a b", r#"c "d""#, "e f"]
        );
        assert_eq!(split_command("''").unwrap(), vec![""]);
        assert!(split_command("").unwrap().is_empty());
        assert!(split_command("app 'oops").is_err());
        assert!(split_command("app \"oops").is_err());
    }
}
