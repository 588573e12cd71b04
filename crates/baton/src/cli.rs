//! Command-line interface. Exit codes: 0 success; 1 the rollout failed or was
//! rolled back (reason printed); 2 bad usage, config or input (nothing changed);
//! 3 the control plane could not be reached.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::api::AppStatus;
use crate::client::{ApiClient, ClientError};
use crate::term::{Color, color_enabled_stderr, paint, write_stdout};

/// Exit code when the control plane cannot be reached.
const EXIT_UNREACHABLE: u8 = 3;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 the rollout failed or was rolled back (the reason is printed); \
2 bad usage, config or input (nothing changed); 3 the control plane could not be reached.";

#[derive(Parser, Debug)]
#[command(
    name = "baton",
    version,
    about = "Upgrade a running service from one version to the next without dropping a request",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// URL of the control plane's API, for the commands that talk to it (each also takes --server).
    #[arg(long, value_name = "URL", env = "BATON_SERVER", default_value = crate::client::DEFAULT_SERVER)]
    server: String,
    #[command(subcommand)]
    command: Cmd,
}

/// `--server` of the commands that talk to the control plane.
#[derive(clap::Args, Debug, Clone, Default)]
struct Server {
    /// URL of the control plane's API [default: BATON_SERVER, else http://127.0.0.1:7077]
    #[arg(long = "server", value_name = "URL")]
    url: Option<String>,
}

