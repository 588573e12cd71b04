//! Crash anywhere, end to end: seeded rounds of rollouts of the real binary
//! (rolling, blue-green and canary; good and bad releases) under load, with a
//! `kill -9` of the control plane at a random moment of every round and a restart
//! with the very same command line (`serve -c SPEC...`), plus `kill -9` of random
//! instances. After each round it counts failed requests, lost or duplicated
//! history records, orphaned, duplicated or ghost instances and the other
//! invariant violations of ../shared/DESIGN.md that can be seen from outside.
//!
//! One control plane serves three apps, one per strategy. A round starts one
//! rollout on each of them at once (the last round may have fewer), so the one
//! control-plane kill of the round lands at a different moment of each rollout.
//!
//! ```text
//! cargo test -p baton --test chaos -- --nocapture                 # 10 rollouts
//! BATON_CHAOS_ROLLOUTS=200 BATON_CHAOS_SEED=42 cargo test ...      # a long run (bench/chaos.sh)
//! BATON_CHAOS_SEED=42 BATON_CHAOS_ROUND=17 cargo test ...          # round 17 of seed 42 alone
//! ```
//!
//! The seed fixes every choice (releases, fault knobs, kill moments, victims);
//! real processes on a shared machine do not repeat their timing exactly, so a
//! replay reproduces the scenario, not the exact interleaving.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton::client::ApiClient;
use common::*;
use serde_json::Value;

/// A rollout that has not ended this long after its deploy is a violation.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(180);
/// After a rollout ends, how long the app may take to settle (old instances
/// drained and stopped, processes matching what the control plane knows).
const SETTLE_DEADLINE: Duration = Duration::from_secs(90);

/// splitmix64: small, seedable and good enough to pick scenarios.
struct Rng(u64);

impl Rng {
    /// The generator of one round: a function of the seed and the round only,
    /// so that any round can be replayed alone.
    fn for_round(seed: u64, round: u64) -> Self {
        let mut r = Rng(seed ^ round.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Strategy {
    Rolling,
    BlueGreen,
    Canary,
}

const STRATEGIES: [Strategy; 3] = [Strategy::Rolling, Strategy::BlueGreen, Strategy::Canary];

impl Strategy {
    /// As `status` and `history` name it.
    fn name(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
        }
    }

    fn app(self) -> &'static str {
        match self {
            Strategy::Rolling => "roll",
            Strategy::BlueGreen => "bg",
            Strategy::Canary => "canary",
        }
    }

    fn instances(self) -> u32 {
        match self {
            Strategy::Rolling => 3,
            Strategy::BlueGreen | Strategy::Canary => 2,
        }
    }

    /// The YAML under `strategy:`. Short steps so a round takes seconds; a
    /// `min_ready` longer than the crashing release lives, so that it never
    /// counts as available; `max_restarts` above the instance kills of a round,
    /// so that a good release is not rolled back because of them.
    fn yaml(self) -> &'static str {
        match self {
            Strategy::Rolling => {
                "  rolling:\n    max_surge: 1\n    max_unavailable: 0\n    min_ready: 1s\n    progress_deadline: 10s\n    max_restarts: 3"
            }
            Strategy::BlueGreen => {
                "  blue_green:\n    auto_promote_after: 1s\n    scale_down_delay: 1s\n    min_ready: 1s\n    progress_deadline: 10s\n    max_restarts: 3"
            }
            Strategy::Canary => {
                "  canary:\n    steps:\n      - set_weight: 25\n      - pause: { duration: 4s }\n      - set_weight: 50\n      - pause: { duration: 3s }\n    min_ready: 1s\n    progress_deadline: 10s\n    max_restarts: 3"
            }
        }
    }

    /// Top-level YAML after the strategy: the spec's own version, and for the
    /// canary an analysis that judges error rate and p99 latency.
    fn extra(self) -> &'static str {
        match self {
            Strategy::Canary => {
                "version: v1\nanalysis:\n  interval: 500ms\n  window: 3s\n  min_requests: 10\n  failure_limit: 2\n  max_error_rate: 0.1\n  max_p99: 250ms"
            }
            Strategy::Rolling | Strategy::BlueGreen => "version: v1",
        }
    }
}

/// What a release does, through the sample service's fault knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Good,
    /// `/healthz` answers 503: the progress deadline rolls it back.
    NeverReady,
    /// Exits 600 ms after start, before `min_ready`: max_restarts rolls it back.
    Crashes,
    /// Half of its answers are 500: the canary analysis rolls it back.
    Errors,
    /// 500 ms per answer: the canary analysis (p99) rolls it back.
    Slow,
}

