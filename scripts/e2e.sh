#!/usr/bin/env bash
# End-to-end tests: the gateway (`imagegate demo`) driven by the official OpenAI SDKs,
# Python (pytest) then Node (node --test), and by the Codex CLI (from the Python suite).
#
# Usage: scripts/e2e.sh
#   IMAGEGATE_BIN=/path/to/imagegate   test that binary instead of building target/debug/imagegate
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -z "${IMAGEGATE_BIN:-}" ]]; then
  # The packages and features of `cargo test` in scripts/test.sh, so the test run's build is
  # reused (without `--workspace` the dependencies' features differ and much is built again).
  echo "==> cargo build --workspace --locked --features imagegate/failpoints"
  cargo build --workspace --locked --features imagegate/failpoints
  IMAGEGATE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/imagegate"
fi
if [[ "$IMAGEGATE_BIN" != /* ]]; then
  IMAGEGATE_BIN="$root/$IMAGEGATE_BIN"
fi
if [[ ! -x "$IMAGEGATE_BIN" ]]; then
  echo "error: gateway binary not found or not executable: $IMAGEGATE_BIN" >&2
  exit 1
fi
export IMAGEGATE_BIN

venv="$root/target/e2e-venv"
echo "==> Python test environment ($venv)"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/python/requirements.txt

echo "==> npm ci (tests/e2e/node)"
(cd tests/e2e/node && npm ci --loglevel=error --no-audit --no-fund)

# The Codex CLI (pinned) that the Python suite's Codex tests run against the gateway.
echo "==> npm ci (tests/e2e/codex)"
(cd tests/e2e/codex && npm ci --loglevel=error --no-audit --no-fund)

# Both suites run even if the first fails, so one run shows every failure.
failed=()

echo "==> Python SDK end-to-end tests"
(cd tests/e2e/python && "$venv/bin/python" -m pytest) || failed+=(python)

echo "==> Node SDK end-to-end tests"
(cd tests/e2e/node && node --test) || failed+=(node)

if (( ${#failed[@]} > 0 )); then
  echo "==> end-to-end tests FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "==> end-to-end tests passed"
