#!/usr/bin/env bash
# The project's test command: the alert rules (promtool, installed from Debian's prometheus
# package when missing), every Rust test (with a real PostgreSQL and Redis), then the end-to-end
# tests with the OpenAI SDKs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> promtool: alert rules and Prometheus config"
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: installing Debian's prometheus package"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
promtool check config deploy/prometheus/prometheus.yml

# `failpoints` compiles in the crash points of the crash tests (never in a release build).
# The replica tests (tests/it/cluster.rs) need a real PostgreSQL and Redis: scripts/services.sh
# installs Debian's packages when missing, starts both on loopback ports for this run, and stops
# them after.
echo "==> cargo test --workspace --locked --features imagegate/failpoints (with PostgreSQL and Redis)"
scripts/services.sh run -- cargo test --workspace --locked --features imagegate/failpoints

# The Dockerfile, deploy/ (compose, nginx, Kubernetes) and the binary the tests built, run as the
# container runs it (unprivileged, read-only root filesystem).
echo "==> deploy check"
IMAGEGATE_BIN="${CARGO_TARGET_DIR:-target}/debug/imagegate" scripts/deploy-check.sh

# The binary `cargo test` built above (same features): not built a second time.
IMAGEGATE_BIN="${CARGO_TARGET_DIR:-target}/debug/imagegate" scripts/e2e.sh
