#!/usr/bin/env bash
# imagegate benchmark suite, one command: installs the load tools it needs (wrk, nginx) when
# missing, builds the release binary, then runs bench/bench.py, which starts the simulator, the
# gateway and an nginx proxy_pass hop on 127.0.0.1 and writes bench/results/<date>-<commit>.md.
#
#   bench/run.sh                    # every scenario (about 10 minutes on 2 cores)
#   bench/run.sh --quick            # short smoke run
#   bench/run.sh --scenarios 1,3    # 1 small body, 2 large bodies, 3 thousands waiting,
#                                   # 4 uploads, 5 result download + base64
#   bench/run.sh --scenarios 1,6    # 6 one replica on PostgreSQL + Redis vs the embedded store
#                                   # (not in the default set: it needs both servers)
#   bench/run.sh --holds 1000,5000,10000 --hold-latency 30
#   bench/run.sh --scenarios 1 --profile   # scenario 1 and the gateway's top frames (perf)
#
# Scenario 6 runs under scripts/services.sh, which installs Debian's postgresql and redis-server
# when missing, starts a throwaway PostgreSQL and Redis on loopback ports, and stops them after
# the suite; their URLs are passed to bench.py (which makes that PostgreSQL durable first).
#
# Not a CI gate. Needs Linux (/proc), Python 3.10+, cargo; apt-get for the tools when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
if [[ " $* " == *" --profile "* ]]; then command -v perf >/dev/null 2>&1 || missing+=(linux-perf); fi
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

echo "==> cargo build --release --locked (the gateway, and the bare Rust hop of scenario 1)"
cargo build --release --locked --quiet --bin imagegate --example bare_hop

# 10,000 waiting requests need as many sockets in the client and in the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

target="${CARGO_TARGET_DIR:-target}"
bench=(python3 bench/bench.py --binary "$target/release/imagegate"
  --hop-binary "$target/release/examples/bare_hop" --command "bench/run.sh $*" "$@")

# Scenario 6 among the scenarios: PostgreSQL and Redis for the duration of the suite.
scenarios=""
while (($#)); do
  case "$1" in
    --scenarios) scenarios="${2:-}"; (($# > 1)) && shift ;;
    --scenarios=*) scenarios="${1#--scenarios=}" ;;
  esac
  shift
done
if [[ ",${scenarios// /}," == *,6,* ]]; then
  # shellcheck disable=SC2016 # expanded by the inner shell, once services.sh has exported them
  exec scripts/services.sh run -- bash -c \
    'exec "$@" --database-url "$IMAGEGATE_TEST_DATABASE_URL" --redis-url "$IMAGEGATE_TEST_REDIS_URL"' \
    bench "${bench[@]}"
fi
exec "${bench[@]}"
