#!/usr/bin/env bash
# The dashboard's cost: the bytes of its first load (HTML + JS + CSS, as served
# and gzip-compressed), and the live stream's CPU on the control plane with 20
# dashboards open during a canary under load, next to the same canary with no
# dashboard (interleaved rounds; median and range).
#
#   bench/dashboard.sh                # 5 rounds of 20 s each way
#   ROUNDS=3 SECONDS_PER=10 DASHBOARDS=20 bench/dashboard.sh
set -euo pipefail
ROUNDS=${ROUNDS:-5}
SECONDS_PER=${SECONDS_PER:-20}
DASHBOARDS=${DASHBOARDS:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
command -v wrk >/dev/null || { echo "installing wrk" >&2; apt-get install -y -qq wrk >/dev/null; }
echo "building (release)" >&2
(cd "$ROOT" && cargo build --release -q -p baton)
BATON=$TARGET/release/baton

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    # `down` first: it stops the instances and the router, then the control
    # plane, which is given the time to finish before anything is killed.
    [ -n "${API:-}" ] && BATON_DATA_DIR=$TMP/data BATON_TOKEN=${TOKEN:-} \
        "$BATON" down --server "http://$API" >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do kill -0 "${SERVE:-0}" 2>/dev/null || break; sleep 0.1; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap "exit 130" INT TERM
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
API=127.0.0.1:$(free_port)
LISTEN=127.0.0.1:$(free_port)

"$BATON" serve --data-dir "$TMP/data" --api "$API" >"$TMP/serve.log" 2>&1 & SERVE=$!; PIDS+=($SERVE)
for _ in $(seq 1 200); do [ -f "$TMP/data/admin.token" ] && break; sleep 0.05; done
TOKEN=$(cat "$TMP/data/admin.token")
export BATON_TOKEN=$TOKEN
cat >"$TMP/shop.yaml" <<YAML
name: shop
listen: $LISTEN
instances: 2
driver:
  process:
    command: ["{baton}", "sample", "--port", "{port}", "--version", "{version}"]
readiness: { path: /healthz, interval: 200ms }
strategy:
  canary:
    steps: [{ set_weight: 50 }, { pause: {} }]
YAML
"$BATON" apply -f "$TMP/shop.yaml" --server "http://$API" >/dev/null
"$BATON" deploy shop v1 --wait --server "http://$API" >/dev/null
"$BATON" deploy shop v2 --server "http://$API" >/dev/null
for _ in $(seq 1 200); do
    "$BATON" status shop --json --server "http://$API" | grep -q '"phase": "paused"\|"phase": "progressing"' && break
    sleep 0.1
done
ROUTER=$(pgrep -f "$TMP/data/router.sock" | head -n 1)

echo "first load" >&2
printf '\n%-12s %10s %10s\n' file bytes gzip
total=0; gz=0
for f in "" app.js style.css; do
    curl -s "http://$API/ui/$f" -o "$TMP/asset"
    b=$(wc -c <"$TMP/asset"); g=$(gzip -9 -c "$TMP/asset" | wc -c)
    printf '%-12s %10d %10d\n' "${f:-index.html}" "$b" "$g"
    total=$((total + b)); gz=$((gz + g))
done
printf '%-12s %10d %10d\n' total "$total" "$gz"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
: >"$TMP/runs"
measure() { # $1: label, $2: dashboards
    local streams=() p
    for _ in $(seq 1 "$2"); do
        curl -sN -H "Authorization: Bearer $TOKEN" "http://$API/v1/stream" >/dev/null & streams+=($!)
    done
    sleep 2
    local s0 r0; s0=$(ticks "$SERVE"); r0=$(ticks "$ROUTER")
    local out; out=$(wrk -t1 -c16 -d"${SECONDS_PER}s" "http://$LISTEN/")
    local s1 r1; s1=$(ticks "$SERVE"); r1=$(ticks "$ROUTER")
    if [ ${#streams[@]} -gt 0 ]; then
        kill "${streams[@]}" 2>/dev/null || true
        wait "${streams[@]}" 2>/dev/null || true
    fi
    local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    echo "$1 $rps $(( (s1 - s0) )) $(( (r1 - r0) ))" >>"$TMP/runs"
}
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round" >&2
    if [ $((round % 2)) = 1 ]; then measure none 0; measure dashboards "$DASHBOARDS"; else measure dashboards "$DASHBOARDS"; measure none 0; fi
done
python3 - "$TMP/runs" "$HZ" "$SECONDS_PER" "$DASHBOARDS" <<'PY'
import statistics, sys
hz, secs, n = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
runs = {}
for line in open(sys.argv[1]):
    label, rps, serve, router = line.split()
    runs.setdefault(label, []).append((float(rps), int(serve) / hz / secs * 100, int(router) / hz / secs * 100))
print(f"\n{'canary under load':<22} {'req/s':>9} {'control plane CPU %':>20} {'router CPU %':>13}")
for label in ("none", "dashboards"):
    r = runs[label]
    med = [statistics.median(x[i] for x in r) for i in range(3)]
    rng = f"({min(x[1] for x in r):.1f}–{max(x[1] for x in r):.1f})"
    name = "no dashboard" if label == "none" else f"{n} dashboards"
    print(f"{name:<22} {med[0]:>9.0f} {med[1]:>8.1f} {rng:>11} {med[2]:>13.1f}")
extra = statistics.median(d[1] for d in runs["dashboards"]) - statistics.median(d[1] for d in runs["none"])
print(f"\nthe stream's cost: {extra:+.1f}% of one core for {n} dashboards (medians of {len(runs['none'])} interleaved runs of {secs:.0f} s)")
PY
