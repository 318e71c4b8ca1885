#!/usr/bin/env bash
# End-to-end tests: the gateway (`imagegate demo`) driven by the official OpenAI SDKs,
# Python (pytest) then Node (node --test), by the Codex CLI, and the web console (`/ui/`) driven
# in headless Chromium by Selenium (the last two from the Python suite).
#
# Usage: scripts/e2e.sh
#   IMAGEGATE_BIN=/path/to/imagegate   test that binary instead of building target/debug/imagegate
#   scripts/e2e.sh --setup-only        install Chromium, the Python venv and the Node packages only
set -euo pipefail

setup_only=""
[[ ${1:-} == --setup-only ]] && setup_only=1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The binary under test (not needed to install the tools).
if [[ -z $setup_only ]]; then
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
fi

# The web console's browser tests: Debian's Chromium and its chromedriver (fonts-liberation, a
# recommendation of chromium, so the screenshots show real text), installed when missing.
echo "==> Chromium and chromedriver (web console tests)"
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  echo "chromium or chromedriver not found: installing Debian's chromium and chromium-driver packages"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-liberation >/dev/null
fi

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

[[ -z $setup_only ]] || exit 0

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
