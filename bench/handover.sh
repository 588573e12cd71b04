#!/usr/bin/env bash
# Replaces a running `baton router` with a new process mid-load and counts what the
# clients lost (0 expected everywhere).
#
#   bench/handover.sh                       # 4 s per run, 32 connections
#   DURATION=8 CONNS=128 bench/handover.sh
#   BATON=/path/to/baton bench/handover.sh  # another binary (default: the release
#                                           # build if there is one, else the debug one)
#
# Backend: `baton sample` on loopback. For each case (keep-alive, and `Connection:
# close` on every request) wrk runs against `baton router --handover-socket S`; half
# way through, `baton router ... --take-over` replaces it: the new process takes the
# listening socket, the old one stops accepting, answers its connections' next
# requests with `Connection: close`, and exits. The table shows wrk's requests,
# non-2xx answers and socket errors (connect, read, write, timeout), and how long the
# old router took to exit after the new one was started.
set -euo pipefail

DURATION=${DURATION:-4}
CONNS=${CONNS:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }
if [ -z "${BATON:-}" ]; then
    if [ -x "$TARGET/release/baton" ]; then
        BATON=$TARGET/release/baton
    else
        echo "building baton (debug; build --release first for release numbers)" >&2
        (cd "$ROOT" && cargo build -q -p baton)
        BATON=$TARGET/debug/baton
    fi
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.05
    done
    echo "nothing answers on port $1" >&2; return 1
}

BACKEND=$(free_port)
"$BATON" sample --port "$BACKEND" >"$TMP/sample.log" 2>&1 &
PIDS+=($!)
wait_http "$BACKEND"

printf '%-12s %6s %10s %8s %14s %12s\n' case conns requests non-2xx socket-errors old-exit-ms
for mode in keep-alive close; do
    LISTEN=$(free_port)
    SOCK=$TMP/handover-$mode.sock
    args=(router --listen "127.0.0.1:$LISTEN" --upstream "127.0.0.1:$BACKEND" --workers 1 --handover-socket "$SOCK")
    "$BATON" "${args[@]}" >"$TMP/old-$mode.log" 2>&1 &
    OLD=$!
    PIDS+=("$OLD")
    wait_http "$LISTEN"
    header=()
    [ "$mode" = close ] && header=(-H 'Connection: close')
    wrk -t1 -c"$CONNS" -d"${DURATION}s" "${header[@]}" "http://127.0.0.1:$LISTEN/" >"$TMP/wrk-$mode.txt" 2>&1 &
    WRK=$!
    sleep "$(awk -v d="$DURATION" 'BEGIN {print d / 2}')"
    started=$(date +%s%N)
    "$BATON" "${args[@]}" --take-over --drain-grace 1s >"$TMP/new-$mode.log" 2>&1 &
    NEW=$!
    PIDS+=("$NEW")
    exit_ms=timeout
    for _ in $(seq 400); do
        if ! kill -0 "$OLD" 2>/dev/null; then
            exit_ms=$(( ($(date +%s%N) - started) / 1000000 ))
            break
        fi
        sleep 0.025
    done
    wait "$WRK"
    out=$TMP/wrk-$mode.txt
    requests=$(awk '/requests in/ {print $1}' "$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out"); non2xx=${non2xx:-0}
    errors=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$out" | awk '{print $1+$2+$3+$4}')
    errors=${errors:-0}
    printf '%-12s %6s %10s %8s %14s %12s\n' "$mode" "$CONNS" "$requests" "$non2xx" "$errors" "$exit_ms"
    if [ "$non2xx" != 0 ] || [ "$errors" != 0 ] || [ "$exit_ms" = timeout ]; then
        echo "--- wrk" >&2; cat "$out" >&2
        echo "--- old router" >&2; cat "$TMP/old-$mode.log" >&2
        echo "--- new router" >&2; cat "$TMP/new-$mode.log" >&2
    fi
    kill "$NEW" 2>/dev/null || true
    wait "$NEW" 2>/dev/null || true
done