impl Release {
    fn pick(rng: &mut Rng, strategy: Strategy) -> Self {
        if rng.percent(50) {
            return Release::Good;
        }
        // Error rate and latency are judged by analysis, which only the canary
        // gives time to: a rolling or blue-green rollout may end before it judges.
        let bad: &[Release] = match strategy {
            Strategy::Canary => &[
                Release::NeverReady,
                Release::Crashes,
                Release::Errors,
                Release::Slow,
            ],
            Strategy::Rolling | Strategy::BlueGreen => &[Release::NeverReady, Release::Crashes],
        };
        bad[rng.below(bad.len() as u64) as usize]
    }

    fn env(self) -> Option<&'static str> {
        match self {
            Release::Good => None,
            Release::NeverReady => Some("SAMPLE_NEVER_READY=1"),
            Release::Crashes => Some("SAMPLE_CRASH_AFTER_MS=600"),
            Release::Errors => Some("SAMPLE_ERROR_RATE=0.5"),
            Release::Slow => Some("SAMPLE_LATENCY_MS=500"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Release::Good => "good",
            Release::NeverReady => "never-ready",
            Release::Crashes => "crashes",
            Release::Errors => "errors",
            Release::Slow => "slow",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Release::Good => "succeeded",
            _ => "rolled_back",
        }
    }
}

/// One fault of a round, at a moment counted from the last deploy of the round.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 the control plane, leave it dead for `down`, start it again
    /// with the same command line.
    KillControlPlane { down: Duration },
    /// kill -9 one running instance, chosen by `pick`, of an app that has not
    /// lost one yet this round: every app keeps a ready instance (killing all of
    /// them would fail requests legitimately).
    KillInstance { pick: u64 },
}

/// Every random choice of a round.
#[derive(Debug)]
struct RoundPlan {
    rollouts: Vec<(Strategy, Release)>,
    faults: Vec<(Duration, Fault)>,
    /// Kill the control plane this long after the `baton deploy` of rollout
    /// `.0` starts, racing with its acceptance.
    deploy_race: Option<(usize, Duration)>,
}

impl RoundPlan {
    fn new(seed: u64, round: u64, rollouts: usize) -> Self {
        let mut rng = Rng::for_round(seed, round);
        // Which strategies take part when fewer than three rollouts are left.
        let mut order = STRATEGIES.to_vec();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut chosen: Vec<Strategy> = order.into_iter().take(rollouts).collect();
        chosen.sort();
        let rollouts: Vec<_> = chosen
            .into_iter()
            .map(|s| (s, Release::pick(&mut rng, s)))
            .collect();
        // The control plane dies once per round at a random moment of the
        // rollouts (they take about 3 to 12 s), sometimes a second time soon
        // after its restart, while it resumes.
        let first = rng.millis(0, 7_000);
        let down = rng.millis(0, 1_500);
        let mut faults = vec![(first, Fault::KillControlPlane { down })];
        if rng.percent(25) {
            let again = first + down + rng.millis(0, 2_000);
            faults.push((
                again,
                Fault::KillControlPlane {
                    down: rng.millis(0, 500),
                },
            ));
        }
        for _ in 0..rng.below(3) {
            let at = rng.millis(0, 9_000);
            faults.push((at, Fault::KillInstance { pick: rng.next() }));
        }
        faults.sort_by_key(|(at, _)| *at);
        let n = rollouts.len() as u64;
        let deploy_race = rng
            .percent(20)
            .then(|| (rng.below(n) as usize, rng.millis(0, 120)));
        RoundPlan {
            rollouts,
            faults,
            deploy_race,
        }
    }
}

/// One app under test and what is expected of it.
struct App {
    strategy: Strategy,
    listen: SocketAddr,
    /// The version serving users now, and what kind of release it is.
    stable: String,
    stable_release: Release,
    /// Versions deployed with SAMPLE_ERROR_RATE: their own 500s are expected.
    erroring: BTreeSet<String>,
    /// Versions deployed so far, v1 included (each must have one history record).
    deployed: Vec<String>,
    /// History problems already counted (so that a lasting one counts once).
    reported: BTreeSet<String>,
}

/// One rollout of a round.
struct Rollout {
    strategy: Strategy,
    release: Release,
    version: String,
    /// The version that was stable when it started.
    from: String,
    deployed_at: Instant,
    /// `baton deploy` answered that it was accepted (not so when the control
    /// plane was killed under it and recorded it all the same).
    acknowledged: bool,
}