/// `baton router SUBCOMMAND`.
#[derive(Subcommand, Debug)]
enum RouterAction {
    /// Replace the router of `baton serve` with this baton binary, without losing a
    /// request: the new router takes over the listening sockets and the routing table,
    /// the old one drains and exits. (`baton serve` also does this by itself when it
    /// starts and finds a router of another build.) Exit 1 if the new router fails;
    /// the running one then serves on.
    Upgrade {
        /// The control plane's data dir (where the router socket is).
        #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
        data_dir: PathBuf,
        /// How long the old router keeps open WebSockets before closing them with 1001
        /// "going away" (e.g. 5s) [default: each app's stream drain grace, 10s].
        #[arg(long, value_parser = parse_duration)]
        drain_grace: Option<Duration>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `baton router --balance`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BalanceArg {
    /// Each upstream in turn.
    RoundRobin,
    /// The upstream with the fewest requests in flight.
    LeastRequests,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the control plane: API, controllers and the router (embedded defaults: SQLite, process driver).
    Serve {
        /// App spec(s) to apply at start.
        #[arg(short = 'c', long = "config")]
        config: Vec<PathBuf>,
        /// Where the database, logs and router socket live.
        #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
        data_dir: PathBuf,
        /// Address of the API. Off loopback, --tls-cert and --tls-key are required.
        #[arg(long, default_value = "127.0.0.1:7077")]
        api: SocketAddr,
        /// Serve the API over TLS with this certificate chain (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Register an app or update its spec (a spec naming a new `version` deploys it).
    Apply {
        /// The app spec (YAML), e.g. examples/quickstart.yaml.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Confirm a version change apply would otherwise refuse (a downgrade).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Check app spec files offline (no server needed): exit 0 when valid, 2 otherwise.
    Lint {
        /// An app spec file; repeat to also check that the apps' addresses differ.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove an app: drain and stop its instances, close its listener; its history stays.
    Delete {
        /// The app to remove.
        app: String,
        #[command(flatten)]
        server: Server,
    },
    /// Start a rollout of VERSION.
    Deploy {
        /// The app, as named in its spec.
        app: String,
        /// The version to roll out (1-64 letters, digits, '.', '_' or '-'), e.g. v2 or 1.4.0.
        version: String,
        /// Environment variable for this release (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Wait for the end, showing progress; exit 1 if it fails or is rolled back.
        #[arg(long)]
        wait: bool,
        /// Start now, even outside the app's upgrade windows.
        #[arg(long)]
        now: bool,
        /// Use this strategy for this rollout instead of the spec's.
        #[arg(long, value_parser = ["rolling", "blue-green", "canary"])]
        strategy: Option<String>,
        /// Refuse the release unless its program (or, for a container app, its image
        /// digest) has this sha256 (pre-flight).
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Run this image for this release (container apps), instead of the spec's
        /// `image` template; it is pinned to its digest like any other.
        #[arg(long, value_name = "REF")]
        image: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Show apps, instances and traffic.
    Status {
        /// Show only this app (default: every app).
        app: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Upgrade history: date, version, environment, operator, result, notes.
    History {
        /// The app, as named in its spec.
        app: String,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with_all = ["csv", "markdown"])]
        json: bool,
        /// Print CSV (RFC 4180), for a spreadsheet.
        #[arg(long, conflicts_with = "markdown")]
        csv: bool,
        /// Print a Markdown table, for a change record or a wiki page.
        #[arg(long)]
        markdown: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Stop the rollout in flight: all traffic back to the stable version.
    Abort {
        /// The app whose rollout to stop.
        app: String,
        /// Why, recorded in the upgrade history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// Move a canary or blue-green rollout past its current pause or gate;
    /// after a blue-green switch, stop keeping the old release ready.
    Promote {
        /// The app whose rollout to move on.
        app: String,
        /// Skip every remaining step (still without dropping requests).
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Hold a rollout where it is.
    Pause {
        /// The app whose rollout to hold.
        app: String,
        #[command(flatten)]
        server: Server,
    },
    /// Continue a paused rollout.
    Resume {
        /// The app whose paused rollout to continue.
        app: String,
        #[command(flatten)]
        server: Server,
    },
    /// Pass an approval gate (recorded with your name).
    Approve {
        /// The app waiting for an approval.
        app: String,
        #[command(flatten)]
        server: Server,
    },
    /// Run the release of the last aborted or rolled-back rollout again.
    Retry {
        /// The app whose last failed release to run again.
        app: String,
        /// Wait for the end, showing progress; exit 1 if it fails or is rolled back.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Return to the previous release (or a given revision) through the app's
    /// strategy; during a rollout, abort it (traffic back to the stable release
    /// at once); right after a blue-green switch, switch back to the old release
    /// while it is still kept ready.
    Rollback {
        /// The app to roll back.
        app: String,
        /// Go back to this revision (see `baton history APP`) instead of the previous release.
        #[arg(long, value_name = "N")]
        to_revision: Option<u32>,
        /// Wait for the end, showing progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Print the steps a rollout of VERSION would take.
    Plan {
        /// The app, as named in its spec.
        app: String,
        /// The version to plan a rollout of.
        version: String,
        /// Plan with this strategy instead of the spec's.
        #[arg(long, value_parser = ["rolling", "blue-green", "canary"])]
        strategy: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// The answers of a mirror step that differed: per path, how many and
    /// what (JSON paths, headers, status, with both values).
    Diff {
        /// The app, as named in its spec.
        app: String,
        /// Print JSON (every kept pair in full).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Create, list and revoke API tokens (admin).
    Token {
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        server: Server,
    },
    /// Check or export the audit log of a data dir (offline: reads the files).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Save a token for this control plane (read from stdin), so later commands use it.
    Login {
        #[command(flatten)]
        server: Server,
    },
    /// Who the token in use is: its name, role and apps.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Record real requests, and replay them against a preview of a new version.
    Mirror {
        #[command(subcommand)]
        action: MirrorAction,
    },
    /// Event log of an app.
    Events {
        /// The app, as named in its spec.
        app: String,
        /// Print JSON (each event's structured fields as an object).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Watch a real upgrade: runs the control plane on embedded defaults, the sample service v1 under steady traffic, and upgrades it to v2.
    Demo {
        /// Instances of the sample service.
        #[arg(long, default_value_t = 3)]
        instances: u32,
    },
    /// Stop every instance, the router and the control plane.
    Down {
        #[command(flatten)]
        server: Server,
    },
    /// The hosts of apps that run on other machines: reachable, node version, instances, routing acknowledged.
    Hosts {
        #[command(subcommand)]
        action: Option<HostsAction>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Run a host's node (baton starts it over SSH on every host of a fleet).
    Node {
        /// The node's directory: its sockets, logs and the owner mark of its instances.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the JSON Schema of the app spec.
    Schema,
    /// Run the sample service (used by the demo and tests): --port N --version V.
    #[command(disable_help_flag = true)]
    Sample {
        /// The sample service's own options (`baton sample --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the router alone as a plain HTTP load balancer.
    ///
    /// To replace a running `baton router` with a new binary without losing a request,
    /// start it with `--handover-socket PATH`, then run the new binary with the same
    /// arguments plus `--take-over`: the new one receives the listening sockets, the old
    /// one stops accepting, drains (WebSockets get `--drain-grace`, then close 1001)
    /// and exits.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Router {
        #[command(subcommand)]
        action: Option<RouterAction>,
        /// Address users connect to, as IP:PORT.
        #[arg(long, required = true)]
        listen: Option<SocketAddr>,
        /// A backend address, as IP:PORT; repeat for more.
        #[arg(long = "upstream", required = true)]
        upstreams: Vec<SocketAddr>,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// Serve Prometheus `/metrics` (and `/v1/windows`) on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// How each request picks an upstream.
        #[arg(long, value_enum, default_value_t = BalanceArg::RoundRobin)]
        balance: BalanceArg,
        /// Unix socket (created with mode 0600) on which this router hands its
        /// listening sockets to a new router started with --take-over.
        #[arg(long, value_name = "PATH")]
        handover_socket: Option<PathBuf>,
        /// Take over from the router serving --handover-socket: use its listening
        /// sockets, then let it drain and exit (it serves on if this one fails first).
        #[arg(long, requires = "handover_socket")]
        take_over: bool,
        /// With --take-over: how long the old router keeps open WebSockets before
        /// closing them with 1001 "going away" (e.g. 5s) [default: 10s].
        #[arg(long, value_parser = parse_duration, requires = "take_over")]
        drain_grace: Option<Duration>,
    },
    /// The router process the control plane starts (internal).
    #[command(name = "__router", hide = true)]
    RouterProcess {
        /// Unix socket the control plane drives the router through.
        #[arg(long)]
        admin_socket: PathBuf,
        /// Take over from the router running on --admin-socket (its sockets and table).
        #[arg(long)]
        take_over: bool,
        /// With --take-over: how long the old router keeps open WebSockets.
        #[arg(long, value_parser = parse_duration, requires = "take_over")]
        drain_grace: Option<Duration>,
    },
    /// Deterministic simulation of the control plane under random faults
    /// (for long runs; the test suite runs 10,000 seeds).
    #[command(name = "__sim", hide = true)]
    Sim {
        /// Replay this one seed and print what it found.
        #[arg(long)]
        seed: Option<u64>,
        /// How many seeds to run, from --from on.
        #[arg(long, default_value_t = 10_000)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Threads to run seeds on (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// `baton hosts ...`.
#[derive(Subcommand, Debug)]
enum HostsAction {
    /// Add a host's SSH key to the spec's known_hosts file, after checking it
    /// presents the key with this fingerprint (offline: no server needed).
    Trust {
        /// The app spec naming the host.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The host, by its name in the spec.
        host: String,
        /// The key's fingerprint as `baton apply` showed it (`SHA256:...`).
        #[arg(long)]
        fingerprint: String,
    },
}

/// `baton audit ...`.
#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Check that no record was edited, deleted, inserted or reordered; exit 1
    /// naming each one that was.
    Verify {
        /// The control plane's data dir.
        #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print every record, one JSON object per line.
    Export {
        /// The control plane's data dir.
        #[arg(long, env = "BATON_DATA_DIR", default_value = ".baton")]
        data_dir: PathBuf,
    },
}

/// `baton token ...`.
#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Create a token; it is printed once (only its hash is kept).
    Create {
        /// Its name: recorded as the operator of everything done with it.
        name: String,
        /// viewer (read), operator (move rollouts) or admin (also apply specs, manage tokens).
        #[arg(long)]
        role: String,
        /// Limit it to this app (repeatable); default: every app.
        #[arg(long = "app", value_name = "APP")]
        apps: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// `baton mirror ...`.
#[derive(Subcommand, Debug)]
enum MirrorAction {
    /// Keep a slice of an app's real requests (credential headers left out) in
    /// a file, one JSON request per line, for `baton mirror replay`.
    Record {
        /// The app, as named in its spec.
        app: String,
        /// Where to write the requests.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Stop after this many requests.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Stop after this long, whatever was caught.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
    /// Send recorded requests to a preview of VERSION (it takes no user
    /// traffic) and to the stable version, and compare the answers as a mirror
    /// step would; exit 1 when more differ than --max-mismatch-rate.
    Replay {
        /// A file written by `baton mirror record`.
        file: PathBuf,
        /// The app whose stable version answers, and whose spec starts the preview.
        #[arg(long, value_name = "APP")]
        against: String,
        /// The version to preview.
        version: String,
        /// Environment variable of the preview, as `deploy --env` gives a release (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Highest share (0 to 1) of differing answers that still passes.
        #[arg(long, default_value_t = 0.0)]
        max_mismatch_rate: f64,
        /// Print JSON (every kept pair in full).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: Server,
    },
}

/// `--env K=V` arguments as a map; the error says which one is wrong.
fn env_vars(env: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for kv in env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!(
                "--env {kv:?} is not KEY=VALUE (e.g. --env LOG_LEVEL=debug)"
            ));
        };
        if k.is_empty() {
            return Err(format!("--env {kv:?} has an empty name"));
        }
        vars.insert(k.to_string(), v.to_string());
    }
    Ok(vars)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 30s, 2m or 1h"))
}

/// Outcome of a command, mapped to the exit code.
enum Exit {
    Ok,
    Failed(String),
    BadInput(String),
    /// The control plane did not answer ([`EXIT_UNREACHABLE`]).
    Unreachable(String),
}

impl From<ClientError> for Exit {
    fn from(e: ClientError) -> Self {
        if e.is_bad_input() {
            Exit::BadInput(e.to_string())
        } else if e.is_unreachable() {
            Exit::Unreachable(e.to_string())
        } else {
            Exit::Failed(e.to_string())
        }
    }
}

impl Cmd {
    /// The `--server` a command takes, if it talks to the control plane.
    fn remote(&self) -> Option<&Server> {
        match self {
            Cmd::Apply { server, .. }
            | Cmd::Deploy { server, .. }
            | Cmd::Abort { server, .. }
            | Cmd::Promote { server, .. }
            | Cmd::Pause { server, .. }
            | Cmd::Resume { server, .. }
            | Cmd::Approve { server, .. }
            | Cmd::Retry { server, .. }
            | Cmd::Rollback { server, .. }
            | Cmd::Delete { server, .. }
            | Cmd::Down { server } => Some(server),
            Cmd::Hosts {
                action: None,
                server,
                ..
            } => Some(server),
            Cmd::Status { server, .. }
            | Cmd::Diff { server, .. }
            | Cmd::Mirror {
                action: MirrorAction::Record { server, .. } | MirrorAction::Replay { server, .. },
            }
            | Cmd::History { server, .. }
            | Cmd::Plan { server, .. }
            | Cmd::Events { server, .. }
            | Cmd::Token { server, .. }
            | Cmd::Login { server }
            | Cmd::Whoami { server, .. } => Some(server),
            Cmd::Serve { .. }
            | Cmd::Demo { .. }
            | Cmd::Schema
            | Cmd::Sample { .. }
            | Cmd::Sim { .. }
            | Cmd::Audit { .. }
            | Cmd::Lint { .. }
            | Cmd::Router { .. }
            | Cmd::Hosts { .. }
            | Cmd::Node { .. }
            | Cmd::RouterProcess { .. } => None,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Sample { args } = &cli.command {
        return baton_sample::run_main(args);
    }
    if let Cmd::Sim {
        seed,
        seeds,
        from,
        threads,
    } = cli.command
    {
        if seed.is_some() {
            // One seed in detail: BATON_LOG=info shows what the controller did.
            init_tracing("off");
        }
        // Each seed builds its own paused runtime: not inside another one.
        return simulate(seed, seeds, from, threads);
    }
    let long_running = matches!(
        cli.command,
        Cmd::Serve { .. }
            | Cmd::RouterProcess { .. }
            | Cmd::Router { action: None, .. }
            | Cmd::Node { .. }
    );
    init_tracing(if long_running { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Exit::Ok => ExitCode::SUCCESS,
        Exit::Failed(msg) => {
            eprintln!("{} {msg}", paint("error:", Color::Red));
            ExitCode::from(1)
        }
        Exit::BadInput(msg) => {
            eprintln!("{} {msg}", paint("error:", Color::Red));
            ExitCode::from(2)
        }
        Exit::Unreachable(msg) => {
            eprintln!("{} {msg}", paint("error:", Color::Red));
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// `baton __sim`: one seed in detail, or many with a summary.
fn simulate(seed: Option<u64>, seeds: u64, from: u64, threads: Option<usize>) -> ExitCode {
    if let Some(seed) = seed {
        // BATON_LOG=info shows the controller's own log of the replay.
        init_tracing("off");
        let r = crate::sim::run_seed(seed);
        println!(
            "seed {seed}: {}\n  {} deploy(s), {} control-plane crash(es), {} instance kill(s), {} s of virtual time, trace {:016x}",
            r.scenario,
            r.deploys,
            r.crashes,
            r.kills,
            r.virtual_ms / 1000,
            r.trace
        );
        for v in &r.violations {
            println!("  violation: {v}");
        }
        return if r.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    let started = std::time::Instant::now();
    let (ran, failures) = crate::sim::run_many(from, seeds, threads);
    println!(
        "{ran} seeds ({from}..{}) in {:.1} s: {} failed",
        from + ran,
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    for r in &failures {
        println!(
            "seed {}: {}\n  first violation: {}\n  replay: {}",
            r.seed,
            r.scenario,
            r.violations.first().map_or("", String::as_str),
            crate::sim::replay_command(r.seed)
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color_enabled_stderr())
        .try_init();
}

async fn run(cli: Cli) -> Exit {
    let server = match cli.command.remote() {
        Some(server) => {
            let url = server.url.clone().unwrap_or_else(|| cli.server.clone());
            if let Err(e) = crate::client::check_server_url(&url) {
                return Exit::BadInput(e);
            }
            url
        }
        None => cli.server.clone(),
    };
    let api = ApiClient::new(&server, crate::client::token_for(&server));
    match cli.command {
        Cmd::Serve {
            config,
            data_dir,
            api: api_addr,
            tls_cert,
            tls_key,
        } => {
            if let Err(e) = lint_quiet(&config) {
                return Exit::BadInput(e);
            }
            let mut specs = Vec::new();
            for path in config {
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        return Exit::BadInput(format!("cannot read {}: {e}", path.display()));
                    }
                };
                let file = path.display().to_string();
                if let Err(e) = baton_spec::parse_spec(&file, &text) {
                    return Exit::BadInput(e.to_string());
                }
                specs.push((file, text));
            }
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
                _ => None,
            };
            match crate::serve::serve(crate::serve::ServeOptions {
                data_dir,
                api: api_addr,
                specs,
                tls,
            })
            .await
            {
                Ok(()) => Exit::Ok,
                // Another control plane holds the data dir: bad usage, nothing changed.
                Err(e) if e.downcast_ref::<crate::lock::DataDirBusy>().is_some() => {
                    Exit::BadInput(format!("{e:#}"))
                }
                Err(e) if e.is::<crate::serve::ApiBindError>() => Exit::BadInput(format!("{e:#}")),
                Err(e) if e.is::<crate::serve::ServeRefused>() => Exit::BadInput(format!("{e:#}")),
                Err(e) => match e.downcast_ref::<crate::server::ApplyError>() {
                    Some(
                        refused @ (crate::server::ApplyError::Refused(_)
                        | crate::server::ApplyError::Downgrade(_)),
                    ) => Exit::BadInput(refused.to_string()),
                    _ => Exit::Failed(format!("{e:#}")),
                },
            }
        }
        Cmd::Apply { file, yes, .. } => apply(&api, file, yes).await,
        Cmd::Lint { files } => lint(&files),
        Cmd::Delete { app, .. } => match api
            .post(&format!("/v1/apps/{app}/delete"), &json!({}))
            .await
        {
            Ok(_) => {
                println!(
                    "{app}: deleted; its instances were drained and stopped (`baton history {app}` still lists its rollouts)"
                );
                Exit::Ok
            }
            Err(e) => e.into(),
        },
        Cmd::Deploy {
            app,
            version,
            env,
            wait,
            now,
            strategy,
            sha256,
            image,
            ..
        } => {
            let vars = match env_vars(&env) {
                Ok(v) => v,
                Err(e) => return Exit::BadInput(e),
            };
            let last_event = last_event_id(&api, &app).await;
            let accepted = match api
                .post(
                    &format!("/v1/apps/{app}/deploy"),
                    &json!({"version": version, "env": vars, "now": now, "strategy": strategy, "sha256": sha256, "image": image}),
                )
                .await
            {
                Ok(v) => v,
                Err(e) => return e.into(),
            };
            report_accepted(&api, &app, &accepted, wait, last_event).await
        }
        Cmd::Rollback {
            app,
            to_revision,
            wait,
            ..
        } => {
            let last_event = last_event_id(&api, &app).await;
            let accepted = match api
                .post(
                    &format!("/v1/apps/{app}/rollback"),
                    &json!({"to_revision": to_revision}),
                )
                .await
            {
                Ok(mut v) => {
                    v["rollback"] = json!(true);
                    v
                }
                Err(e) => return e.into(),
            };
            report_accepted(&api, &app, &accepted, wait, last_event).await
        }
        Cmd::Abort { app, reason, .. } => {
            match api
                .post(&format!("/v1/apps/{app}/abort"), &json!({"reason": reason}))
                .await
            {
                Ok(_) => {
                    println!("{app}: aborted; all traffic is going back to the stable version");
                    Exit::Ok
                }
                Err(e) => e.into(),
            }
        }
        Cmd::Promote { app, full, .. } => {
            let done = if full {
                "promoting fully"
            } else {
                "promoted to the next step"
            };
            simple(&api, &app, "promote", json!({"full": full}), done).await
        }
        Cmd::Pause { app, .. } => simple(&api, &app, "pause", json!({}), "paused").await,
        Cmd::Resume { app, .. } => simple(&api, &app, "resume", json!({}), "resumed").await,
        Cmd::Approve { app, .. } => simple(&api, &app, "approve", json!({}), "approved").await,
        Cmd::Retry { app, wait, .. } => {
            let last_event = last_event_id(&api, &app).await;
            match api.post(&format!("/v1/apps/{app}/retry"), &json!({})).await {
                Ok(accepted) => report_accepted(&api, &app, &accepted, wait, last_event).await,
                Err(e) => e.into(),
            }
        }
        Cmd::Status { app, json, .. } => status(&api, app, json).await,
        Cmd::History {
            app,
            json,
            csv,
            markdown,
            ..
        } => {
            let format = match (json, csv, markdown) {
                (true, _, _) => HistoryFormat::Json,
                (_, true, _) => HistoryFormat::Csv,
                (_, _, true) => HistoryFormat::Markdown,
                _ => HistoryFormat::Table,
            };
            history(&api, &app, format).await
        }
        Cmd::Events { app, json, .. } => events(&api, &app, json).await,
        Cmd::Diff { app, json, .. } => diff(&api, &app, json).await,
        Cmd::Token { action, .. } => token(&api, action).await,
        Cmd::Audit { action } => audit(action),
        Cmd::Login { .. } => login(&server).await,
        Cmd::Whoami { json, .. } => whoami(&api, json).await,
        Cmd::Mirror {
            action:
                MirrorAction::Record {
                    app,
                    to,
                    requests,
                    duration,
                    json,
                    ..
                },
        } => record(&api, &app, &to, requests, duration, json).await,
        Cmd::Mirror {
            action:
                MirrorAction::Replay {
                    file,
                    against,
                    version,
                    env,
                    max_mismatch_rate,
                    json,
                    ..
                },
        } => {
            let env = match env_vars(&env) {
                Ok(v) => v,
                Err(e) => return Exit::BadInput(e),
            };
            replay(
                &api,
                &file,
                &against,
                &version,
                &env,
                max_mismatch_rate,
                json,
            )
            .await
        }
        Cmd::Plan {
            app,
            version,
            strategy,
            json,
            ..
        } => plan(&api, &app, &version, strategy.as_deref(), json).await,
        Cmd::Demo { instances } => match crate::demo::run(instances).await {
            Ok(true) => Exit::Ok,
            Ok(false) => Exit::Failed("the demo upgrade did not succeed (see above)".into()),
            Err(e) => Exit::Failed(format!("{e:#}")),
        },
        Cmd::Down { .. } => match api.post("/v1/down", &json!({})).await {
            Ok(_) => {
                println!("stopping every instance, the router and the control plane");
                Exit::Ok
            }
            Err(e) => e.into(),
        },
        Cmd::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&baton_spec::json_schema()).unwrap_or_default()
            );
            Exit::Ok
        }
        Cmd::Sample { .. } | Cmd::Sim { .. } => Exit::Ok,
        Cmd::Router {
            action:
                Some(RouterAction::Upgrade {
                    data_dir,
                    drain_grace,
                    json,
                }),
            ..
        } => upgrade_router(&data_dir, drain_grace, json).await,
        Cmd::Router {
            action: None,
            listen,
            upstreams,
            workers,
            metrics_listen,
            balance,
            handover_socket,
            take_over,
            drain_grace,
        } => {
            let Some(listen) = listen else {
                return Exit::BadInput("--listen is required".into());
            };
            // Ctrl-C or SIGTERM: drain and exit (and remove the handover socket).
            let shutdown = cancel_on_sigterm();
            let token = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
            });
            let opts = baton_router::StandaloneOptions {
                listen,
                upstreams,
                workers,
                metrics_listen,
                balance: match balance {
                    BalanceArg::RoundRobin => baton_routing::config::Balance::RoundRobin,
                    BalanceArg::LeastRequests => baton_routing::config::Balance::LeastRequests,
                },
                handover_socket,
                take_over,
                drain_grace,
            };
            match baton_router::run_standalone_with(opts, shutdown).await {
                Ok(()) => Exit::Ok,
                Err(e) => Exit::Failed(e.to_string()),
            }
        }
        Cmd::Hosts {
            action:
                Some(HostsAction::Trust {
                    file,
                    host,
                    fingerprint,
                }),
            ..
        } => trust_host(&file, &host, &fingerprint).await,
        Cmd::Hosts { json, .. } => hosts(&api, json).await,
        Cmd::Node { dir } => {
            let shutdown = cancel_on_sigterm();
            let exe = std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "baton".into());
            match crate::node::run(&dir, &exe, shutdown).await {
                Ok(()) => Exit::Ok,
                Err(e) => Exit::Failed(format!("{e:#}")),
            }
        }
        Cmd::RouterProcess {
            admin_socket,
            take_over,
            drain_grace,
        } => {
            let shutdown = cancel_on_sigterm();
            let opts = baton_router::RouterOptions {
                admin_socket,
                take_over,
                drain_grace,
            };
            match baton_router::run(opts, shutdown).await {
                Ok(()) => Exit::Ok,
                Err(e) => Exit::Failed(e.to_string()),
            }
        }
    }
}

/// `baton router upgrade`: replaces the router of the control plane in `data_dir`.
async fn upgrade_router(data_dir: &Path, drain_grace: Option<Duration>, json: bool) -> Exit {
    let exe = match std::env::current_exe() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => return Exit::Failed(format!("cannot tell which binary this is: {e}")),
    };
    let socket = crate::routing::socket_path(data_dir);
    if !socket.exists() {
        return Exit::BadInput(format!(
            "no router socket at {} (is --data-dir that of `baton serve`?)",
            socket.display()
        ));
    }
    match crate::routing::hand_over_router(data_dir, &socket, &exe, drain_grace).await {
        Ok(done) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&done).unwrap_or_default()
                );
            } else {
                println!(
                    "router replaced: pid {} ({}) took over from pid {} ({}) at generation {}; \
                     the old router drains and exits",
                    done.new_pid, done.new_build, done.old_pid, done.old_build, done.generation
                );
            }
            Exit::Ok
        }
        Err(e) => Exit::Failed(format!("{e:#}")),
    }
}

/// A command on a live rollout that answers at once.
async fn simple(api: &ApiClient, app: &str, verb: &str, body: Value, done: &str) -> Exit {
    match api.post(&format!("/v1/apps/{app}/{verb}"), &body).await {
        Ok(answer) => {
            // The server's own words when what happened depends on the state.
            let done = answer["message"].as_str().unwrap_or(done);
            println!("{app}: {done}");
            Exit::Ok
        }
        Err(e) => e.into(),
    }
}

/// Parse every file and check that no two apps share an address. The
/// message of the first problem, or the parsed specs.
fn lint_quiet(files: &[PathBuf]) -> Result<Vec<(String, baton_spec::AppSpec)>, String> {
    let mut specs: Vec<(String, baton_spec::AppSpec)> = Vec::new();
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {file}: {e}"))?;
        let spec = baton_spec::parse_spec(&file, &text).map_err(|e| e.to_string())?;
        if let Some((other, _)) = specs.iter().find(|(_, s)| s.name == spec.name) {
            return Err(format!(
                "{file} and {other} both define app {}; give each app its own name",
                spec.name
            ));
        }
        if let Some(conflict) =
            crate::admission::listen_conflict(&spec, &file, specs.iter().map(|(_, s)| s))
        {
            return Err(conflict);
        }
        specs.push((file, spec));
    }
    Ok(specs)
}

/// `baton lint -f FILE...`: validate offline.
fn lint(files: &[PathBuf]) -> Exit {
    match lint_quiet(files) {
        Ok(specs) => {
            for (file, spec) in specs {
                let addresses: Vec<String> = crate::admission::addresses(&spec)
                    .iter()
                    .map(|(a, _)| a.to_string())
                    .collect();
                println!(
                    "{file}: valid (app {}, {} strategy, {} instances, listen {})",
                    spec.name,
                    spec.strategy.kind(),
                    spec.instances,
                    addresses.join(" + preview ")
                );
            }
            Exit::Ok
        }
        Err(e) => Exit::BadInput(e),
    }
}

async fn apply(api: &ApiClient, file: PathBuf, yes: bool) -> Exit {
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            return Exit::BadInput(format!(
                "cannot read {}: {e}\n  hint: give the path of an app spec, e.g. examples/quickstart.yaml",
                file.display()
            ));
        }
    };
    let name = file.display().to_string();
    // Validate locally first: a bad spec never reaches the server.
    let spec = match baton_spec::parse_spec(&name, &text) {
        Ok(s) => s,
        Err(e) => return Exit::BadInput(e.to_string()),
    };
    match api
        .post("/v1/apps", &json!({"file": name, "yaml": text, "yes": yes}))
        .await
    {
        Ok(v) => {
            let changes: Vec<crate::admission::Change> =
                serde_json::from_value(v["changes"].clone()).unwrap_or_default();
            if v["created"].as_bool() == Some(true) {
                println!("{}: new app, listening on {}", spec.name, spec.listen);
            } else if changes.is_empty() {
                println!("{}: spec unchanged", spec.name);
            } else {
                println!("{}: spec changes:", spec.name);
                for c in &changes {
                    println!(
                        "  {}: {} → {}",
                        c.field,
                        crate::admission::show(&c.from),
                        crate::admission::show(&c.to)
                    );
                }
            }
            match v.get("deployed").filter(|d| !d.is_null()) {
                Some(d) => println!(
                    "{}: applied; deploying {} (revision {})",
                    spec.name,
                    d["version"].as_str().unwrap_or("?"),
                    d["revision"]
                ),
                None => println!("{}: applied", spec.name),
            }
            Exit::Ok
        }
        Err(e) => e.into(),
    }
}

async fn last_event_id(api: &ApiClient, app: &str) -> i64 {
    api.get(&format!("/v1/apps/{app}/events?after=0&limit=10000"))
        .await
        .ok()
        .and_then(|v| {
            v["events"]
                .as_array()
                .and_then(|a| a.last())
                .map(|e| e["id"].as_i64().unwrap_or(0))
        })
        .unwrap_or(0)
}

async fn report_accepted(
    api: &ApiClient,
    app: &str,
    accepted: &Value,
    wait: bool,
    last_event: i64,
) -> Exit {
    if accepted["unchanged"].as_bool() == Some(true) {
        println!(
            "{app} already runs {} (revision {}); nothing to do",
            accepted["version"].as_str().unwrap_or("?"),
            accepted["revision"]
        );
        return Exit::Ok;
    }
    let history_id = accepted["history_id"].as_i64().unwrap_or(0);
    let waits = accepted["waits_for_window"].as_str();
    match accepted["message"].as_str() {
        // `rollback` says what it does (an abort, a switch back, a rollout).
        Some(message) => println!("{app}: {message}"),
        None => println!(
            "{app}: rollout to {} (revision {}) {}",
            accepted["version"].as_str().unwrap_or("?"),
            accepted["revision"],
            if waits.is_some() {
                "scheduled"
            } else {
                "started"
            }
        ),
    }
    if let Some(waits) = waits {
        println!("  {waits}");
    }
    if !wait {
        println!("  follow it with `baton status {app}`");
        return Exit::Ok;
    }
    let rollback = accepted["rollback"].as_bool().unwrap_or(false);
    let version = accepted["version"].as_str().map(str::to_string);
    wait_for_rollout(api, app, history_id, last_event, rollback, version).await
}

/// Follow a rollout to its end, printing each event as it happens.
async fn wait_for_rollout(
    api: &ApiClient,
    app: &str,
    history_id: i64,
    mut last_event: i64,
    rollback: bool,
    accepted_version: Option<String>,
) -> Exit {
    loop {
        if let Ok(v) = api
            .get(&format!("/v1/apps/{app}/events?after={last_event}"))
            .await
        {
            for e in v["events"].as_array().into_iter().flatten() {
                last_event = e["id"].as_i64().unwrap_or(last_event);
                println!(
                    "  {} {:<21} {}",
                    format_time(e["at_ms"].as_i64().unwrap_or(0)),
                    e["kind"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                );
            }
        }
        let status: AppStatus = match api.get(&format!("/v1/apps/{app}")).await {
            Ok(v) => match serde_json::from_value(v) {
                Ok(s) => s,
                Err(e) => return Exit::Failed(format!("unexpected status answer: {e}")),
            },
            Err(e) => return e.into(),
        };
        if let Some(last) = &status.last_result
            && last.history_id == history_id
            && status
                .rollout
                .as_ref()
                .is_none_or(|r| r.history_id != history_id)
        {
            // A rollback that aborted a rollout succeeds when the app is back
            // on the version it asked for.
            let reached = status.stable_version.as_deref() == accepted_version.as_deref();
            return if last.result == "succeeded" || (rollback && reached) {
                println!(
                    "{} {app} now runs {}",
                    paint("✓", Color::Green),
                    last.version
                );
                Exit::Ok
            } else {
                Exit::Failed(format!(
                    "{app}: rollout {}: {}",
                    last.result.replace('_', " "),
                    last.notes
                ))
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn status(api: &ApiClient, app: Option<String>, as_json: bool) -> Exit {
    let statuses: Vec<AppStatus> = match &app {
        Some(app) => match api.get(&format!("/v1/apps/{app}")).await {
            Ok(v) => serde_json::from_value(v).into_iter().collect(),
            Err(e) => return e.into(),
        },
        None => match api.get("/v1/apps").await {
            Ok(v) => serde_json::from_value(v["apps"].clone()).unwrap_or_default(),
            Err(e) => return e.into(),
        },
    };
    if as_json {
        let out = match app {
            Some(_) => serde_json::to_string_pretty(&statuses.first()),
            None => serde_json::to_string_pretty(&statuses),
        };
        println!("{}", out.unwrap_or_default());
        return Exit::Ok;
    }
    if statuses.is_empty() {
        println!("no apps yet; register one with `baton apply -f examples/quickstart.yaml`");
    }
    for s in statuses {
        let traffic: Vec<String> = s
            .traffic
            .iter()
            .map(|t| match t.actual {
                // The set weight next to the share the version really answered.
                Some(actual) => format!("{} {}% (actual {actual:.1}%)", t.version, t.weight),
                None => format!("{} {}%", t.version, t.weight),
            })
            .collect();
        let window = match (
            s.traffic_window_s,
            s.traffic.iter().any(|t| t.actual.is_some()),
        ) {
            (Some(w), true) => format!(
                " over the last {w} s, {} requests",
                s.traffic.iter().filter_map(|t| t.requests).sum::<u64>()
            ),
            _ => String::new(),
        };
        println!(
            "{}  {}  phase={}  stable={}  target={}  listen={}",
            paint(&s.app, Color::Bold),
            s.environment,
            s.phase,
            s.stable_version.as_deref().unwrap_or("-"),
            s.target_version.as_deref().unwrap_or("-"),
            s.listen
        );
        if let Some(why) = &s.not_listening {
            println!("  {} {why}", paint("not listening:", Color::Red));
        }
        if let Some(sw) = &s.hosts_switch {
            match (sw.skew_us, &sw.fallback) {
                (Some(skew), _) => println!(
                    "  last switch: {} hosts within {:.1} ms of each other (two-phase), {}",
                    sw.hosts.len(),
                    skew as f64 / 1000.0,
                    format_date(sw.at_ms)
                ),
                (None, Some(why)) => println!(
                    "  last switch: host by host ({why}), {}",
                    format_date(sw.at_ms)
                ),
                (None, None) => {}
            }
        }
        println!(
            "  traffic: {}{window}",
            if traffic.is_empty() {
                "none".into()
            } else {
                traffic.join(", ")
            }
        );
        if let Some(step) = &s.step {
            println!("  {}", step.text);
        }
        for w in &s.webhooks {
            let problem = w
                .last_error
                .as_ref()
                .filter(|_| w.failed > 0)
                .map(|e| format!(" — last error: {e}"))
                .unwrap_or_default();
            println!(
                "  webhook {}: {} delivered, {} failed, {} waiting{problem}",
                w.name, w.delivered, w.failed, w.pending
            );
        }
        if let Some(m) = &s.mirror {
            println!(
                "  mirror step {} ({} vs {}){}: {} — `baton diff {}` shows the differing pairs",
                m.step,
                m.version,
                m.from.as_deref().unwrap_or("stable"),
                if m.running { "" } else { ", ended" },
                m.counts_text(),
                s.app
            );
            for line in m.path_lines() {
                println!("    {line}");
            }
        }
        if let Some(p) = &s.preview {
            match &p.listen {
                Some(listen) => println!(
                    "  preview: {} at http://{listen}, or on {} with the header {}",
                    p.version, s.listen, p.header
                ),
                None => println!(
                    "  preview: {} on {} with the header {}",
                    p.version, s.listen, p.header
                ),
            }
        }
        if let Some(w) = &s.warm {
            println!(
                "  kept ready: {} ({} instance{}, no traffic) until {} — `baton rollback {}` switches back at once",
                w.version,
                w.ready,
                if w.ready == 1 { "" } else { "s" },
                format_time(w.until_ms),
                s.app
            );
        }
        if let Some(r) = &s.rollout {
            println!(
                "  rollout: {} {} → {} by {}{}",
                r.kind.as_str(),
                r.from_version.as_deref().unwrap_or("nothing"),
                r.to_version,
                r.operator,
                r.reason
                    .as_ref()
                    .map(|x| format!(" — {x}"))
                    .unwrap_or_default()
            );
        }
        if let Some(h) = &s.routing_held {
            println!(
                "  {} the router ({}) has not taken the newest routing table{}{}; nothing is drained until it does",
                paint("holding:", Color::Red),
                h.router,
                h.since_ms
                    .map(|t| format!(" since {}", format_time(t)))
                    .unwrap_or_default(),
                h.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        for i in &s.instances {
            println!("  {}", instance_line(i).trim_end());
        }
        if let Some(l) = &s.last_result {
            println!(
                "  last rollout: {} {}{}",
                l.version,
                l.result,
                if l.notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", l.notes)
                }
            );
        }
    }
    Exit::Ok
}

/// One instance in `status`: id, version, state, address, what runs it, and its
/// CPU and memory once sampled, e.g.
/// `boxes-r2-5  v2  ready  127.0.0.1:41523  container 3f2a9c1b7d4e  cpu 0.02  mem 5.1 MiB / 64 MiB`.
fn instance_line(i: &crate::api::InstanceStatus) -> String {
    let mut line = format!(
        "{:<16} {:<8} {:<9} {:<21} {}",
        i.id,
        i.version,
        i.state,
        i.address.as_deref().unwrap_or("-"),
        i.runs.as_deref().unwrap_or("")
    );
    if let Some(cpu) = i.cpu_cores {
        line.push_str(&format!("  cpu {cpu:.2}"));
    }
    if let Some(mem) = i.memory_bytes {
        line.push_str(&format!("  mem {}", baton_driver::format_bytes(mem)));
        if let Some(limit) = i.memory_limit_bytes {
            line.push_str(&format!(" / {}", baton_driver::format_bytes(limit)));
        }
    }
    if let Some(digest) = &i.image_digest {
        let short = digest.get(..19).unwrap_or(digest);
        line.push_str(&format!("  {short}"));
    }
    line
}

/// How `baton history` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HistoryFormat {
    Table,
    Json,
    Csv,
    Markdown,
}

/// The columns of `baton history`: the fields of an upgrade record (date,
/// version, environment, operator, result, notes) with the approvers.
const HISTORY_COLUMNS: [(&str, Align); 10] = [
    ("rev", Align::Right),
    ("date", Align::Left),
    ("kind", Align::Left),
    ("version", Align::Left),
    ("from", Align::Left),
    ("environment", Align::Left),
    ("operator", Align::Left),
    ("approvers", Align::Left),
    ("result", Align::Left),
    ("notes", Align::Left),
];

/// One history record as the cells of [`HISTORY_COLUMNS`].
fn history_row(h: &Value) -> Vec<String> {
    let approvers: Vec<&str> = h["approvers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    vec![
        cell(&h["revision"]),
        format_date(h["started_ms"].as_i64().unwrap_or(0)),
        cell(&h["kind"]),
        cell(&h["to_version"]),
        h["from_version"].as_str().unwrap_or("-").to_string(),
        cell(&h["environment"]),
        cell(&h["operator"]),
        if approvers.is_empty() {
            "-".into()
        } else {
            approvers.join(", ")
        },
        cell(&h["result"]),
        cell(&h["notes"]),
    ]
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A Markdown table cell: pipes escaped, line breaks as `<br>`.
fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace('\n', "<br>")
}

async fn history(api: &ApiClient, app: &str, format: HistoryFormat) -> Exit {
    let v = match api.get(&format!("/v1/apps/{app}/history")).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let records = v["history"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = HISTORY_COLUMNS.iter().map(|(n, _)| *n).collect();
    match format {
        HistoryFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&records).unwrap_or_default()
            );
        }
        HistoryFormat::Csv => {
            let mut out = names.join(",") + "\r\n";
            for h in &records {
                let row: Vec<String> = history_row(h).iter().map(|c| csv_field(c)).collect();
                out.push_str(&row.join(","));
                out.push_str("\r\n");
            }
            write_stdout(format_args!("{out}"));
        }
        HistoryFormat::Markdown => {
            let mut out = format!("| {} |\n|", names.join(" | "));
            for (_, align) in HISTORY_COLUMNS {
                out.push_str(if align == Align::Right {
                    " ---: |"
                } else {
                    " --- |"
                });
            }
            out.push('\n');
            for h in &records {
                let row: Vec<String> = history_row(h).iter().map(|c| markdown_cell(c)).collect();
                out.push_str(&format!("| {} |\n", row.join(" | ")));
            }
            write_stdout(format_args!("{out}"));
        }
        HistoryFormat::Table => {
            let mut table = Table::new(&HISTORY_COLUMNS);
            for h in &records {
                table.row(history_row(h));
            }
            write_stdout(format_args!("{}", table.render()));
        }
    }
    Exit::Ok
}

/// A token cancelled when the process gets SIGTERM (the long-running
/// internal processes stop cleanly on it).
fn cancel_on_sigterm() -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            token.cancel();
        }
    });
    shutdown
}

/// `baton hosts`: every host of every fleet app.
async fn hosts(api: &ApiClient, as_json: bool) -> Exit {
    let v = match api.get("/v1/hosts").await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Exit::Ok;
    }
    let hosts = v.as_array().cloned().unwrap_or_default();
    if hosts.is_empty() {
        println!("no app runs on other hosts (see `hosts:` in the spec)");
        return Exit::Ok;
    }
    println!(
        "{:<12} {:<18} {:<26} {:<10} {:<10} {:<10} ROUTING",
        "HOST", "ADDRESS", "STATE", "NODE", "PID", "INSTANCES"
    );
    let now = crate::effects::wall_clock_ms();
    for h in &hosts {
        let since = (now - h["since_ms"].as_i64().unwrap_or(now)).max(0) / 1000;
        let state = if h["reachable"].as_bool().unwrap_or(false) {
            paint(&format!("reachable for {since} s"), Color::Green)
        } else {
            paint(&format!("UNREACHABLE for {since} s"), Color::Red)
        };
        let routing = match h.get("router").filter(|r| !r.is_null()) {
            Some(r) => format!(
                "generation {} of {}{}",
                r["acknowledged"],
                r["desired"],
                if r["acknowledged"] == r["desired"] {
                    ""
                } else {
                    " (behind)"
                }
            ),
            None => "-".into(),
        };
        let instances: usize = h["instances"].as_object().map_or(0, |apps| {
            apps.values()
                .filter_map(Value::as_array)
                .map(Vec::len)
                .sum()
        });
        println!(
            "{:<12} {:<18} {:<26} {:<10} {:<10} {:<10} {routing}",
            h["name"].as_str().unwrap_or(""),
            h["address"].as_str().unwrap_or(""),
            state,
            h["node"]["version"].as_str().unwrap_or("-"),
            h["node"]["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or("-".into()),
            instances,
        );
        if let Some(e) = h["last_error"]
            .as_str()
            .filter(|_| !h["reachable"].as_bool().unwrap_or(false))
        {
            println!("  last error: {e}");
        }
    }
    Exit::Ok
}

/// `baton hosts trust -f SPEC HOST --fingerprint FP`.
async fn trust_host(file: &std::path::Path, host: &str, fingerprint: &str) -> Exit {
    let specs = match lint_quiet(&[file.to_path_buf()]) {
        Ok(s) => s,
        Err(e) => return Exit::BadInput(e),
    };
    let Some(hosts) = specs.first().and_then(|(_, s)| s.hosts.clone()) else {
        return Exit::BadInput(format!("{} names no hosts", file.display()));
    };
    let Some(h) = hosts.host(host) else {
        let names: Vec<&str> = hosts.hosts.iter().map(|h| h.name.as_str()).collect();
        return Exit::BadInput(format!(
            "{} names no host {host}; its hosts are {}",
            file.display(),
            names.join(", ")
        ));
    };
    let known_hosts = crate::fleet::ssh::known_hosts_file(&hosts);
    match crate::fleet::ssh::trust(h, &known_hosts, fingerprint).await {
        Ok(()) => {
            println!(
                "trusted {host} ({fingerprint}) in {}",
                known_hosts.display()
            );
            Exit::Ok
        }
        Err(e) => Exit::BadInput(format!("{e:#}")),
    }
}

async fn events(api: &ApiClient, app: &str, as_json: bool) -> Exit {
    let v = match api
        .get(&format!("/v1/apps/{app}/events?after=0&limit=10000"))
        .await
    {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v["events"]).unwrap_or_default()
        );
        return Exit::Ok;
    }
    let events = v["events"].as_array().cloned().unwrap_or_default();
    // The messages start in one column, however long the kinds.
    let width = events
        .iter()
        .map(|e| e["kind"].as_str().map_or(0, |k| k.chars().count()))
        .max()
        .unwrap_or(0);
    for e in &events {
        println!(
            "{} {:<width$} {}",
            format_date(e["at_ms"].as_i64().unwrap_or(0)),
            e["kind"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        );
    }
    Exit::Ok
}

fn audit(action: AuditAction) -> Exit {
    match action {
        AuditAction::Verify { data_dir, json } => {
            let log = data_dir.join("audit.jsonl");
            if !log.exists() {
                return Exit::BadInput(format!(
                    "{} does not exist: give the control plane's data dir with --data-dir",
                    log.display()
                ));
            }
            let v = match crate::audit::verify(&log, &data_dir.join("audit.key")) {
                Ok(v) => v,
                Err(e) => return Exit::BadInput(format!("{e:#}")),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if v.problems.is_empty() {
                println!(
                    "{} intact: {} records, {} signed checkpoints",
                    log.display(),
                    v.records,
                    v.checkpoints
                );
            } else {
                for p in &v.problems {
                    println!("{}:{}: {}", log.display(), p.line, p.message);
                }
            }
            if v.problems.is_empty() {
                Exit::Ok
            } else {
                Exit::Failed(format!(
                    "the audit log was tampered with: {} problem(s)",
                    v.problems.len()
                ))
            }
        }
        AuditAction::Export { data_dir } => {
            let log = data_dir.join("audit.jsonl");
            match std::fs::read_to_string(&log) {
                Ok(text) => {
                    print!("{text}");
                    Exit::Ok
                }
                Err(e) => Exit::BadInput(format!(
                    "cannot read {}: {e}; give the control plane's data dir with --data-dir",
                    log.display()
                )),
            }
        }
    }
}

async fn token(api: &ApiClient, action: TokenAction) -> Exit {
    match action {
        TokenAction::Create {
            name,
            role,
            apps,
            json,
        } => {
            if let Err(e) = crate::auth::Role::parse(&role) {
                return Exit::BadInput(format!("--role: {e}"));
            }
            let v = match api
                .post(
                    "/v1/tokens",
                    &json!({"name": name, "role": role, "apps": apps}),
                )
                .await
            {
                Ok(v) => v,
                Err(e) => return e.into(),
            };
            if json {
                println!("{v}");
            } else {
                println!("{}", v["token"].as_str().unwrap_or_default());
                eprintln!(
                    "token {name} (role {role}{}) created; it is shown only now: keep it secret \
                     and give it to `baton login` or BATON_TOKEN",
                    if apps.is_empty() {
                        String::new()
                    } else {
                        format!(", apps {}", apps.join(", "))
                    }
                );
            }
            Exit::Ok
        }
        TokenAction::List { json } => {
            let v = match api.get("/v1/tokens").await {
                Ok(v) => v,
                Err(e) => return e.into(),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["tokens"]).unwrap_or_default()
                );
                return Exit::Ok;
            }
            let mut t = Table::new(&[
                ("name", Align::Left),
                ("role", Align::Left),
                ("apps", Align::Left),
                ("created", Align::Left),
                ("by", Align::Left),
                ("revoked", Align::Left),
            ]);
            for tok in v["tokens"].as_array().into_iter().flatten() {
                let apps: Vec<&str> = tok["apps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                t.row(vec![
                    tok["name"].as_str().unwrap_or("").into(),
                    tok["role"].as_str().unwrap_or("").into(),
                    if apps.is_empty() {
                        "all".into()
                    } else {
                        apps.join(",")
                    },
                    format_date(tok["created_ms"].as_i64().unwrap_or(0)),
                    tok["created_by"].as_str().unwrap_or("").into(),
                    tok["revoked_ms"]
                        .as_i64()
                        .map(format_date)
                        .unwrap_or_default(),
                ]);
            }
            print!("{}", t.render());
            Exit::Ok
        }
        TokenAction::Revoke { name } => match api.delete(&format!("/v1/tokens/{name}")).await {
            Ok(_) => {
                println!("token {name} revoked");
                Exit::Ok
            }
            Err(e) => e.into(),
        },
    }
}

/// `baton login`: checks the token read from stdin against the server and
/// saves it for that server.
async fn login(server: &str) -> Exit {
    if std::io::stdin().is_terminal() {
        eprint!("token for {server}: ");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        return Exit::BadInput(format!("cannot read the token from stdin: {e}"));
    }
    let token = line.trim().to_string();
    if token.is_empty() {
        return Exit::BadInput(
            "no token given: pipe it in, e.g. `baton login < token.txt`, or paste it".into(),
        );
    }
    let api = ApiClient::new(server, Some(token.clone()));
    let who = match api.get("/v1/whoami").await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    if let Err(e) = crate::client::save_login(server, &token) {
        return Exit::Failed(e);
    }
    println!(
        "logged in to {server} as {} (role {})",
        who["name"].as_str().unwrap_or("?"),
        who["role"].as_str().unwrap_or("?")
    );
    Exit::Ok
}

async fn whoami(api: &ApiClient, as_json: bool) -> Exit {
    let v = match api.get("/v1/whoami").await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    if as_json {
        println!("{v}");
    } else {
        let apps: Vec<&str> = v["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{} (role {}, {})",
            v["name"].as_str().unwrap_or("?"),
            v["role"].as_str().unwrap_or("?"),
            if apps.is_empty() {
                "every app".to_string()
            } else {
                format!("apps {}", apps.join(", "))
            }
        );
    }
    Exit::Ok
}

async fn diff(api: &ApiClient, app: &str, as_json: bool) -> Exit {
    let v = match api.get(&format!("/v1/apps/{app}/mirror")).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Exit::Ok;
    }
    let r: baton_routing::stats::AppMirrorReport = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return Exit::Failed(format!("unexpected answer: {e}")),
    };
    if r.report.total.matches + r.report.total.mismatches == 0 {
        println!(
            "{app}: no mirrored answers compared yet; a canary `mirror` step compares them \
             (`baton mirror replay` does so before a rollout)"
        );
        return Exit::Ok;
    }
    let what = match &r.version {
        Some(v) => format!("mirroring to {v}"),
        None => "mirroring ended".into(),
    };
    println!(
        "{} ({what}, {}): {}",
        paint(app, Color::Bold),
        r.report.session,
        compared_text(&r.report)
    );
    print_mirror_report(&r.report);
    Exit::Ok
}

/// `850 compared, 848 matching, 2 differ (0.2%)`.
fn compared_text(r: &baton_routing::mirror::MirrorReport) -> String {
    let t = r.total;
    let n = t.matches + t.mismatches;
    format!(
        "{n} compared, {} matching, {} differ ({:.1}%)",
        t.matches,
        t.mismatches,
        t.mismatch_rate() * 100.0
    )
}

/// Per path, then the kept differing pairs with what differs in each.
fn print_mirror_report(r: &baton_routing::mirror::MirrorReport) {
    let width = r
        .paths
        .iter()
        .map(|p| p.path.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:<width$}  {:>8}  {:>7}  {:>6}  differs in",
        "PATH", "COMPARED", "DIFFER", "RATE"
    );
    for p in &r.paths {
        let n = p.counts.matches + p.counts.mismatches;
        let fields: Vec<String> = p
            .fields
            .iter()
            .map(|f| format!("{} ({})", f.field, f.count))
            .collect();
        println!(
            "  {:<width$}  {n:>8}  {:>7}  {:>5.1}%  {}",
            p.path,
            p.counts.mismatches,
            p.counts.mismatch_rate() * 100.0,
            fields.join(", ")
        );
    }
    if r.other.matches + r.other.mismatches > 0 {
        println!(
            "  (other paths: {} compared, {} differ)",
            r.other.matches + r.other.mismatches,
            r.other.mismatches
        );
    }
    if r.samples.is_empty() {
        return;
    }
    println!("differing pairs (newest {}):", r.samples.len());
    for s in &r.samples {
        println!(
            "  {} {} {}  status {} vs {}",
            format_time(s.at_ms as i64),
            s.method,
            s.path,
            s.primary.status,
            s.mirror.status
        );
        for reason in &s.reasons {
            println!("      {reason}");
        }
    }
}

async fn record(
    api: &ApiClient,
    app: &str,
    to: &std::path::Path,
    requests: usize,
    duration: Duration,
    as_json: bool,
) -> Exit {
    // Refuse a file that cannot be written before recording anything.
    let mut file = match std::fs::File::create(to) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => return Exit::BadInput(format!("cannot write {}: {e}", to.display())),
    };
    let path = format!("/v1/apps/{app}/mirror/record");
    if let Err(e) = api.post(&path, &json!({ "requests": requests })).await {
        let _ = std::fs::remove_file(to);
        return e.into();
    }
    let started = std::time::Instant::now();
    let progress = std::io::stderr().is_terminal();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = match api.get(&path).await {
            Ok(v) => v,
            Err(e) => return e.into(),
        };
        let caught = v["requests"].as_array().map_or(0, Vec::len);
        let armed = v["armed"].as_bool().unwrap_or(false);
        if progress {
            eprint!(
                "\rrecording {app}: {caught} of {requests} requests, {} s left   ",
                duration.saturating_sub(started.elapsed()).as_secs()
            );
        }
        if !armed || started.elapsed() >= duration {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    let v = match api.delete(&path).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let got: baton_routing::record::RecordingReport = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return Exit::Failed(format!("unexpected answer: {e}")),
    };
    for q in &got.requests {
        let line = serde_json::to_string(q).unwrap_or_default();
        if let Err(e) = writeln!(file, "{line}") {
            return Exit::Failed(format!("cannot write {}: {e}", to.display()));
        }
    }
    if let Err(e) = file.flush() {
        return Exit::Failed(format!("cannot write {}: {e}", to.display()));
    }
    if as_json {
        println!(
            "{}",
            json!({"app": app, "file": to.display().to_string(), "requests": got.requests.len(), "skipped": got.skipped})
        );
    } else {
        println!(
            "recorded {} requests of {app} to {}{}",
            got.requests.len(),
            to.display(),
            if got.skipped > 0 {
                format!(" ({} left out: a body too large or not text)", got.skipped)
            } else {
                String::new()
            }
        );
    }
    Exit::Ok
}

