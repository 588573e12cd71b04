#!/usr/bin/env bash
# Containers through baton against containers by hand, on a private Podman.
#
#   bench/containers.sh             # 5 runs per N = 1 4 8, then 50 containers idle 30 s
#                                   # (about 4 minutes on 2 cores)
#   RUNS=3 bench/containers.sh      # fewer runs
#   COUNTS="1 4" MANY=20 IDLE=10 bench/containers.sh
#   MANY=0 bench/containers.sh      # deploy-to-ready only
#   COUNTS= bench/containers.sh     # resources only
#   KEEP_LOGS=/tmp/bench-logs BATON_LOG=info,bollard=debug bench/containers.sh
#                                   # keep serve's and Podman's logs, the event log of
#                                   # each app and the raw results (JSON) there
#
# 1. Deploy-to-ready of N containers of the sample service (N = 1, 4, 8), timed
#    from the start of `baton deploy APP VERSION` to the instant the control plane
#    recorded the last new container ready (the newest `instance_ready` event of
#    the rollout; events carry the controller's clock). Strategy: rolling with
#    max_surge N (every new container at once), max_unavailable 0, min_ready 0s;
#    readiness GET /healthz every 100 ms. Each run times three things in a row:
#    - reference: N `podman run -d` at once on the same Podman service (same image,
#      memory limit, read-only root, a port published on 127.0.0.1), with one
#      poller per container asking its /healthz every 100 ms, until all answered
#      200; no container of baton's runs meanwhile (the polling baton does of its
#      own containers is part of what is measured);
#    - first: `baton deploy APP v1` of a just-applied app (no old containers);
#    - upgrade: `baton deploy APP v2` replacing those N running containers (the
#      case the issue asks about); then the app is deleted for the next run.
#    Run 0 is a warm-up. Reported: medians, and the median and range (min-max) of
#    each run's own ratio baton/reference; then where the time goes: the rollout's
#    start, the last container created and started through the Docker API, the
#    first and last ready (from the event log; for the reference, when every
#    `podman run -d` had returned).
# 2. Resources. An app of MANY containers (32 MiB each, readiness at the spec's
#    default interval) is deployed; once stable, the RSS (VmRSS, and the peak
#    VmHWM) of `baton serve` and of its router process is read from /proc, and
#    their CPU (utime + stime) over IDLE seconds of idle management, as % of one
#    core; also the Podman service's, whose API load baton's polling causes: it is
#    measured again over IDLE seconds with `baton serve` stopped (containers and
#    router keep running) to show what is baton's doing.
#
# Everything runs in a temporary directory: a `podman system service` with its own
# storage, containers.conf and bridge network (as the tests run it, see
# DEVELOPERS.md), images built from the local baton-sample binary with
# scripts/sample-image.sh (nothing is pulled), and `baton serve` on a free API
# port. All of it is removed on exit. Release binaries from
# ${CARGO_TARGET_DIR:-target}/release, built when missing. Traffic on loopback only.
set -euo pipefail

