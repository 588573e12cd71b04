#!/usr/bin/env bash
# Benchmarks baton's router against nginx and HAProxy on this machine.
#
#   bench/router.sh                 # 5 rounds, 5 s per run (about 6 minutes)
#   DURATION=10 ROUNDS=7 bench/router.sh
#   BASE_BIN=/tmp/bench-old bench/router.sh   # also measure another build's helper
#                                   # (`examples/bench`) as target "base"
#   MIRROR=0 bench/router.sh        # skip the mirroring table
#   MAIN=0 bench/router.sh          # only the mirroring table
#   IDLE=0 bench/router.sh          # skip the idle-connection memory table
#   IDLE_CONNS=9000 bench/router.sh    # connections held idle in that table (default:
#                                   # 10,000, or what the descriptor limit lets
#                                   # HAProxy hold: it needs two per connection)
#
# One fast backend (a fixed 13-byte answer). Each proxy runs with one worker/thread
# pinned to CPU 0; wrk and the backend share CPU 1. Cases: keep-alive with 64 and 256
# connections, `Connection: close` with 64, and POSTs with 1 KiB and 64 KiB bodies
# (keep-alive, 64 connections). Target "rules" is baton with an app as a canary
# rollout configures it (two header rules, evaluated and not matching, sticky
# cohorts picked from the client's cookie, v1/v2 weighted 90/10), in the keep-alive
# case with 64 connections. Target "relay" (bench helper `relay`, keep-alive with 64
# connections only) speaks no HTTP: it pairs each client connection with an upstream
# connection and copies bytes, the least work any user-space proxy can do per request;
# its ratio to nginx is the most any proxy can show on this machine in this setup, and
# baton/relay says how close baton comes to it. Runs are interleaved (every target
# once per case per round, starting with a different target each round) and the table
# shows medians over the rounds. This machine's speed drifts from minute to minute, so
# the ratio columns are medians of each round's own ratio (runs seconds apart), not
# ratios of the medians.
#
# Mirroring (second table): baton with an app whose v1 takes every request and 0%, 10%
# or 100% of them copied to v2 and compared as JSON (a 0.3 KiB answer, one field left
# out), keep-alive with 64 connections; its CPU time per user request next to the same
# router with no mirroring configured ("off"). An app that mirrors decides for every
# request whether it is copied, so "m0" (mirroring configured, nothing copied)
# separates that cost from the copies'.
set -euo pipefail
# The idle-connection table holds 10,000 connections open per proxy: as many file
# descriptors as this machine allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get install -y "${need[@]}" >/dev/null 2>&1 || {
        $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${need[@]}" >/dev/null 2>&1
    } || $SUDO apt-get install -y "${need[@]/nginx-light/nginx}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "building (release)" >&2
(cd "$ROOT" && cargo build --release -q -p baton-router --example bench)
(cd "$ROOT" && cargo build --release -q -p baton) || echo "the baton binary did not build; measuring the router through the helper" >&2
HELPER=$TARGET/release/examples/bench
if "$TARGET/release/baton" router --help 2>/dev/null | grep -q -- --workers; then
    baton_cmd() { exec "$TARGET/release/baton" router --listen "127.0.0.1:$1" --upstream "127.0.0.1:$2" --workers 1; }
else
    # This build of the CLI has no --workers yet: the same router through the helper.
    baton_cmd() { exec "$HELPER" router "127.0.0.1:$1" "127.0.0.1:$2" 1; }
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
BACKEND=$(free_port); NGINX_PORT=$(free_port); HAPROXY_PORT=$(free_port); BATON_PORT=$(free_port)