#[derive(Default)]
struct Totals {
    rounds: u64,
    rollouts: u64,
    /// (strategy, result) -> count; result `unfinished` past the deadline.
    outcomes: BTreeMap<(Strategy, String), u64>,
    /// Results other than the one the release should have.
    unexpected: Vec<String>,
    requests: u64,
    failed: u64,
    /// 500s answered by a release deployed with SAMPLE_ERROR_RATE (its own
    /// answers, which the router must pass on): expected, not failures.
    injected: u64,
    lost_records: u64,
    duplicated_records: u64,
    orphans: u64,
    duplicated_instances: u64,
    ghosts: u64,
    control_plane_kills: u64,
    /// Deploys the control plane was killed under before it recorded them.
    deploys_lost_to_kill: u64,
    instance_kills: u64,
    /// Samples of a status with fewer ready instances taking traffic than the app
    /// runs (counted once per app and round).
    capacity_dips: u64,
    /// ERROR lines of the control plane's log (the first few kept).
    errors_logged: u64,
    error_samples: Vec<String>,
    /// Good releases deployed (without faults) after a bad one succeeded, so
    /// that the next rounds start from a good stable version.
    repairs: u64,
    violations: Vec<String>,
    longest_rollout: Duration,
}

struct Chaos {
    h: Harness,
    rt: tokio::runtime::Runtime,
    api: ApiClient,
    apps: Vec<App>,
    seed: u64,
    totals: Totals,
    /// The apps of the round under way.
    round_apps: Vec<Strategy>,
    /// Apps that lost an instance to a kill this round.
    spared: BTreeSet<String>,
    /// Apps whose capacity dip this round is already counted.
    dipped: BTreeSet<Strategy>,
    /// How much of serve.log has been read.
    log_read: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng(nanos ^ u64::from(std::process::id()) << 32).next() % 1_000_000_000
}

impl Chaos {
    fn start(seed: u64) -> Self {
        let mut h = Harness::without_server();
        let mut apps = Vec::new();
        for s in STRATEGIES {
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let spec = h.write_spec_on(s.app(), listen, s.instances(), s.yaml(), s.extra());
            h.serve_args
                .extend(["-c".to_string(), path_str(&spec).to_string()]);
            apps.push(App {
                strategy: s,
                listen,
                stable: "v1".into(),
                stable_release: Release::Good,
                erroring: BTreeSet::new(),
                deployed: vec!["v1".into()],
                reported: BTreeSet::new(),
            });
        }
        h.start_server();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let api = ApiClient::new(&h.server_url(), Some(h.token()));
        let chaos = Chaos {
            h,
            rt,
            api,
            apps,
            seed,
            totals: Totals::default(),
            round_apps: Vec::new(),
            spared: BTreeSet::new(),
            dipped: BTreeSet::new(),
            log_read: 0,
        };
        for i in 0..chaos.apps.len() {
            let app = chaos.apps[i].strategy.app();
            let n = chaos.apps[i].strategy.instances() as usize;
            wait_until(
                "v1 of every app to be deployed from -c",
                Duration::from_secs(120),
                || {
                    chaos.status(app).is_some_and(|s| {
                        s["phase"] == "stable"
                            && s["stable_version"] == "v1"
                            && ready_of(&s, "v1") == n
                    })
                },
            );
        }
        chaos
    }

    fn status(&self, app: &str) -> Option<Value> {
        self.rt
            .block_on(self.api.get(&format!("/v1/apps/{app}")))
            .ok()
    }

    fn history(&self, app: &str) -> Option<Vec<Value>> {
        let v = self
            .rt
            .block_on(self.api.get(&format!("/v1/apps/{app}/history")))
            .ok()?;
        v["history"].as_array().cloned()
    }

    fn violation(&mut self, round: u64, what: String) {
        let line = format!("round {round}: {what}");
        eprintln!("VIOLATION {line}");
        self.totals.violations.push(line);
    }

    /// kill -9 the control plane, pause, and start it with the same command line.
    fn kill_control_plane(&mut self, round: u64, down: Duration) {
        if self.h.server_exited() {
            self.violation(round, "the control plane had exited by itself".into());
        }
        self.h.kill9_server();
        self.totals.control_plane_kills += 1;
        // The random time the control plane stays dead is part of the fault.
        std::thread::sleep(down);
        self.h.start_server();
    }

    /// Run `baton deploy` while the control plane is killed `delay` after it
    /// starts; then start the control plane again with the same command line.
    fn deploy_racing_a_kill(&mut self, args: &[&str], delay: Duration) -> std::process::Output {
        let pid = self.h.server_pid().expect("the control plane runs");
        let killer = std::thread::spawn(move || {
            // The random moment of the kill is the point of the test.
            std::thread::sleep(delay);
            kill9(pid);
        });
        let out = self.h.cli(args);
        killer.join().expect("the killer thread");
        self.h.kill9_server();
        self.totals.control_plane_kills += 1;
        self.h.start_server();
        out
    }

