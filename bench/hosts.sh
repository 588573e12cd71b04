#!/usr/bin/env bash
# Fleets over SSH: the skew of a blue-green switch across 3, 6 and 12 hosts
# (network namespaces, each with its own sshd; see DEVELOPERS.md, "SSH test
# hosts"), first to last host to switch, median and range of several switches;
# and the wall time of a node-by-node rolling upgrade against the sum of its
# instances' start times (1.0 would be every instance started one after the
# other with nothing else in between). Needs root.
#
#   bench/hosts.sh                 # 3, 6 and 12 hosts, 5 switches each way
#   BATON_BENCH_HOSTS=3 BATON_BENCH_RUNS=3 bench/hosts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p baton --test hosts bench_hosts -- --ignored --nocapture --test-threads=1 2>&1 \
  | sed -n '/^hosts /,$p' | grep -v '^test \|^$'
