#!/usr/bin/env bash
# Crash anywhere, end to end: N rollouts of the real binary under load, with a
# kill -9 of the control plane in every round and random kill -9 of instances.
#
#   bench/chaos.sh                  # 200 rollouts (about 15 minutes on 2 cores)
#   bench/chaos.sh 30               # 30 rollouts
#   BATON_CHAOS_SEED=42 bench/chaos.sh 200      # replay a seed
#   BATON_CHAOS_SEED=42 BATON_CHAOS_ROUND=17 bench/chaos.sh 200
#                                   # round 17 of that run alone
#
# One control plane (`baton serve -c roll.yaml -c bg.yaml -c canary.yaml`) serves
# three apps of the sample service, one per strategy: rolling (3 instances),
# blue-green with auto_promote_after (2) and canary with short steps and an
# error-rate/p99 analysis (2). Each round deploys a new version on each app at
# once, half of them good and half bad through the sample's fault knobs (never
# ready, crashing, and for the canary also erroring or slow), under paced load from
# the loadgen. In every round the control plane is killed with -9 at a random
# moment (sometimes again while it resumes, sometimes during `baton deploy`
# itself) and started again with the same command line, and up to 2 instances
# (never 2 of one app) are killed with -9. Checked after each round: every rollout
# ended within 180 s (and whether a good release succeeded and a bad one was
# rolled back: "unexpected results" are listed, not failures), each
# app settled on its stable version at full capacity with exactly the instances
# the control plane knows running (no orphan, duplicate or ghost), one final
# history record per rollout, no failed request (the 500s an erroring release
# answers itself are counted apart), answers only from the old and new version,
# and capacity sampled all along. The table lists the totals; a failure prints the
# seed and the command that replays it. Release build; the run lives in
# crates/baton/tests/chaos.rs, whose short form (10 rollouts) is in the test suite.
set -euo pipefail

N=${1:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUMMARY=$(mktemp)
trap 'rm -f "$SUMMARY"' EXIT

echo "building (release)" >&2
(cd "$ROOT" && cargo test --release -q -p baton --test chaos --no-run) >&2

status=0
(cd "$ROOT" && BATON_CHAOS_ROLLOUTS=$N BATON_CHAOS_SUMMARY=$SUMMARY \
    cargo test --release -q -p baton --test chaos -- --nocapture --test-threads=1) >&2 || status=$?
echo
if [ -s "$SUMMARY" ]; then
    cat "$SUMMARY"
else
    echo "the chaos run ended before its summary (exit $status); see the output above" >&2
fi
exit $status