    /// kill -9 one running instance of an app that has not lost one this round;
    /// returns its id.
    fn kill_instance(&mut self, pick: u64) -> Option<String> {
        let spared = &self.spared;
        let app_of = |id: &str| id.rsplit_once("-r").map(|(a, _)| a.to_string());
        let running: Vec<(String, u32)> = instance_pids_by_id(&self.h)
            .into_iter()
            .filter(|(id, _)| app_of(id).is_some_and(|a| !spared.contains(&a)))
            .collect();
        if running.is_empty() {
            return None;
        }
        let (id, pid) = running[(pick % running.len() as u64) as usize].clone();
        kill9(pid);
        self.spared.extend(app_of(&id));
        self.totals.instance_kills += 1;
        Some(id)
    }

    fn app(&self, s: Strategy) -> &App {
        self.apps
            .iter()
            .find(|a| a.strategy == s)
            .expect("one app per strategy")
    }

    fn app_mut(&mut self, s: Strategy) -> &mut App {
        self.apps
            .iter_mut()
            .find(|a| a.strategy == s)
            .expect("one app per strategy")
    }

    fn run_round(&mut self, round: u64, rollouts: usize) {
        let plan = RoundPlan::new(self.seed, round, rollouts);
        let started = Instant::now();
        // Bounded, paced load on every app of the round, from before its deploy
        // until it has settled.
        let loads: Vec<_> = plan
            .rollouts
            .iter()
            .map(|&(s, _)| {
                let mut cfg = LoadConfig::new(self.app(s).listen);
                // Enough requests reach a canary at 25%, even a slow one, for
                // the analysis to judge it within a step.
                cfg.keepalive_workers = if s == Strategy::Canary { 6 } else { 3 };
                cfg.fresh_workers = 1;
                cfg.pace = Duration::from_millis(10);
                cfg.max_requests = 1_000_000;
                cfg.max_duration = ROLLOUT_DEADLINE + SETTLE_DEADLINE + Duration::from_secs(120);
                (s, self.rt.block_on(async { loadgen::start(cfg) }))
            })
            .collect();
        for (_, load) in &loads {
            assert!(
                self.rt
                    .block_on(load.wait_for_requests(50, Duration::from_secs(30))),
                "load did not get going (seed {}, round {round})",
                self.seed
            );
        }

        let mut runs: Vec<Rollout> = Vec::new();
        let mut fault_log = Vec::new();
        for (i, &(s, release)) in plan.rollouts.iter().enumerate() {
            let version = format!("v{}", self.app(s).deployed.len() + 1);
            let mut args = vec!["deploy", s.app(), version.as_str()];
            if let Some(env) = release.env() {
                args.extend(["--env", env]);
            }
            let race = plan.deploy_race.filter(|(r, _)| *r == i).map(|(_, d)| d);
            let out = match race {
                None => self.h.cli(&args),
                Some(delay) => {
                    let out = self.deploy_racing_a_kill(&args, delay);
                    fault_log.push(format!(
                        "serve killed {}ms into the deploy of {} ({})",
                        delay.as_millis(),
                        s.app(),
                        if out.status.success() {
                            "acknowledged"
                        } else {
                            "not acknowledged"
                        }
                    ));
                    out
                }
            };
            if !out.status.success() && race.is_some() {
                // Killed before it answered: the deploy may or may not have been
                // accepted. If the restarted control plane has its record, it
                // must see it through like any other.
                let recorded = self
                    .history(s.app())
                    .is_some_and(|rows| rows.iter().any(|r| r["to_version"] == version.as_str()));
                if !recorded {
                    self.totals.deploys_lost_to_kill += 1;
                    continue;
                }
            } else if !out.status.success() {
                let msg = format!(
                    "{} {version}: deploy refused ({:?}): {}",
                    s.app(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                self.violation(round, msg);
                continue;
            }
            let app = self.app_mut(s);
            app.deployed.push(version.clone());
            if release == Release::Errors {
                app.erroring.insert(version.clone());
            }
            runs.push(Rollout {
                strategy: s,
                release,
                from: app.stable.clone(),
                version,
                deployed_at: Instant::now(),
                acknowledged: out.status.success(),
            });
        }

        let t0 = Instant::now();
        self.round_apps = runs.iter().map(|r| r.strategy).collect();
        self.spared.clear();
        self.dipped.clear();
        for &(at, fault) in &plan.faults {
            // The random moment of a kill is the point of the test; capacity is
            // sampled while it comes.
            while let Some(wait) = at.checked_sub(t0.elapsed()) {
                self.sample_capacity(round);
                std::thread::sleep(wait.min(Duration::from_millis(200)));
            }
            let when = t0.elapsed().as_secs_f64();
            match fault {
                Fault::KillControlPlane { down } => {
                    self.kill_control_plane(round, down);
                    fault_log.push(format!(
                        "serve killed at {when:.1}s (down {:.1}s)",
                        down.as_secs_f64()
                    ));
                }
                Fault::KillInstance { pick } => {
                    if let Some(id) = self.kill_instance(pick) {
                        fault_log.push(format!("{id} killed at {when:.1}s"));
                    }
                }
            }
        }

        // Every rollout ends within its deadline, with the result its release calls for.
        let mut line = format!("round {round}:");
        for run in &runs {
            let app = run.strategy.app();
            let result = self.wait_for_end(round, app, &run.version, run.deployed_at);
            let took = run.deployed_at.elapsed();
            self.totals.longest_rollout = self.totals.longest_rollout.max(took);
            self.totals.rollouts += 1;
            let (result, notes) = result.unwrap_or_else(|| ("unfinished".into(), String::new()));
            *self
                .totals
                .outcomes
                .entry((run.strategy, result.clone()))
                .or_default() += 1;
            let _ = write!(
                line,
                " {app} {} {} {result} ({:.1}s);",
                run.version,
                run.release.name(),
                took.as_secs_f64()
            );
            if result == "unfinished" {
                let status = self.status(app).unwrap_or_default();
                self.violation(
                    round,
                    format!(
                        "{app} {}: the rollout did not end within {ROLLOUT_DEADLINE:?}; status: {status}",
                        run.version
                    ),
                );
                self.unstick(app);
            } else if result == "interrupted" && run.acknowledged {
                // Invariant 5: what the control plane acknowledged is on disk.
                self.violation(
                    round,
                    format!(
                        "{app} {}: an acknowledged deploy ended `interrupted` (never started)",
                        run.version
                    ),
                );
            } else if result != run.release.expected() && result != "interrupted" {
                self.totals.unexpected.push(format!(
                    "round {round}: {app} {} ({} release) ended {result}, expected {}: {notes}",
                    run.version,
                    run.release.name(),
                    run.release.expected()
                ));
            }
            if result == "succeeded" {
                let app = self.app_mut(run.strategy);
                app.stable = run.version.clone();
                app.stable_release = run.release;
            }
        }
        // Then each app settles: the stable version at full capacity, exactly the
        // instances the control plane knows running, one record per rollout.
        for run in &runs {
            self.settle(round, run.strategy);
            self.check_history(round, run.strategy);
        }
        self.check_processes(round);
        self.scan_log(round);

        // What the users saw.
        let mut requests = 0;
        let mut failed = 0;
        for (strategy, load) in loads {
            let report = self.rt.block_on(load.finish());
            let app = strategy.app();
            // An app whose deploy was lost to a kill kept its stable version.
            let stable = self.app(strategy).stable.clone();
            let (version, from, release) = runs
                .iter()
                .find(|r| r.strategy == strategy)
                .map_or((stable.clone(), stable, Release::Good), |r| {
                    (r.version.clone(), r.from.clone(), r.release)
                });
            requests += report.requests;
            let erroring = &self.app(strategy).erroring;
            let injected = |kind: &str| {
                kind.strip_prefix("HTTP 500 Internal Server Error from ")
                    .is_some_and(|v| erroring.contains(v))
            };
            let mut real = 0;
            let mut injected_here = 0;
            for (kind, n) in &report.failure_kinds {
                if injected(kind) {
                    injected_here += n;
                } else {
                    real += n;
                }
            }
            self.totals.injected += injected_here;
            failed += real;
            if real > 0 {
                self.violation(
                    round,
                    format!(
                        "{app} {}: {real} of {} requests failed: {:?}; first: {:?}",
                        version, report.requests, report.failure_kinds, report.failure_samples
                    ),
                );
            }
            // Routing: users are answered by the version that was stable and the
            // new one only, and never by a release that was never ready.
            for (v, n) in &report.by_version {
                let allowed = (*v == from || *v == version)
                    && !(release == Release::NeverReady && *v == version);
                if !allowed {
                    self.violation(
                        round,
                        format!(
                            "{app} {} ({} release, from {}): {n} requests answered by {v}",
                            version,
                            release.name(),
                            from
                        ),
                    );
                }
            }
        }
        self.totals.requests += requests;
        self.totals.failed += failed;
        self.totals.rounds += 1;
        // A bad release that got through: replace it with a good one, without
        // faults, so that the next rounds start from a good stable version.
        for run in &runs {
            if self.app(run.strategy).stable_release != Release::Good {
                self.repair(round, run.strategy);
            }
        }
        eprintln!(
            "{line} {}; {requests} requests, {failed} failed; {:.1}s",
            if fault_log.is_empty() {
                "no fault".to_string()
            } else {
                fault_log.join(", ")
            },
            started.elapsed().as_secs_f64()
        );
    }

    /// Deploy a good release (no fault) and wait for it.
    fn repair(&mut self, round: u64, s: Strategy) {
        let app = s.app();
        let version = format!("v{}", self.app(s).deployed.len() + 1);
        self.app_mut(s).deployed.push(version.clone());
        self.totals.repairs += 1;
        let out = self.h.cli(&["deploy", app, &version, "--wait"]);
        if !out.status.success() {
            self.violation(
                round,
                format!(
                    "{app} {version}: the repair deploy (good, no fault) failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            return;
        }
        let a = self.app_mut(s);
        a.stable = version;
        a.stable_release = Release::Good;
        self.settle(round, s);
        self.check_history(round, s);
    }

    /// The rollout to `version` has ended (its history record is final): its result.
    fn wait_for_end(
        &mut self,
        round: u64,
        app: &str,
        version: &str,
        since: Instant,
    ) -> Option<(String, String)> {
        while since.elapsed() < ROLLOUT_DEADLINE {
            self.sample_capacity(round);
            if let Some(s) = self.status(app)
                && s["rollout"].is_null()
                && let Some(rows) = self.history(app)
                && let Some(row) = rows.iter().find(|r| r["to_version"] == version)
                && row["result"] != "in_progress"
            {
                return Some((
                    row["result"].as_str().unwrap_or_default().to_string(),
                    row["notes"].as_str().unwrap_or_default().to_string(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Capacity (invariant 1) as the control plane reports it: the versions that
    /// take traffic have at least `instances` ready instances between them (every
    /// strategy here allows none unavailable). An app that lost an instance to a
    /// kill this round is not judged.
    fn sample_capacity(&mut self, round: u64) {
        for s in self.round_apps.clone() {
            if self.spared.contains(s.app()) || self.dipped.contains(&s) {
                continue;
            }
            let Some(st) = self.status(s.app()) else {
                continue;
            };
            let taking: Vec<&str> = st["traffic"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["weight"].as_u64().is_some_and(|w| w > 0))
                .filter_map(|t| t["version"].as_str())
                .collect();
            let ready = st["instances"].as_array().map_or(0, |a| {
                a.iter()
                    .filter(|i| {
                        i["ready"] == true
                            && i["version"].as_str().is_some_and(|v| taking.contains(&v))
                    })
                    .count()
            });
            let n = s.instances() as usize;
            if ready < n && !st["traffic"].as_array().is_none_or(|t| t.is_empty()) {
                self.dipped.insert(s);
                self.totals.capacity_dips += 1;
                self.violation(
                    round,
                    format!(
                        "{}: capacity {ready} < {n}: ready instances of {taking:?}; status: {st}",
                        s.app()
                    ),
                );
            }
        }
    }

    /// A rollout past its deadline: abort it so the run can go on, or stop the run.
    fn unstick(&self, app: &str) {
        let _ = self
            .h
            .cli(&["abort", app, "--reason", "chaos: past its deadline"]);
        let ended = (0..300).any(|_| {
            let done = self.status(app).is_some_and(|s| s["rollout"].is_null());
            if !done {
                std::thread::sleep(Duration::from_millis(200));
            }
            done
        });
        assert!(
            ended,
            "{app}: a rollout past its deadline does not end even when aborted (seed {}); serve.log:\n{}",
            self.seed,
            self.h.serve_log_tail()
        );
    }

    /// Wait until the app runs its stable version at full capacity and the
    /// processes of its instances are exactly those the control plane knows;
    /// past the deadline, count what differs.
    fn settle(&mut self, round: u64, s: Strategy) {
        let app = s.app();
        let n = s.instances() as usize;
        let expected = self.app(s).stable.clone();
        let prefix = format!("{app}-r");
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let (mut known, mut running, mut last) = (Vec::new(), Vec::new(), Value::Null);
        loop {
            if let Some(st) = self.status(app) {
                known = st["instances"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i["id"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                known.sort();
                running = self
                    .h
                    .instance_ids_running()
                    .into_iter()
                    .filter(|id| id.starts_with(&prefix))
                    .collect();
                let settled = st["phase"] == "stable"
                    && st["stable_version"] == expected.as_str()
                    && ready_of(&st, &expected) == n
                    && known.len() == n
                    && running == known;
                last = st;
                if settled {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let orphans: Vec<&String> =
                    running.iter().filter(|id| !known.contains(id)).collect();
                let ghosts: Vec<&String> =
                    known.iter().filter(|id| !running.contains(id)).collect();
                let mut seen = BTreeSet::new();
                let dups: Vec<&String> = running.iter().filter(|id| !seen.insert(*id)).collect();
                self.totals.orphans += orphans.len() as u64;
                self.totals.ghosts += ghosts.len() as u64;
                self.totals.duplicated_instances += dups.len() as u64;
                self.violation(
                    round,
                    format!(
                        "{app}: not settled on {expected} x{n} within {SETTLE_DEADLINE:?}: orphans {orphans:?}, ghosts {ghosts:?}, duplicated {dups:?}; status: {last}"
                    ),
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Rollback (or promotion) is complete: every new request goes to the stable version.
        let listen = self.app(s).listen;
        let erroring = self.app(s).erroring.contains(&expected);
        for _ in 0..20 {
            let got = get_version(listen);
            if got.1 != expected || (got.0 != 200 && !(erroring && got.0 == 500)) {
                self.violation(
                    round,
                    format!("{app}: settled on {expected}, yet a request got {got:?}"),
                );
                break;
            }
        }
    }

    /// Each rollout of the app has exactly one history record, final, with the
    /// app's strategy; a problem is counted once, in the round it shows.
    fn check_history(&mut self, round: u64, s: Strategy) {
        let app = s.app();
        let Some(rows) = self.history(app) else {
            self.violation(round, format!("{app}: history unavailable"));
            return;
        };
        let deployed = self.app(s).deployed.clone();
        let mut problems = Vec::new();
        for v in &deployed {
            let records: Vec<&Value> = rows.iter().filter(|r| r["to_version"] == *v).collect();
            match records.len() {
                0 => problems.push((format!("lost {v}"), 1, 0)),
                1 => {}
                k => problems.push((format!("duplicated {v} x{k}"), 0, k as u64 - 1)),
            }
            for r in records {
                if r["result"] == "in_progress" {
                    problems.push((format!("{v} still in_progress after the end: {r}"), 0, 0));
                }
                if v != "v1" && r["strategy"] != s.name() {
                    problems.push((
                        format!("{v} recorded with strategy {}", r["strategy"]),
                        0,
                        0,
                    ));
                }
            }
        }
        for r in &rows {
            let v = r["to_version"].as_str().unwrap_or_default();
            if !deployed.iter().any(|d| d == v) {
                problems.push((format!("a record of {v}, never deployed: {r}"), 0, 1));
            }
        }
        for (what, lost, dup) in problems {
            if self.app_mut(s).reported.insert(what.clone()) {
                self.totals.lost_records += lost;
                self.totals.duplicated_records += dup;
                self.violation(round, format!("{app} history: {what}"));
            }
        }
    }

    /// What the control plane logged since the last look: a panic is a
    /// violation; ERROR lines are counted and the first few kept.
    fn scan_log(&mut self, round: u64) {
        let log = std::fs::read(self.h.dir.join("serve.log")).unwrap_or_default();
        let new =
            String::from_utf8_lossy(log.get(self.log_read..).unwrap_or_default()).into_owned();
        self.log_read = log.len();
        for line in new.lines() {
            if line.contains("panicked") {
                self.violation(round, format!("the control plane panicked: {line}"));
            } else if line.contains(" ERROR ") {
                self.totals.errors_logged += 1;
                if self.totals.error_samples.len() < 5 {
                    self.totals
                        .error_samples
                        .push(format!("round {round}: {line}"));
                }
            }
        }
    }

    /// One router, the control plane still up, and no instance of an unknown app.
    fn check_processes(&mut self, round: u64) {
        let routers = self.h.router_pids();
        if routers.len() != 1 {
            self.violation(
                round,
                format!("{} router processes: {routers:?}", routers.len()),
            );
        }
        if self.h.server_exited() {
            self.violation(round, "the control plane exited by itself".into());
            self.h.start_server();
        }
        let strays: Vec<String> = self
            .h
            .instance_ids_running()
            .into_iter()
            .filter(|id| {
                !STRATEGIES
                    .iter()
                    .any(|s| id.starts_with(&format!("{}-r", s.app())))
            })
            .collect();
        if !strays.is_empty() {
            self.totals.orphans += strays.len() as u64;
            self.violation(round, format!("instances of no app: {strays:?}"));
        }
    }

    fn table(&self, elapsed: Duration, replay: &str) -> String {
        let t = &self.totals;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "baton chaos: seed {}, {} rollouts in {} rounds",
            self.seed, t.rollouts, t.rounds
        );
        // `interrupted`: the control plane was killed during `baton deploy`,
        // before it answered, and closed the record on its restart.
        let results = [
            "succeeded",
            "rolled_back",
            "aborted",
            "interrupted",
            "unfinished",
        ];
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>12} {:>8} {:>12} {:>11} {:>6}",
            "strategy", "succeeded", "rolled_back", "aborted", "interrupted", "unfinished", "total"
        );
        for s in STRATEGIES {
            let count = |r: &str| t.outcomes.get(&(s, r.to_string())).copied().unwrap_or(0);
            let total: u64 = t
                .outcomes
                .iter()
                .filter(|((st, _), _)| *st == s)
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                out,
                "{:<12} {:>10} {:>12} {:>8} {:>12} {:>11} {:>6}",
                s.name(),
                count(results[0]),
                count(results[1]),
                count(results[2]),
                count(results[3]),
                count(results[4]),
                total
            );
        }
        let rows: [(&str, String); 18] = [
            ("requests", t.requests.to_string()),
            ("failed requests", t.failed.to_string()),
            (
                "  (not counted: 500s of SAMPLE_ERROR_RATE releases)",
                t.injected.to_string(),
            ),
            ("lost history records", t.lost_records.to_string()),
            (
                "duplicated history records",
                t.duplicated_records.to_string(),
            ),
            ("orphaned instances", t.orphans.to_string()),
            ("duplicated instances", t.duplicated_instances.to_string()),
            ("ghost instances (known, not running)", t.ghosts.to_string()),
            ("unexpected results", t.unexpected.len().to_string()),
            ("invariant violations", t.violations.len().to_string()),
            (
                "ERROR lines in the control plane's log",
                t.errors_logged.to_string(),
            ),
            ("control-plane kill -9", t.control_plane_kills.to_string()),
            (
                "  of them during a deploy, which it never recorded",
                t.deploys_lost_to_kill.to_string(),
            ),
            ("capacity dips (app-rounds)", t.capacity_dips.to_string()),
            ("instance kill -9", t.instance_kills.to_string()),
            (
                "repair deploys after a bad release got through",
                t.repairs.to_string(),
            ),
            (
                "longest rollout",
                format!("{:.1} s", t.longest_rollout.as_secs_f64()),
            ),
            ("elapsed", format!("{:.0} s", elapsed.as_secs_f64())),
        ];
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<52} {v:>12}");
        }
        for u in &t.unexpected {
            let _ = writeln!(out, "unexpected: {u}");
        }
        for e in &t.error_samples {
            let _ = writeln!(out, "logged: {e}");
        }
        for v in &t.violations {
            let _ = writeln!(out, "violation: {v}");
        }
        let _ = write!(out, "replay: {replay}");
        out
    }
}

/// Ready instances of `version` in a status.
fn ready_of(status: &Value, version: &str) -> usize {
    status["instances"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|i| i["version"] == version && i["ready"] == true)
            .count()
    })
}

/// The short run of the suite; `BATON_CHAOS_ROLLOUTS` makes it the long run
/// (bench/chaos.sh), `BATON_CHAOS_SEED` fixes the seed, `BATON_CHAOS_ROUND`
/// replays one round of it, `BATON_CHAOS_SUMMARY` also writes the table there.
#[test]
fn rollouts_end_cleanly_whatever_is_killed_when() {
    let seed = env_u64("BATON_CHAOS_SEED").unwrap_or_else(random_seed);
    let rollouts = env_u64("BATON_CHAOS_ROLLOUTS").unwrap_or(10).max(1);
    let only_round = env_u64("BATON_CHAOS_ROUND");
    let profile = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    let replay = |round: Option<u64>| {
        let round = round.map_or(String::new(), |r| format!(" BATON_CHAOS_ROUND={r}"));
        format!(
            "BATON_CHAOS_SEED={seed} BATON_CHAOS_ROLLOUTS={rollouts}{round} cargo test{profile} -p baton --test chaos -- --nocapture"
        )
    };
    eprintln!(
        "chaos: seed {seed}, {rollouts} rollouts; replay: {}",
        replay(only_round)
    );
    let started = Instant::now();
    let mut chaos = Chaos::start(seed);
    let rounds = rollouts.div_ceil(3);
    for round in 0..rounds {
        if only_round.is_some_and(|r| r != round) {
            continue;
        }
        let n = (rollouts - round * 3).min(3) as usize;
        chaos.run_round(round, n);
    }
    let table = chaos.table(started.elapsed(), &replay(only_round));
    println!("{table}");
    if let Ok(path) = std::env::var("BATON_CHAOS_SUMMARY") {
        let _ = std::fs::write(path, format!("{table}\n"));
    }
    let t = &chaos.totals;
    if !t.violations.is_empty() {
        let first_round = t.violations[0]
            .strip_prefix("round ")
            .and_then(|r| r.split(':').next())
            .and_then(|r| r.parse().ok());
        panic!(
            "{} invariant violations (seed {seed}); the first:\n  {}\nreplay its round: {}\nreplay the run: {}",
            t.violations.len(),
            t.violations[0],
            replay(first_round),
            replay(None)
        );
    }
}
