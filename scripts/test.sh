#!/usr/bin/env bash
# The whole test suite, as CI runs it, on a fresh Debian machine with Rust.
# Installs what the tests need, checks formatting and lints, runs every test
# (unit, property and end-to-end with real processes and sockets), then runs
# the README's demo command exactly as a newcomer would.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use (SQLite is bundled). Podman runs the container
# driver's tests (a private `podman system service` per test, see DEVELOPERS.md):
# runc is the runtime they configure, netavark and iptables publish ports.
# sshd, ssh and ip make the SSH test hosts (network namespaces, each with its own
# sshd; iptables cuts their SSH). Debian's postinst may start an sshd in the root
# namespace too: harmless, the tests neither use nor disturb it.
need=()
command -v cc >/dev/null || need+=(gcc)
command -v curl >/dev/null || need+=(curl)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v iptables >/dev/null || need+=(iptables)
[ -x /usr/lib/podman/netavark ] || need+=(netavark)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
# The dashboard's tests drive a real headless Chromium.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# openssl: the TLS test makes its certificate.
command -v openssl >/dev/null || need+=(openssl)
# chattr: the audit log tests make it read-only even for root.
command -v chattr >/dev/null || [ -x /usr/bin/chattr ] || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${need[@]}"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# The container, SSH host and dashboard tests fail instead of skipping when what
# they need (podman; root, sshd, ip; chromium) is missing.
export BATON_REQUIRE_PODMAN=1
export BATON_REQUIRE_SSH=1
export BATON_REQUIRE_CHROMIUM=1
cargo test --workspace -- --test-threads=2
echo "== deterministic simulation of the control plane: 10,000 seeds (release build)"
# Each failing seed prints the one-line command that replays it.
cargo run --release -- __sim --seeds 10000
echo "== README demo: cargo run --release -- demo"
cargo run --release -- demo
