//! Command-line and environment options of the sample service.
//!
//! Parsed by hand (no clap) so that the `baton` binary can expose the sample as
//! its `baton sample ...` subcommand by passing its remaining arguments through.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Usage text printed for `--help` and after an argument error.
pub const USAGE: &str = "\
usage: baton-sample [--host ADDR] [--port N] [--version V]

  --host ADDR    IP address to listen on (default 127.0.0.1)
  --port N       port to listen on (default: $PORT, else 8080)
  --version V    version to report (default: $SAMPLE_VERSION, else \"dev\")

fault knobs (environment):
  SAMPLE_ERROR_RATE=F      fraction 0..=1 of `GET /` and `POST /echo` answered 500
  SAMPLE_LATENCY_MS=N      delay added to `GET /` and `POST /echo`
  SAMPLE_STARTUP_MS=N      wait before listening
  SAMPLE_NEVER_READY=1     `GET /healthz` answers 503
  SAMPLE_CRASH_AFTER_MS=N  exit with code 1 this long after start
  SAMPLE_LEAK_MB_PER_S=N   allocate and keep N MB more memory every second
  SAMPLE_SHAPE=S           shape of the `/items` answers: `standard` (default),
                           `renamed` (each item's `price` is called `cost`) or
                           `changed` (`GET /items/2` answers another price)";

/// Everything the sample service needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Version reported in `X-Version` and in `GET /`.
    pub version: String,
    /// Faults to inject.
    pub knobs: FaultKnobs,
}

/// Faults the sample service can be told to show, so every failure mode of an
/// upgrade can be demonstrated for real. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultKnobs {
    /// Fraction, 0..=1, of application requests answered with 500.
    pub error_rate: f64,
    /// Delay added to each application request.
    pub latency: Duration,
    /// Wait before starting to listen (a slow start).
    pub startup: Duration,
    /// `GET /healthz` always answers 503.
    pub never_ready: bool,
    /// Exit abruptly with code 1 this long after start.
    pub crash_after: Option<Duration>,
    /// Memory allocated, touched and kept each second, in MB.
    pub leak_mb_per_s: u64,
    /// The shape of the `/items` answers, so that a release whose answers
    /// change can be shown failing a mirror step.
    pub shape: Shape,
}

/// The shape of the `/items` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// `{"id", "name", "price"}` per item.
    #[default]
    Standard,
    /// Each item's `price` is called `cost`: every `/items` answer differs.
    Renamed,
    /// `GET /items/2` answers another price; every other answer is standard.
    Changed,
}

/// Reads an environment variable; `None` when unset or empty. A value that is
/// not UTF-8 is passed on lossily, so that parsing it fails with a message.
fn env_lookup(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn millis(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<Duration>, String> {
    match non_empty(get(name)) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| format!("{name}={v:?}: expected a whole number of milliseconds")),
    }
}

impl FaultKnobs {
    /// Reads the `SAMPLE_*` variables of the process environment.
    /// A bad value is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(&env_lookup)
    }

    /// Like [`FaultKnobs::from_env`], reading variables through `get` (for tests
    /// and embedding without touching the process environment).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let error_rate = match non_empty(get("SAMPLE_ERROR_RATE")) {
            None => 0.0,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => rate,
                _ => {
                    return Err(format!(
                        "SAMPLE_ERROR_RATE={v:?}: expected a fraction from 0 to 1, such as 0.05"
                    ));
                }
            },
        };
        let never_ready = match non_empty(get("SAMPLE_NEVER_READY"))
            .as_deref()
            .map(str::trim)
        {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(v) => return Err(format!("SAMPLE_NEVER_READY={v:?}: expected 1 or 0")),
        };
        let leak_mb_per_s = match non_empty(get("SAMPLE_LEAK_MB_PER_S")) {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|mb| *mb <= 1 << 20)
                .ok_or_else(|| {
                    format!(
                        "SAMPLE_LEAK_MB_PER_S={v:?}: expected a whole number of MB, at most 1048576"
                    )
                })?,
        };
        let shape = match non_empty(get("SAMPLE_SHAPE")).as_deref().map(str::trim) {
            None | Some("standard") => Shape::Standard,
            Some("renamed") => Shape::Renamed,
            Some("changed") => Shape::Changed,
            Some(v) => {
                return Err(format!(
                    "SAMPLE_SHAPE={v:?}: expected standard, renamed or changed"
                ));
            }
        };
        Ok(FaultKnobs {
            shape,
            error_rate,
            latency: millis(get, "SAMPLE_LATENCY_MS")?.unwrap_or_default(),
            startup: millis(get, "SAMPLE_STARTUP_MS")?.unwrap_or_default(),
            never_ready,
            crash_after: millis(get, "SAMPLE_CRASH_AFTER_MS")?,
            leak_mb_per_s,
        })
    }
}

fn parse_host(host: &str) -> Result<IpAddr, String> {
    if host == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse()
        .map_err(|_| format!("--host {host:?}: expected an IP address such as 127.0.0.1 or ::1"))
}