/// The requests of a file written by `baton mirror record`; the error names the
/// line that is wrong.
fn read_recording(
    file: &std::path::Path,
) -> Result<Vec<baton_routing::record::RecordedRequest>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: baton_routing::record::RecordedRequest = serde_json::from_str(line).map_err(|e| {
            format!(
                "{}:{}: not a recorded request ({e}); write the file with `baton mirror record`",
                file.display(),
                i + 1
            )
        })?;
        if !q.uri.starts_with('/') {
            return Err(format!(
                "{}:{}: uri {:?} must start with '/'",
                file.display(),
                i + 1,
                q.uri
            ));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(format!(
            "{} holds no requests; record some with `baton mirror record APP --to {}`",
            file.display(),
            file.display()
        ));
    }
    Ok(out)
}

async fn replay(
    api: &ApiClient,
    file: &std::path::Path,
    app: &str,
    version: &str,
    env: &BTreeMap<String, String>,
    max_mismatch_rate: f64,
    as_json: bool,
) -> Exit {
    if !(0.0..=1.0).contains(&max_mismatch_rate) {
        return Exit::BadInput(format!(
            "--max-mismatch-rate {max_mismatch_rate}: give a fraction from 0 to 1, such as 0.01"
        ));
    }
    let requests = match read_recording(file) {
        Ok(r) => r,
        Err(e) => return Exit::BadInput(e),
    };
    if !as_json && std::io::stderr().is_terminal() {
        eprintln!(
            "starting a preview of {app} {version} and sending it {} recorded requests...",
            requests.len()
        );
    }
    let v = match api
        .post_slow(
            &format!("/v1/apps/{app}/mirror/replay"),
            &json!({ "version": version, "env": env, "requests": requests }),
            Duration::from_secs(600),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let r: crate::replay::ReplayReport = match serde_json::from_value(v.clone()) {
        Ok(r) => r,
        Err(e) => return Exit::Failed(format!("unexpected answer: {e}")),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} {} against {} (stable): {}{}",
            paint(app, Color::Bold),
            r.version,
            r.against,
            compared_text(&r.report),
            if r.skipped > 0 {
                format!("; {} requests left out (methods not mirrored)", r.skipped)
            } else {
                String::new()
            }
        );
        print_mirror_report(&r.report);
    }
    let rate = r.report.total.mismatch_rate();
    if rate > max_mismatch_rate {
        return Exit::Failed(format!(
            "{:.1}% of the answers of {} differ from {}'s (limit {:.1}%)",
            rate * 100.0,
            r.version,
            r.against,
            max_mismatch_rate * 100.0
        ));
    }
    Exit::Ok
}

