#!/usr/bin/env bash
# Installs everything the test command (scripts/test.sh) needs besides Rust, in one go:
#   - Debian's packages, with one `apt-get update` and one `apt-get install`: PostgreSQL and
#     Redis (Rust tests), prometheus (promtool), chromium + chromedriver (web console tests),
#     nginx-light, strace and curl (deploy check), python3-venv;
#   - the deploy check's Python tools (scripts/deploy-check.sh --setup-only);
#   - the end-to-end tests' Python venv and Node packages (scripts/e2e.sh --setup-only).
# Each script still installs what it misses on its own; this one lets CI (.ci/run) do it all at
# once, in the background while the Rust build runs, instead of one `apt-get update` per script.
# Only packages that are missing are installed. Needs root (or sudo) for apt-get.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$PATH:/usr/sbin:/sbin"

have() { command -v "$1" >/dev/null 2>&1; }

packages=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || packages+=(postgresql)
have redis-server && have redis-cli || packages+=(redis-server redis-tools)
have promtool || packages+=(prometheus)
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || packages+=(chromium chromium-driver fonts-liberation)
have nginx || packages+=(nginx-light)
have strace || packages+=(strace)
have curl || packages+=(curl)
python3 -c 'import ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)

if ((${#packages[@]})); then
  echo "==> apt-get install ${packages[*]}"
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  # Package scripts must not start services (nginx would listen on port 80, PostgreSQL would
  # start a cluster): a policy-rc.d that refuses, for the install, when there is none.
  guard=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod 0755 /usr/sbin/policy-rc.d
    guard=1
  fi
  status=0
  "${sudo[@]}" apt-get update -qq || status=$?
  if ((status == 0)); then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=120 "${packages[@]}" >/dev/null || status=$?
  fi
  [[ -z $guard ]] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
  ((status == 0)) || { echo "provision: apt-get failed ($status)" >&2; exit "$status"; }
fi

echo "==> deploy check tools"
scripts/deploy-check.sh --setup-only

echo "==> end-to-end test tools"
scripts/e2e.sh --setup-only
echo "==> provisioned"