cat >"$TMP/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $((NOFILE - 1000)); }
http {
    access_log off;
    client_body_temp_path $TMP; proxy_temp_path $TMP; fastcgi_temp_path $TMP;
    uwsgi_temp_path $TMP; scgi_temp_path $TMP;
    keepalive_requests 1000000;
    # Request bodies of the POST cases stay in memory (no temporary files).
    client_max_body_size 1m; client_body_buffer_size 128k;
    upstream backend { server 127.0.0.1:$BACKEND; keepalive 512; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF

cat >"$TMP/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn $(( (NOFILE - 1000) / 2 < 10100 ? (NOFILE - 1000) / 2 : 10100 ))
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    http-reuse always
    server s1 127.0.0.1:$BACKEND
CONF

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    tail -n 5 "$TMP"/*.out "$TMP"/*.err >&2 2>/dev/null || true
    exit 1
}

taskset -c "$LOAD_CPU" "$HELPER" backend "$BACKEND" & BACKEND_PID=$!; PIDS+=($BACKEND_PID)
taskset -c "$PROXY_CPU" "$NGINX" -c "$TMP/nginx.conf" -g 'daemon off;' 2>"$TMP/nginx.out" & PIDS+=($!)
taskset -c "$PROXY_CPU" haproxy -f "$TMP/haproxy.cfg" -q 2>"$TMP/haproxy.out" & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
baton_cmd "$BATON_PORT" "$BACKEND" >"$TMP/baton.out" 2>&1 & BATON_PID=$!; PIDS+=($BATON_PID)
taskset -pc "$PROXY_CPU" "$BATON_PID" >/dev/null
for t in /proc/$BATON_PID/task/*; do taskset -pc "$PROXY_CPU" "$(basename "$t")" >/dev/null; done
RULES_PORT=$(free_port)
taskset -c "$PROXY_CPU" "$HELPER" routed "127.0.0.1:$RULES_PORT" "127.0.0.1:$BACKEND" \
    >"$TMP/rules.out" 2>&1 & RULES_PID=$!; PIDS+=($RULES_PID)
RELAY_PORT=$(free_port)
taskset -c "$PROXY_CPU" "$HELPER" relay "127.0.0.1:$RELAY_PORT" "127.0.0.1:$BACKEND" \
    >"$TMP/relay.out" 2>&1 & RELAY_PID=$!; PIDS+=($RELAY_PID)
PORTS=($BACKEND $NGINX_PORT $HAPROXY_PORT $BATON_PORT $RULES_PORT $RELAY_PORT)
if [ -n "${BASE_BIN:-}" ]; then
    BASE_PORT=$(free_port)
    taskset -c "$PROXY_CPU" "$BASE_BIN" router "127.0.0.1:$BASE_PORT" "127.0.0.1:$BACKEND" 1 \
        >"$TMP/base.out" 2>&1 & BASE_PID=$!; PIDS+=($BASE_PID)
    PORTS+=($BASE_PORT)
fi
for p in "${PORTS[@]}"; do wait_port "$p"; done
# Threads started after the first pinning (workers) are pinned too.
for t in /proc/$BATON_PID/task/*; do taskset -pc "$PROXY_CPU" "$(basename "$t")" >/dev/null; done

declare -A PORT=([direct]=$BACKEND [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [baton]=$BATON_PORT [rules]=$RULES_PORT [relay]=$RELAY_PORT)
# The process doing each target's work, for its CPU time per request (user + system,
# all threads): the cost that decides how much one core can carry, whatever the load
# generator's own limit.
NGINX_WORKER=$(pgrep -P "$(cat "$TMP/nginx.pid")" | head -n 1)
for t in /proc/$RULES_PID/task/*; do taskset -pc "$PROXY_CPU" "$(basename "$t")" >/dev/null; done
declare -A WORK_PID=([direct]=$BACKEND_PID [nginx]=$NGINX_WORKER [haproxy]=$HAPROXY_PID [baton]=$BATON_PID [rules]=$RULES_PID [relay]=$RELAY_PID)
[ -n "${BASE_BIN:-}" ] && WORK_PID[base]=$BASE_PID
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
TARGETS=(direct nginx haproxy baton rules relay)
[ -n "${BASE_BIN:-}" ] && { PORT[base]=$BASE_PORT; TARGETS+=(base); }
for kib in 1 64; do
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
        $((kib * 1024)) >"$TMP/post$kib.lua"
done
CASES=("ka64|-c64|" "ka256|-c256|" "close64|-c64|-H|Connection: close"
       "post1k|-c64|-s|$TMP/post1.lua" "post64k|-c64|-s|$TMP/post64.lua")
RESULTS=$TMP/results.tsv
: >"$RESULTS"

# One short warm-up per target so pools and caches are filled.
for t in "${TARGETS[@]}"; do
    taskset -c "$LOAD_CPU" wrk -t1 -c64 -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done

[ "${MAIN:-1}" = 0 ] && CASES=()
# "rules" and "relay" run in the ka64 case only.
total=$((ROUNDS * (${#CASES[@]} * (${#TARGETS[@]} - 2) + 2)))
n=0
for round in $(seq 1 "$ROUNDS"); do
    # Each round starts with another target, so none always follows the same one.
    shift_by=$(( (round - 1) % ${#TARGETS[@]} ))
    ORDER=("${TARGETS[@]:$shift_by}" "${TARGETS[@]:0:$shift_by}")
    for c in "${CASES[@]}"; do
        IFS='|' read -r name conns h1 h2 <<<"$c"
        for t in "${ORDER[@]}"; do
            case $t in rules | relay) [ "$name" != ka64 ] && continue ;; esac
            n=$((n + 1))
            echo "[$n/$total] round $round $name $t" >&2
            args=(-t1 "$conns" -d"${DURATION}s" --latency)
            [ -n "$h1" ] && args+=("$h1" "$h2")
            # A returning client: its cohort cookie picks the version.
            [ "$t" = rules ] && args+=(-H "Cookie: session=abc; baton_cohort=4321")
            before=$(ticks "${WORK_PID[$t]}")
            out=$(taskset -c "$LOAD_CPU" wrk "${args[@]}" "http://127.0.0.1:${PORT[$t]}/")
            cpu_s=$(echo "$(ticks "${WORK_PID[$t]}") $before $HZ" | awk '{print ($1 - $2) / $3}')
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$t" "$cpu_s" "$(echo "$out" | tr '\n' '\037')" >>"$RESULTS"
        done
    done
done

cp "$RESULTS" "${RESULTS_COPY:-/tmp/baton-bench-results.tsv}"

IDLE_RESULTS=$TMP/idle.tsv
: >"$IDLE_RESULTS"
if [ "${IDLE:-1}" != 0 ]; then
    # HAProxy reserves two descriptors per connection of its maxconn.
    IDLE_CONNS=${IDLE_CONNS:-$(( (NOFILE - 1000) / 2 < 10000 ? (NOFILE - 1000) / 2 / 500 * 500 - 500 : 10000 ))}
    # Each run gets a fresh proxy process: one that served the cases above keeps the
    # memory it freed, and would hold the connections in it without growing.
    idle_proxy() { # TARGET PORT: starts it; sets IDLE_KILL and IDLE_PID (the process holding them)
        case $1 in
        nginx)
            sed -e "s/127.0.0.1:$NGINX_PORT /127.0.0.1:$2 /" -e "s|$TMP/nginx.pid|$TMP/nginx-idle.pid|" \
                "$TMP/nginx.conf" >"$TMP/nginx-idle.conf"
            taskset -c "$PROXY_CPU" "$NGINX" -c "$TMP/nginx-idle.conf" -g 'daemon off;' 2>>"$TMP/nginx-idle.out" &
            IDLE_KILL=$!
            wait_port "$2"
            IDLE_PID=$(pgrep -P "$IDLE_KILL" | head -n 1)
            ;;
        haproxy)
            sed "s/127.0.0.1:$HAPROXY_PORT\$/127.0.0.1:$2/" "$TMP/haproxy.cfg" >"$TMP/haproxy-idle.cfg"
            taskset -c "$PROXY_CPU" haproxy -f "$TMP/haproxy-idle.cfg" -q 2>>"$TMP/haproxy-idle.out" &
            IDLE_KILL=$! IDLE_PID=$!
            wait_port "$2"
            ;;
        baton)
            baton_cmd "$2" "$BACKEND" >>"$TMP/baton-idle.out" 2>&1 &
            IDLE_KILL=$! IDLE_PID=$!
            wait_port "$2"
            ;;
        esac
    }
    src=1
    for round in $(seq 1 3); do
        for t in nginx haproxy baton; do
            src=$((src + 1))
            port=$(free_port)
            idle_proxy "$t" "$port"
            echo "[idle] round $round $t: $IDLE_CONNS connections" >&2
            line=$(taskset -c "$LOAD_CPU" python3 "$ROOT/bench/idle_conns.py" "$port" "$IDLE_PID" \
                "$IDLE_CONNS" "127.0.$((src / 250)).$((src % 250 + 2))")
            kill "$IDLE_KILL" 2>/dev/null || true
            wait "$IDLE_KILL" 2>/dev/null || true
            printf '%s\t%s\t%s\n' "$round" "$t" "$line" >>"$IDLE_RESULTS"
        done
    done
fi

MIRROR_RESULTS=$TMP/mirror.tsv
: >"$MIRROR_RESULTS"
if [ "${MIRROR:-1}" != 0 ]; then
    JSON_BACKEND=$(free_port)
    taskset -c "$LOAD_CPU" "$HELPER" backend-json "$JSON_BACKEND" & PIDS+=($!)
    declare -A MPORT MPID
    MT=(off m0 m10 m100)
    for t in "${MT[@]}"; do
        MPORT[$t]=$(free_port)
        taskset -c "$PROXY_CPU" "$HELPER" mirror "127.0.0.1:${MPORT[$t]}" "127.0.0.1:$JSON_BACKEND" "${t#m}" \
            >"$TMP/$t.out" 2>&1 & MPID[$t]=$!; PIDS+=($!)
    done
    for t in "${MT[@]}"; do
        wait_port "${MPORT[$t]}"
        for th in /proc/${MPID[$t]}/task/*; do taskset -pc "$PROXY_CPU" "$(basename "$th")" >/dev/null; done
        taskset -c "$LOAD_CPU" wrk -t1 -c64 -d1s "http://127.0.0.1:${MPORT[$t]}/" >/dev/null
    done
    for round in $(seq 1 "$ROUNDS"); do
        shift_by=$(( (round - 1) % ${#MT[@]} ))
        for t in "${MT[@]:$shift_by}" "${MT[@]:0:$shift_by}"; do
            echo "[mirror] round $round $t" >&2
            before=$(ticks "${MPID[$t]}")
            out=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:${MPORT[$t]}/")
            cpu_s=$(echo "$(ticks "${MPID[$t]}") $before $HZ" | awk '{print ($1 - $2) / $3}')
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" ka64 "$t" "$cpu_s" "$(echo "$out" | tr '\n' '\037')" >>"$MIRROR_RESULTS"
        done
    done
fi
python3 - "$RESULTS" "$MIRROR_RESULTS" "$IDLE_RESULTS" <<'PY'
import re, statistics, sys

def us(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n * {"us": 1, "ms": 1e3, "s": 1e6}[u]

data = {}
by_round = {}
for line in open(sys.argv[1]):
    rnd, case, target, cpu_s, out = line.rstrip("\n").split("\t")
    out = out.replace("\x1f", "\n")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    l50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    l99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (m and l50 and l99):
        print(f"unreadable wrk output for {case} {target}:\n{out}", file=sys.stderr)
        continue
    rps, p50, p99 = float(m.group(1)), us(l50.group(1)), us(l99.group(1))
    n = re.search(r"(\d+) requests in", out)
    cpu = float(cpu_s) * 1e6 / int(n.group(1)) if n and int(n.group(1)) else float("nan")
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    data.setdefault((case, target), []).append((rps, p50, p99, cpu, errs.group(0) if errs else ""))
    by_round[(case, target, rnd)] = rps


def paired(case, target, ref):
    """Median over the rounds of target's req/s over ref's in the same round."""
    rs = [by_round[(c, target, r)] / by_round[(c, ref, r)]
          for (c, t, r) in by_round if c == case and t == ref and (c, target, r) in by_round]
    return statistics.median(rs) if rs else None

cases = ["ka64", "ka256", "close64", "post1k", "post64k"]
targets = ["direct", "nginx", "haproxy", "relay", "baton", "rules", "base"]
if not data:
    cases = []
if data:
    print()
    print(f"{'case':<8} {'target':<8} {'req/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'/nginx':>7} {'/haproxy':>9} {'cpu µs/req':>11} {'req/cpu-s /nginx':>17}  notes")
for c in cases:
    med = {}
    for t in targets:
        runs = data.get((c, t), [])
        if not runs:
            continue
        med[t] = tuple(statistics.median(r[i] for r in runs) for i in range(4))
    for t in targets:
        if t not in med:
            continue
        rps, p50, p99, cpu = med[t]
        pn = paired(c, t, "nginx") if t not in ("direct", "nginx") else None
        ph = paired(c, t, "haproxy") if t not in ("direct", "haproxy") else None
        rn = f"{pn:.2f}x" if pn else ""
        rh = f"{ph:.2f}x" if ph else ""
        # Requests one core carries per CPU-second, relative to nginx's.
        rc = f"{med['nginx'][3] / cpu:.2f}x" if "nginx" in med and t not in ("direct", "nginx") else ""
        notes = "; ".join(sorted({r[4] for r in data[(c, t)] if r[4]}))
        print(f"{c:<8} {t:<8} {rps:>10.0f} {p50:>9.0f} {p99:>9.0f} {rn:>7} {rh:>9} {cpu:>11.1f} {rc:>17}  {notes}")
if data:
    print(f"\nmedians of {len(data[('ka64','nginx')])} interleaved runs per cell; proxies pinned to one CPU, wrk + backend on another")
    print("/nginx, /haproxy: median of the per-round req/s ratios")
    if ("ka64", "relay") in data and ("ka64", "baton") in data:
        print(f"baton/relay (ka64): {paired('ka64', 'baton', 'relay'):.2f}x; relay copies bytes and speaks no HTTP:")
        print("  its /nginx is the most any proxy can show here")
for c in cases:
    for ours in ("baton", "rules", "relay"):
        for ref in ("nginx", "haproxy", "relay"):
            if ours == ref:
                continue
            rs = [by_round[(c, ours, r)] / by_round[(c, ref, r)]
                  for (cc, t, r) in sorted(by_round) if cc == c and t == ref and (c, ours, r) in by_round]
            if rs:
                print(f"  {c:<8} {ours}/{ref:<8} by round: " + " ".join(f"{x:.2f}" for x in rs))
if data:
    print("cpu µs/req: the target's process CPU time (user + system, all threads) per request;")
    print("req/s is capped by the load CPU when a proxy needs less than a whole core")

# Mirroring: per round, each target's CPU per user request and its excess over m0.
rows = {}
for line in open(sys.argv[2]):
    rnd, case, target, cpu_s, out = line.rstrip("\n").split("\t")
    out = out.replace("\x1f", "\n")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    l99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    n = re.search(r"(\d+) requests in", out)
    if not (m and l99 and n):
        continue
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    rows.setdefault(rnd, {})[target] = (float(m.group(1)), us(l99.group(1)),
                                        float(cpu_s) * 1e6 / int(n.group(1)),
                                        errs.group(0) if errs else "")
if rows:
    print()
    print(f"{'mirroring':<10} {'req/s':>10} {'p99 µs':>9} {'cpu µs/req':>11} {'+cpu vs off':>12} {'(range)':>15} {'µs/copy':>9} {'(range)':>15}  notes")
    share = {"m10": 0.1, "m100": 1.0}
    def excess(t, ref):
        return [r[t][2] - r[ref][2] for r in rows.values() if t in r and ref in r]
    for t in ("off", "m0", "m10", "m100"):
        runs = [r[t] for r in rows.values() if t in r]
        if not runs:
            continue
        rps, p99, cpu = (statistics.median(x[i] for x in runs) for i in range(3))
        notes = "; ".join(sorted({x[3] for x in runs if x[3]}))
        cols = [f"{'':>12}", f"{'':>15}", f"{'':>9}", f"{'':>15}"]
        if t != "off" and excess(t, "off"):
            e = excess(t, "off")
            cols[0] = f"{statistics.median(e):>+12.1f}"
            cols[1] = f"{min(e):+.1f}..{max(e):+.1f}".rjust(15)
        if t in share and excess(t, "m0"):
            c = [x / share[t] for x in excess(t, "m0")]
            cols[2] = f"{statistics.median(c):>9.1f}"
            cols[3] = f"{min(c):.1f}..{max(c):.1f}".rjust(15)
        print(f"{t:<10} {rps:>10.0f} {p99:>9.0f} {cpu:>11.1f} {' '.join(cols)}  {notes}")
    print(f"medians of {len(rows)} interleaved runs, keep-alive with 64 connections; off: no mirroring configured")
    print("; m0: mirroring configured, nothing copied; m10/m100: 10 and 100% of requests")
    print("copied to v2 and compared as JSON. +cpu vs off: the")
    print("router's CPU per user request over off's in the same round; µs/copy: CPU per mirrored")
    print("request over m0's (the copy, its answer and the comparison)")

# Idle keep-alive connections: resident memory each proxy adds per connection.
idle = {}
for line in open(sys.argv[3]):
    rnd, target, rest = line.rstrip("\n").split("\t")
    before, after, still = (int(x) for x in rest.split())
    idle.setdefault(target, []).append((before, after, still))
if idle:
    print()
    print(f"{'idle conns':<10} {'open':>7} {'RSS before':>11} {'RSS with':>10} {'KiB/conn':>9} {'(range)':>13} {'/nginx':>7} {'/haproxy':>9}")
    per = {t: [(a - b) / s for b, a, s in runs if s] for t, runs in idle.items()}
    for t in ("nginx", "haproxy", "baton"):
        if not per.get(t):
            continue
        runs = idle[t]
        med = statistics.median(per[t])
        rn = f"{med / statistics.median(per['nginx']):.2f}x" if t != "nginx" and per.get("nginx") else ""
        rh = f"{med / statistics.median(per['haproxy']):.2f}x" if t != "haproxy" and per.get("haproxy") else ""
        print(f"{t:<10} {statistics.median(r[2] for r in runs):>7.0f} {statistics.median(r[0] for r in runs):>9.0f}Ki"
              f" {statistics.median(r[1] for r in runs):>8.0f}Ki {med:>9.2f} {min(per[t]):>6.2f}..{max(per[t]):<6.2f} {rn:>7} {rh:>9}")
    print("medians of 3 runs, each against a freshly started proxy; each connection served one GET and")
    print("stays open, idle; RSS of the process that holds them (nginx's worker), all threads;")
    print("KiB/conn: (with - before) / open connections")
PY