async fn plan(
    api: &ApiClient,
    app: &str,
    version: &str,
    strategy: Option<&str>,
    as_json: bool,
) -> Exit {
    let strategy = strategy
        .map(|s| format!("&strategy={s}"))
        .unwrap_or_default();
    let v = match api
        .get(&format!("/v1/apps/{app}/plan?version={version}{strategy}"))
        .await
    {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Exit::Ok;
    }
    println!(
        "plan: {app} {} → {version}, {} strategy, {} instances (max_surge {}, max_unavailable {}, min_ready {}ms)",
        v["from_version"].as_str().unwrap_or("nothing"),
        v["strategy"].as_str().unwrap_or("?"),
        v["instances"],
        v["max_surge"],
        v["max_unavailable"],
        v["min_ready_ms"]
    );
    let mut table = Table::new(&[
        ("step", Align::Right),
        ("at", Align::Right),
        ("event", Align::Left),
        ("old live", Align::Right),
        ("new live", Align::Right),
        ("running", Align::Right),
        ("what", Align::Left),
    ]);
    for (n, s) in v["steps"].as_array().into_iter().flatten().enumerate() {
        table.row(vec![
            (n + 1).to_string(),
            format!("{}s", s["at_ms"].as_u64().unwrap_or(0) as f64 / 1000.0),
            cell(&s["kind"]),
            cell(&s["old_routable"]),
            cell(&s["new_routable"]),
            cell(&s["total_instances"]),
            cell(&s["description"]),
        ]);
    }
    write_stdout(format_args!("{}", table.render()));
    println!(
        "peak instances running (old, new and draining): {}; least duration: {:.1}s (plus start-up and drain time of each instance)",
        v["peak_instances"],
        v["min_duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    Exit::Ok
}

/// A JSON value as a table cell: strings without their quotes, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

/// A text table whose columns are as wide as their widest cell, so rows line
/// up under their headers whatever the values. The last column is not padded.
struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&'static str, Align)]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        // One line per cell: a newline inside a value would break the columns.
        let clean = |c: &str| c.replace(['\n', '\r', '\t'], " ");
        let width = |c: &str| c.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|c| clean(c)).collect())
            .collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate().take(widths.len()) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let headers: Vec<String> = self.headers.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for r in std::iter::once(&headers).chain(rows.iter()) {
            let mut line = String::new();
            for (i, (_, align)) in self.headers.iter().enumerate() {
                let c = r.get(i).map_or("", String::as_str);
                let pad = " ".repeat(widths[i].saturating_sub(width(c)));
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(c);
                    }
                    Align::Left if i + 1 == self.headers.len() => line.push_str(c),
                    Align::Left => {
                        line.push_str(c);
                        line.push_str(&pad);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn format_date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replace('T', " ").trim_end_matches('Z').to_string()
}

fn format_time(ms: i64) -> String {
    let d = format_date(ms);
    d.split(' ').nth(1).unwrap_or(&d).to_string()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_and_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "baton", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn server_appears_only_on_commands_that_use_it() {
        let cli = Cli::command();
        let has = |sub: &str, flag: &str| {
            cli.find_subcommand(sub)
                .unwrap_or_else(|| panic!("no command {sub}"))
                .get_arguments()
                .any(|a| a.get_long() == Some(flag))
        };
        for local in ["serve", "demo", "schema", "sample", "router", "__router"] {
            assert!(!has(local, "server"), "{local} --server");
        }
        for read in ["status", "history", "plan", "events"] {
            assert!(has(read, "server"), "{read} --server");
        }
        for write in [
            "apply", "deploy", "abort", "promote", "pause", "resume", "approve", "retry",
            "rollback", "down",
        ] {
            assert!(has(write, "server"), "{write} --server");
        }
        // Given after the command too, and the command's own wins.
        let cli = Cli::try_parse_from([
            "baton",
            "--server",
            "http://a:1",
            "status",
            "--server",
            "http://b:2",
        ])
        .unwrap();
        let server = cli.command.remote().unwrap();
        assert_eq!(server.url.as_deref(), Some("http://b:2"));
    }

    #[test]
    fn history_rows_in_csv_and_markdown() {
        let h = json!({
            "revision": 3, "started_ms": 0, "kind": "deploy", "to_version": "v2",
            "from_version": "v1", "environment": "prod", "operator": "ana",
            "approvers": ["bo", "cy"], "result": "rolled_back",
            "notes": "analysis failed: \"p99\", 5xx | slow\nrolled back"
        });
        let row = history_row(&h);
        assert_eq!(row[7], "bo, cy");
        assert_eq!(
            csv_field(&row[9]),
            "\"analysis failed: \"\"p99\"\", 5xx | slow\nrolled back\""
        );
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(
            markdown_cell(&row[9]),
            "analysis failed: \"p99\", 5xx \\| slow<br>rolled back"
        );
        let none = history_row(&json!({"approvers": []}));
        assert_eq!(none[7], "-");
    }

    #[test]
    fn table_columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&[
            ("rev", Align::Right),
            ("version", Align::Left),
            ("notes", Align::Left),
        ]);
        t.row(vec!["12".into(), "1.4.0-rc.1-long".into(), "a".into()]);
        t.row(vec!["3".into(), "v2".into(), "two\nlines".into()]);
        assert_eq!(
            t.render(),
            "rev  version          notes\n 12  1.4.0-rc.1-long  a\n  3  v2               two lines\n"
        );
    }
}