fn parse_port(what: &str, port: &str) -> Result<u16, String> {
    port.trim()
        .parse()
        .map_err(|_| format!("{what} {port:?}: expected a port number from 0 to 65535"))
}

impl SampleOptions {
    /// Parses `--host ADDR`, `--port N` and `--version V` (also `--port=N`),
    /// falling back to `$PORT` and `$SAMPLE_VERSION`, and reads the fault knobs
    /// from the environment. `args` excludes the program name.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        Self::from_args_and_lookup(args, &env_lookup)
    }

    /// Like [`SampleOptions::from_args`], reading variables through `get`.
    pub fn from_args_and_lookup(
        args: &[String],
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut host = None;
        let mut port = None;
        let mut version = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (arg.as_str(), None),
            };
            let slot = match flag {
                "--host" => &mut host,
                "--port" => &mut port,
                "--version" => &mut version,
                other => return Err(format!("unknown argument {other:?}")),
            };
            let value = match inline {
                Some(v) => v,
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))?,
            };
            *slot = Some(value);
        }

        let ip = match host {
            Some(h) => parse_host(&h)?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let port = match (port, non_empty(get("PORT"))) {
            (Some(p), _) => parse_port("--port", &p)?,
            (None, Some(p)) => parse_port("PORT", &p)?,
            (None, None) => 8080,
        };
        let version = version
            .or_else(|| non_empty(get("SAMPLE_VERSION")))
            .unwrap_or_else(|| "dev".to_owned());
        if version.is_empty() || version.contains(|c: char| c.is_control()) {
            return Err(format!("--version {version:?}: expected printable text"));
        }
        Ok(SampleOptions {
            listen: SocketAddr::new(ip, port),
            version,
            knobs: FaultKnobs::from_lookup(get)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults() {
        let o = SampleOptions::from_args_and_lookup(&[], &env(&[])).unwrap();
        assert_eq!(o.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(o.version, "dev");
        assert_eq!(o.knobs, FaultKnobs::default());
    }

    #[test]
    fn flags_win_over_env() {
        let e = env(&[("PORT", "9000"), ("SAMPLE_VERSION", "v9")]);
        let o = SampleOptions::from_args_and_lookup(&[], &e).unwrap();
        assert_eq!((o.listen.port(), o.version.as_str()), (9000, "v9"));
        let a = args(&["--port", "7000", "--version=v2", "--host", "::1"]);
        let o = SampleOptions::from_args_and_lookup(&a, &e).unwrap();
        assert_eq!(o.listen, "[::1]:7000".parse().unwrap());
        assert_eq!(o.version, "v2");
    }

    #[test]
    fn bad_args() {
        let e = env(&[]);
        for (bad, needle) in [
            (&["--port"][..], "needs a value"),
            (&["--port", "http"][..], "--port"),
            (&["--port", "70000"][..], "--port"),
            (&["--host", "example.com"][..], "--host"),
            (&["--verbose"][..], "unknown argument"),
            (&["--version", ""][..], "--version"),
        ] {
            let err = SampleOptions::from_args_and_lookup(&args(bad), &e).unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        let err = SampleOptions::from_args_and_lookup(&[], &env(&[("PORT", "x")])).unwrap_err();
        assert!(err.contains("PORT"), "{err}");
    }

    #[test]
    fn knobs_from_env() {
        let k = FaultKnobs::from_lookup(&env(&[
            ("SAMPLE_ERROR_RATE", "0.25"),
            ("SAMPLE_LATENCY_MS", "15"),
            ("SAMPLE_STARTUP_MS", "2000"),
            ("SAMPLE_NEVER_READY", "1"),
            ("SAMPLE_CRASH_AFTER_MS", "5000"),
            ("SAMPLE_LEAK_MB_PER_S", "8"),
            ("SAMPLE_SHAPE", "renamed"),
        ]))
        .unwrap();
        assert_eq!(
            k,
            FaultKnobs {
                error_rate: 0.25,
                latency: Duration::from_millis(15),
                startup: Duration::from_secs(2),
                never_ready: true,
                crash_after: Some(Duration::from_secs(5)),
                leak_mb_per_s: 8,
                shape: Shape::Renamed,
            }
        );
        // Empty means unset.
        let k = FaultKnobs::from_lookup(&env(&[("SAMPLE_ERROR_RATE", "")])).unwrap();
        assert_eq!(k.error_rate, 0.0);
    }

    #[test]
    fn bad_knobs_name_the_variable() {
        for (name, value) in [
            ("SAMPLE_ERROR_RATE", "1.5"),
            ("SAMPLE_ERROR_RATE", "NaN"),
            ("SAMPLE_ERROR_RATE", "often"),
            ("SAMPLE_LATENCY_MS", "-1"),
            ("SAMPLE_STARTUP_MS", "1s"),
            ("SAMPLE_NEVER_READY", "yes please"),
            ("SAMPLE_CRASH_AFTER_MS", "soon"),
            ("SAMPLE_LEAK_MB_PER_S", "lots"),
        ] {
            let err = FaultKnobs::from_lookup(&env(&[(name, value)])).unwrap_err();
            assert!(err.starts_with(name), "{name}={value}: {err}");
        }
    }
}