RUNS=${RUNS:-5}
COUNTS=${COUNTS-1 4 8}
MANY=${MANY:-50}
IDLE=${IDLE:-30}
MEMORY=${MEMORY:-32MiB}
INTERVAL_MS=${INTERVAL_MS:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BATON=$TARGET/release/baton
SAMPLE=$TARGET/release/baton-sample

command -v podman >/dev/null || { echo "podman is not installed (apt-get install podman runc)" >&2; exit 1; }
if [ ! -x "$BATON" ] || [ ! -x "$SAMPLE" ]; then
    echo "building (release)" >&2
    (cd "$ROOT" && cargo build --release -q -p baton -p baton-sample)
fi

# Short: the service's unix socket path must fit in 108 bytes.
TMP=$(mktemp -d /tmp/baton-bench.XXXXXX)
PM=$TMP/pm
SERVICE_PID=
SERVE_PID=
ROUTER_PID=

log() { echo "[$(date +%T)] $*" >&2; }

# Polls `CMD...` until it succeeds; fails after LIMIT seconds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "timed out after ${limit}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# Waits up to LIMIT seconds for PID to exit.
gone_within() {
    local pid=$1 limit=$2
    local end=$((SECONDS + limit))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
    ! kill -0 "$pid" 2>/dev/null
}

cleanup() {
    set +e
    if [ -n "${KEEP_LOGS:-}" ] && [ -d "$TMP" ]; then
        mkdir -p "$KEEP_LOGS"
        cp "$TMP"/*.log "$TMP"/*.json* "$PM/service.log" "$TMP/data/logs/router.log" "$KEEP_LOGS/" 2>/dev/null
    fi
    # The control plane first (it would start containers again), then its router
    # (its own process group: it outlives the control plane on purpose).
    if [ -n "$SERVE_PID" ]; then
        kill -TERM "$SERVE_PID" 2>/dev/null
        gone_within "$SERVE_PID" 10 || kill -KILL "$SERVE_PID" 2>/dev/null
        wait "$SERVE_PID" 2>/dev/null
    fi
    if [ -n "$ROUTER_PID" ]; then
        kill -TERM "$ROUTER_PID" 2>/dev/null
        gone_within "$ROUTER_PID" 10 || kill -KILL "$ROUTER_PID" 2>/dev/null
    fi
    # Containers through the service (which also tears their network down), then
    # the service's process group, then whatever it left, straight from the store.
    if [ -n "$SERVICE_PID" ]; then
        podman --url "unix://$PM/podman.sock" rm --all --force --time 0 >/dev/null 2>&1
        kill -TERM -- "-$SERVICE_PID" 2>/dev/null
        gone_within "$SERVICE_PID" 10 || kill -KILL -- "-$SERVICE_PID" 2>/dev/null
        wait "$SERVICE_PID" 2>/dev/null
        podman --root "$PM/storage" --runroot "$PM/run" rm --all --force --time 0 >/dev/null 2>&1
    fi
    # What Podman mounted under the directory, deepest first.
    awk -v d="$TMP" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -ru |
        while read -r m; do umount --lazy "$m" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The measuring helpers (ports, the reference run, the timing of a deploy from
# the event log, waits on the API, the table).
cat >"$TMP/bench.py" <<'PY'
import http.client, json, os, shlex, socket, statistics, subprocess, sys, threading, time

def free_ports(k):
    socks, ports = [], []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports

def get(port, path, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()

def healthy(port, timeout):
    try:
        return get(port, "/healthz", timeout)[0] == 200
    except (OSError, http.client.HTTPException):
        return False

def podman_memory(spec):
    """baton's `32MiB` as podman's `--memory` (bytes)."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for suffix, mult in units.items():
        if spec.endswith(suffix):
            return str(int(spec[: -len(suffix)]) * mult)
    return spec

def reference(n, image, version, memory, interval, name):
    """N `podman run -d` at once, one poller per container; seconds until all answer 200."""
    podman = shlex.split(os.environ["PODMAN"])
    memory = podman_memory(memory)
    ports = free_ports(n)
    ready = [None] * n
    deadline = time.time() + 120
    def poll(i):
        tick = time.time()
        while time.time() < deadline:
            if healthy(ports[i], 1.0):
                ready[i] = time.time()
                return
            # Like tokio's interval with MissedTickBehavior::Delay (baton's checkers).
            tick = max(tick + interval, time.time())
            time.sleep(max(0.0, tick - time.time()))
    t0 = time.time()
    procs = [subprocess.Popen(podman + [
        "run", "-d", "--name", f"{name}-{i}", "--memory", memory, "--memory-swap", memory,
        "--read-only", "--restart", "no", "-p", f"127.0.0.1:{ports[i]}:8080",
        image, "--version", version], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(n)]
    pollers = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(n)]
    for p in pollers:
        p.start()
    returned = 0.0
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"podman run failed: {err.decode().strip()}")
        returned = max(returned, time.time())
    for p in pollers:
        p.join()
    if None in ready:
        sys.exit(f"reference: {ready.count(None)} of {n} containers never answered /healthz")
    print(json.dumps({"total": max(ready) - t0, "run_returned": returned - t0}))

def events(api, app, after):
    status, body = get(api, f"/v1/apps/{app}/events?after={after}&limit=10000")
    if status != 200:
        sys.exit(f"GET events of {app}: {status} {body[:200]!r}")
    return json.loads(body)["events"]

def last_event_id(api, app):
    ev = events(api, app, 0)
    return ev[-1]["id"] if ev else 0

def timed_deploy(baton, api, app, version, n):
    """`baton deploy APP VERSION`; seconds from its start to the last new instance's
    `instance_ready` event, and the phases on the way (from the event log)."""
    after = last_event_id(api, app)
    t0 = time.time()
    out = subprocess.run([baton, "deploy", app, version], capture_output=True, text=True)
    t_cli = time.time()
    if out.returncode != 0:
        sys.exit(f"baton deploy {app} {version} failed: {out.stderr.strip()}")
    new_ids, starting, ready, started = set(), {}, {}, {}
    rollout = None
    deadline = t0 + 120
    while len(ready) < n:
        if time.time() > deadline:
            sys.exit(f"{app}: only {len(ready)} of {n} {version} instances ready after 120 s")
        time.sleep(0.1)
        batch = events(api, app, after)
        for e in batch:
            after = e["id"]
            kind, msg, at = e["kind"], e["message"], e["at_ms"] / 1000
            ident = msg.split(" ", 1)[0]
            if kind == "rollout_started" and rollout is None:
                rollout = at
            elif kind == "instance_starting" and f"({version}) starting" in msg:
                new_ids.add(ident)
                starting[ident] = at
            elif kind == "instance_started" and ident in new_ids:
                started[ident] = at
            elif kind == "instance_ready" and ident in new_ids:
                ready[ident] = at
            elif kind in ("rollout_failed", "rollout_aborted") or (
                    kind == "instance_start_failed" and ident in new_ids):
                sys.exit(f"{app}: {kind}: {msg}")
    print(json.dumps({
        "total": max(ready.values()) - t0,
        "cli": t_cli - t0,
        "rollout_started": (rollout or t0) - t0,
        "all_started": max(started.values()) - t0,
        "first_ready": min(ready.values()) - t0,
        # Per new instance: asked to start, started (created and started through
        # the API, as the controller recorded it), ready.
        "instances": {i: [round(d.get(i, t0) - t0, 3) for d in (starting, started, ready)]
                      for i in sorted(new_ids)},
    }))

def stable(api, app, version, n):
    """Exit 0 when APP is stable on VERSION with exactly N instances, all ready."""
    try:
        status, body = get(api, f"/v1/apps/{app}")
    except OSError:
        sys.exit(1)
    if status != 200:
        sys.exit(1)
    s = json.loads(body)
    inst = s.get("instances") or []
    ok = (s.get("phase") == "stable" and s.get("stable_version") == version
          and len(inst) == n and all(i.get("version") == version and i.get("ready") for i in inst))
    sys.exit(0 if ok else 1)

def table(results, many):
    rows = [json.loads(l) for l in open(results)]
    med = statistics.median
    counts = sorted({r["n"] for r in rows})
    if counts:
        print()
        print(f"deploy-to-ready of N containers: rolling, max_surge N, max_unavailable 0, min_ready 0s, "
              f"readiness every {os.environ['INTERVAL_MS']} ms, {os.environ['MEMORY']} each")
        print("  reference: N `podman run -d` at once (no container of baton's running); upgrade: `baton deploy`")
        print("  replacing N running containers (v1 -> v2); first: `baton deploy` of a just-applied app (no old")
        print("  containers to stop). Medians; ratios are medians of each run's own ratio (runs seconds apart),")
        print("  with their range.")
        print()
        print(f"{'N':>3} {'runs':>4} {'reference s':>12} {'upgrade s':>10} {'upgrade/ref':>12} {'range':>11} "
              f"{'first s':>8} {'first/ref':>10} {'range':>11}")
        for n in counts:
            rs = [r for r in rows if r["n"] == n]
            up = [r["baton"]["total"] / r["ref"]["total"] for r in rs]
            fi = [r["first"]["total"] / r["ref"]["total"] for r in rs]
            print(f"{n:>3} {len(rs):>4} {med(r['ref']['total'] for r in rs):>12.2f} "
                  f"{med(r['baton']['total'] for r in rs):>10.2f} {med(up):>12.2f} {min(up):>5.2f}-{max(up):<5.2f} "
                  f"{med(r['first']['total'] for r in rs):>8.2f} {med(fi):>10.2f} {min(fi):>5.2f}-{max(fi):<5.2f}")
        print()
        print("where the time goes (medians, seconds from the command / the first `podman run`):")
        print(f"{'N':>3} {'':<14} {'rollout started':>16} {'all started':>12} {'first ready':>12} {'last ready':>11}")
        for n in counts:
            rs = [r for r in rows if r["n"] == n]
            m = lambda who, k: med(r[who][k] for r in rs)
            print(f"{n:>3} {'reference':<14} {'':>16} {m('ref', 'run_returned'):>12.2f} {'':>12} {m('ref', 'total'):>11.2f}")
            for who, label in (("baton", "upgrade"), ("first", "first deploy")):
                print(f"{'':>3} {label:<14} {m(who, 'rollout_started'):>16.2f} {m(who, 'all_started'):>12.2f} "
                      f"{m(who, 'first_ready'):>12.2f} {m(who, 'total'):>11.2f}")
        print("  reference 'all started': every `podman run -d` returned; baton's: the controller recorded the")
        print("  last container created and started through the Docker API; ready: first /healthz 200 seen.")
    if many:
        m = json.load(open(many))
        print()
        print(f"resources, {m['count']} containers ({m['memory']} each) stable, idle for {m['idle_s']} s "
              f"(readiness every {m['readiness']}); deployed in {m['deploy_s']:.0f} s")
        print(f"{'process':<26} {'RSS MiB':>8} {'peak MiB':>9} {'CPU % of a core':>16}")
        for p in m["procs"]:
            rss = f"{p['rss_kib'] / 1024:.1f}" if p["rss_kib"] is not None else "-"
            hwm = f"{p['hwm_kib'] / 1024:.1f}" if p["hwm_kib"] is not None else "-"
            print(f"{p['name']:<26} {rss:>8} {hwm:>9} {p['cpu_pct']:>16.2f}")
        print(f"{'podman service, baton off':<26} {'':>8} {'':>9} {m['service_alone_cpu_pct']:>16.2f}")

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "ports":
    print(" ".join(map(str, free_ports(int(args[0])))))
elif cmd == "reference":
    reference(int(args[0]), args[1], args[2], args[3], float(args[4]) / 1000, args[5])
elif cmd == "deploy":
    timed_deploy(args[0], int(args[1]), args[2], args[3], int(args[4]))
elif cmd == "stable":
    stable(int(args[0]), args[1], args[2], int(args[3]))
elif cmd == "table":
    table(args[0], args[1] if len(args) > 1 and os.path.exists(args[1]) else None)
PY
bench() { python3 "$TMP/bench.py" "$@"; }

# --- a private Podman: its own storage, configuration and network -------------
mkdir -p "$PM"/{storage,run,tmp,networks,logs}
# A number no bridge on the machine uses (the tests take 10..249 the same way).
net=$((10 + ($$ % 200)))
while [ -e "/sys/class/net/btn$net" ]; do net=$((10 + (net - 9) % 240)); done
cat >"$PM/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$PM/tmp"
lock_type = "file"

[network]
network_config_dir = "$PM/networks"
default_network = "baton-b$net"
CONF
cat >"$PM/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$PM/storage"
runroot = "$PM/run"
CONF
cat >"$PM/networks/baton-b$net.json" <<CONF
{
  "name": "baton-b$net",
  "id": "$(printf '%064x' $((0xba7b0000 + net)))",
  "driver": "bridge",
  "network_interface": "btn$net",
  "created": "2026-01-01T00:00:00Z",
  "subnets": [{"subnet": "10.89.$net.0/24", "gateway": "10.89.$net.1"}],
  "ipv6_enabled": false,
  "internal": false,
  "dns_enabled": false,
  "ipam_options": {"driver": "host-local"}
}
CONF
export CONTAINERS_CONF=$PM/containers.conf CONTAINERS_STORAGE_CONF=$PM/storage.conf
ENDPOINT=unix://$PM/podman.sock
export PODMAN="podman --url $ENDPOINT"
log "starting podman system service on $ENDPOINT (network btn$net)"
# setsid: its own process group (this shell has no job control, so setsid does not
# fork and $! is the group's leader), stopped with whatever it forked in one signal.
# Run from $PM: conmon drops files into its working directory.
(cd "$PM" && exec setsid podman --root "$PM/storage" --runroot "$PM/run" \
    system service --time=0 "$ENDPOINT") >"$PM/service.log" 2>&1 &
SERVICE_PID=$!
wait_for "the Podman service's socket" 60 curl -sf --unix-socket "$PM/podman.sock" http://d/_ping ||
    { tail -n 20 "$PM/service.log" >&2; exit 1; }

log "building the images localhost/baton-sample:v1 and :v2"
for v in v1 v2; do
    bash "$ROOT/scripts/sample-image.sh" "$SAMPLE" "localhost/baton-sample:$v" "ENV SAMPLE_VERSION=$v" >/dev/null
done

# --- baton serve ---------------------------------------------------------------
read -r API <<<"$(bench ports 1)"
export BATON_SERVER=http://127.0.0.1:$API BATON_OPERATOR=bench
"$BATON" serve --data-dir "$TMP/data" --api "127.0.0.1:$API" >"$TMP/serve.log" 2>&1 &
SERVE_PID=$!
wait_for "baton serve's API" 60 curl -sf "$BATON_SERVER/v1/apps" ||
    { tail -n 20 "$TMP/serve.log" >&2; exit 1; }
# The router is started (and waited for) before the API answers: a child of serve.
ROUTER_PID=$(pgrep -P "$SERVE_PID" -f __router | head -n 1)
[ -n "$ROUTER_PID" ] || { echo "no router process under baton serve ($SERVE_PID)" >&2; exit 1; }
log "baton serve $SERVE_PID on $BATON_SERVER, router $ROUTER_PID"

# An app spec: NAME INSTANCES SURGE READINESS_LINES; its path on stdout.
spec() {
    local name=$1 instances=$2 surge=$3 readiness=$4 listen
    read -r listen <<<"$(bench ports 1)"
    cat >"$TMP/$name.yaml" <<YAML
name: $name
environment: bench
listen: 127.0.0.1:$listen
instances: $instances
drain_timeout: 2s
driver:
  container:
    endpoint: $ENDPOINT
    image: localhost/baton-sample:{version}
    pull: never
    port: 8080
    command: ["--version", "{version}"]
    memory: $MEMORY
    read_only: true
    stop_grace: 5s
readiness:
  path: /healthz
  timeout: 1s
$readiness
strategy:
  rolling:
    max_surge: $surge
    max_unavailable: 0
    min_ready: 0s
YAML
    echo "$TMP/$name.yaml"
}

containers_of() { podman --url "$ENDPOINT" ps -q --filter "label=baton.app=$1" | wc -l; }
settled() { bench stable "$API" "$1" "$2" "$3" && [ "$(containers_of "$1")" -eq "$3" ]; }
none_left() { [ "$(containers_of "$1")" -eq 0 ]; }

# --- 1. deploy-to-ready ----------------------------------------------------------
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
for n in $COUNTS; do
    app=ready$n
    specfile=$(spec "$app" "$n" "$n" "  interval: ${INTERVAL_MS}ms")
    # Run 0 warms up (image layers, caches) and is not counted.
    for run in $(seq 0 "$RUNS"); do
        # The reference on a Podman with no container of baton's: the polling baton
        # does of its own containers is part of what is measured, so it must not
        # slow the reference down too.
        ref=$(bench reference "$n" localhost/baton-sample:v2 v2 "$MEMORY" "$INTERVAL_MS" "ref$n-$run")
        refs=()
        for i in $(seq 0 $((n - 1))); do refs+=("ref$n-$run-$i"); done
        podman --url "$ENDPOINT" rm --force --time 0 "${refs[@]}" >/dev/null
        # First deploy: N new containers, no old ones to stop meanwhile.
        "$BATON" apply -f "$specfile" >/dev/null
        first=$(bench deploy "$BATON" "$API" "$app" v1 "$n")
        wait_for "$app stable on v1 with $n containers" 120 settled "$app" v1 "$n"
        # The upgrade the issue asks about: N running containers replaced.
        up=$(bench deploy "$BATON" "$API" "$app" v2 "$n")
        wait_for "$app stable on v2 with $n containers" 120 settled "$app" v2 "$n"
        "$BATON" events "$app" --json >"$TMP/events-$app-$run.json"
        "$BATON" delete "$app" >/dev/null
        wait_for "$app's containers to be gone" 120 none_left "$app"
        summary=$(echo "{\"b\": $up, \"f\": $first, \"r\": $ref}" | python3 -c 'import json,sys
d = json.load(sys.stdin)
print("upgrade %.2f s, first deploy %.2f s, podman run %.2f s" % (d["b"]["total"], d["f"]["total"], d["r"]["total"]))')
        if [ "$run" -eq 0 ]; then
            log "N=$n warm-up: $summary"
            continue
        fi
        echo "{\"n\": $n, \"run\": $run, \"baton\": $up, \"first\": $first, \"ref\": $ref}" >>"$RESULTS"
        log "N=$n run $run: $summary"
    done
done

# --- 2. resources of baton serve managing MANY containers -------------------------
MANY_JSON=$TMP/many.json
if [ "$MANY" -gt 0 ]; then
    app=many
    "$BATON" apply -f "$(spec "$app" "$MANY" "$MANY" "")" >/dev/null
    log "deploying $MANY containers"
    start=$SECONDS
    "$BATON" deploy "$app" v1 >/dev/null
    wait_for "$app stable on v1 with $MANY containers" 900 settled "$app" v1 "$MANY"
    deploy_s=$((SECONDS - start))
    HZ=$(getconf CLK_TCK)
    ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
    pids=("$SERVE_PID" "$ROUTER_PID" "$SERVICE_PID")
    names=("baton serve" "baton router (__router)" "podman system service")
    before=()
    for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
    t0=$(date +%s.%N)
    log "idle for ${IDLE}s with $MANY containers"
    # The measured interval itself (a duration, not a synchronisation).
    sleep "$IDLE"
    t1=$(date +%s.%N)
    settled "$app" v1 "$MANY" || { echo "$app did not stay stable while idle" >&2; exit 1; }
    {
        printf '{"count": %d, "memory": "%s", "idle_s": %s, "readiness": "1s (the default)", "deploy_s": %d, "procs": [' \
            "$MANY" "$MEMORY" "$IDLE" "$deploy_s"
        for i in "${!pids[@]}"; do
            p=${pids[$i]}
            cpu=$(echo "$(ticks "$p") ${before[$i]} $HZ $t0 $t1" | awk '{printf "%.3f", 100 * ($1 - $2) / $3 / ($5 - $4)}')
            [ "$i" -gt 0 ] && printf ', '
            printf '{"name": "%s", "rss_kib": %s, "hwm_kib": %s, "cpu_pct": %s}' \
                "${names[$i]}" "$(kib "$p" VmRSS)" "$(kib "$p" VmHWM)" "$cpu"
        done
        echo '], '
        # The same containers without the control plane (they and the router keep
        # running when it stops): what the Podman service does on its own.
        kill -TERM "$SERVE_PID"
        gone_within "$SERVE_PID" 30 || { echo "baton serve did not stop on SIGTERM" >&2; exit 1; }
        wait "$SERVE_PID" || true
        SERVE_PID=
        before=$(ticks "$SERVICE_PID")
        t0=$(date +%s.%N)
        log "idle for ${IDLE}s with $MANY containers, baton serve stopped"
        sleep "$IDLE"
        t1=$(date +%s.%N)
        printf '"service_alone_cpu_pct": %s}\n' \
            "$(echo "$(ticks "$SERVICE_PID") $before $HZ $t0 $t1" | awk '{printf "%.3f", 100 * ($1 - $2) / $3 / ($5 - $4)}')"
    } >"$MANY_JSON"
fi

MEMORY=$MEMORY INTERVAL_MS=$INTERVAL_MS bench table "$RESULTS" "$MANY_JSON"
