#!/usr/bin/env bash
# A throwaway PostgreSQL and Redis for the test suite: both on free loopback ports, with their
# files in a fresh temporary directory, started once per run and always stopped and removed.
#
# Usage:
#   scripts/services.sh run -- CMD [ARGS...]
#       Installs Debian's postgresql and redis-server packages when their binaries are missing,
#       starts a new PostgreSQL cluster and a Redis server, runs CMD with the variables below,
#       then stops both servers, removes their files and exits with CMD's status. On SIGINT,
#       SIGTERM or SIGHUP the signal is passed on to CMD and the servers are stopped all the same.
#   scripts/services.sh pg-stop       stop the PostgreSQL server (fast), return once it is down
#   scripts/services.sh pg-start      start it again (same port, same data), return once it accepts
#   scripts/services.sh redis-stop    stop the Redis server, return once it is down
#   scripts/services.sh redis-start   start a new, empty Redis on the same port, return once it answers
#   The four helpers are for tests that simulate an outage: they read the variables that `run`
#   exports (so they only work under `run`) and do nothing when the server is already down or up.
#
# Variables exported to CMD:
#   IMAGEGATE_TEST_DATABASE_URL   postgres://imagegate@127.0.0.1:PORT/imagegate (the role
#                                 `imagegate` is a superuser with CREATEDB; no password)
#   IMAGEGATE_TEST_REDIS_URL      redis://127.0.0.1:PORT/
#   IMAGEGATE_TEST_PG_BIN         /usr/lib/postgresql/VERSION/bin
#   IMAGEGATE_TEST_PG_DATA        the cluster's data directory (for `pg_ctl -D`)
#   IMAGEGATE_TEST_PG_PORT        the PostgreSQL port
#   IMAGEGATE_TEST_PG_USER        the OS user that owns the cluster and must run pg_ctl (`postgres`
#                                 when run as root, else the current user); also the name of the
#                                 cluster's bootstrap superuser role
#   IMAGEGATE_TEST_REDIS_PORT     the Redis port
#   IMAGEGATE_TEST_REDIS_PID      the pid of the first Redis server (after `redis-start` the
#                                 current pid is in IMAGEGATE_TEST_REDIS_PIDFILE)
#   IMAGEGATE_TEST_REDIS_PIDFILE  the file holding the running Redis server's pid
#   IMAGEGATE_TEST_SERVICES_DIR   the temporary directory of both servers (logs: pg/postgres.log,
#                                 redis/redis.log)
#   IMAGEGATE_TEST_SERVICES       the absolute path of this script (for the helpers)
#
# Environment: TMPDIR (default /tmp) is where the temporary directory is created.
set -euo pipefail

script="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

# Bounds of the waits, in tenths of a second.
readonly START_TIMEOUT=300 # a server accepting connections
readonly STOP_TIMEOUT=300  # a server gone

die() {
  echo "services.sh: error: $*" >&2
  exit 1
}

usage() {
  sed -n '/^# Usage:/,/^# Environment:/{/^# Environment:/d;s/^# \{0,1\}//;p}' "$script" >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Installation

# The newest PostgreSQL server installed from Debian's packages: /usr/lib/postgresql/<ver>/bin.
pg_bin_dir() {
  local dir
  dir="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' -executable \
    2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$dir" ]] && dirname "$dir"
}

install_packages() {
  local packages=() sudo=() out
  pg_bin_dir >/dev/null || packages+=(postgresql)
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    packages+=(redis-server redis-tools)
  fi
  ((${#packages[@]} > 0)) || return 0
  echo "==> installing Debian packages: ${packages[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 ||
      die "${packages[*]} not installed and sudo not available: install them as root"
    sudo=(sudo)
  fi
  if ! out="$("${sudo[@]}" apt-get update -qq 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "apt-get update failed"
  fi
  if ! out="$("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends -o DPkg::Lock::Timeout=120 "${packages[@]}" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "apt-get install ${packages[*]} failed"
  fi
  pg_bin_dir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb"
  command -v redis-server >/dev/null 2>&1 || die "redis-server installed but not on PATH"
  command -v redis-cli >/dev/null 2>&1 || die "redis-tools installed but redis-cli not on PATH"
}

# ---------------------------------------------------------------------------------------------
# Helpers

# N free loopback ports, below the ephemeral range so that no outgoing connection of the tests
# takes one while its server is stopped for an outage test.
free_ports() {
  local n="$1" python=""
  # Debian's python3 first: a version manager's shim can take a noticeable time to start.
  if [[ -x /usr/bin/python3 ]]; then
    python=/usr/bin/python3
  elif command -v python3 >/dev/null 2>&1; then
    python=python3
  fi
  if [[ -n "$python" ]]; then
    "$python" - "$n" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except OSError:
    low = 32768
candidates = list(range(15000, low)) if low > 16000 else []
random.shuffle(candidates)
held, ports = [], []
for port in candidates + [0] * n:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(s.getsockname()[1])
    if len(ports) == n:
        break
print(" ".join(map(str, ports)))
EOF
  else
    # Without python3: random ports nobody answers on (a connection to a closed loopback port
    # is refused at once).
    local ports=() port tries=0
    while ((${#ports[@]} < n && tries < 1000)); do
      tries=$((tries + 1))
      port=$((15000 + (RANDOM * 32768 + RANDOM) % 15000))
      [[ " ${ports[*]} " == *" $port "* ]] && continue
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        ports+=("$port")
      fi
    done
    echo "${ports[*]}"
  fi
}

# Whether a process is alive (not gone, not a zombie).
alive() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

# Runs a command as the OS user that owns the PostgreSQL cluster, in a directory it can read.
as_pg_user() {
  local user="$1"
  shift
  if [[ "$(id -un)" == "$user" ]]; then
    "$@"
  elif [[ $(id -u) -eq 0 ]]; then
    if command -v runuser >/dev/null 2>&1; then
      (cd / && runuser -u "$user" -- "$@")
    else
      (cd / && setpriv --reuid="$user" --regid="$user" --init-groups -- "$@")
    fi
  else
    command -v sudo >/dev/null 2>&1 || die "the cluster belongs to $user: run as $user or root"
    (cd / && sudo -n -u "$user" -- "$@")
  fi
}

# pg_isready's status: 0 accepting, 1 rejecting (starting up or shutting down), 2 no response.
pg_ready() {
  local status=0
  "$1/pg_isready" -q -h 127.0.0.1 -p "$2" -t 1 || status=$?
  return "$status"
}

pg_wait() { # BIN PORT WANT(0|2) LOG
  local i limit=$START_TIMEOUT
  [[ $3 -eq 2 ]] && limit=$STOP_TIMEOUT
  for ((i = 0; i < limit; i++)); do
    local status=0
    pg_ready "$1" "$2" || status=$?
    [[ $status -eq $3 ]] && return 0
    sleep 0.1
  done
  [[ -n "${4:-}" && -r "$4" ]] && tail -n 20 "$4" >&2
  if [[ $3 -eq 0 ]]; then
    die "PostgreSQL on 127.0.0.1:$2 does not accept connections after $((START_TIMEOUT / 10)) s"
  fi
  die "PostgreSQL on 127.0.0.1:$2 still answers after $((STOP_TIMEOUT / 10)) s"
}

# Starts the cluster (its port and settings are in its postgresql.conf) in a session of its own,
# so a signal to the test's process group does not reach it, and returns once it accepts.
pg_start() { # BIN DATA PORT USER
  local log
  log="$(dirname "$2")/postgres.log"
  if ! as_pg_user "$4" setsid -w "$1/pg_ctl" -D "$2" -l "$log" -w -t $((START_TIMEOUT / 10)) \
    start >/dev/null; then
    [[ -r "$log" ]] && tail -n 20 "$log" >&2
    return 1
  fi
  pg_wait "$1" "$3" 0 "$log"
}

# Whether the cluster's postmaster runs (pg_ctl status: 0 running, 3 not, 4 no data directory).
pg_running() { # BIN DATA USER
  as_pg_user "$3" "$1/pg_ctl" -D "$2" status >/dev/null 2>&1
}

pg_stop() { # BIN DATA PORT USER MODE
  pg_running "$1" "$2" "$4" || return 0
  as_pg_user "$4" "$1/pg_ctl" -D "$2" -m "$5" -w -t $((STOP_TIMEOUT / 10)) stop >/dev/null ||
    die "pg_ctl stop failed (data: $2)"
  pg_wait "$1" "$3" 2
}

# Whether Redis answers on the port (bounded: whatever else might listen there may not answer).
redis_ping() {
  [[ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == PONG ]]
}

# Starts a new, empty Redis server in the background, in a session of its own, and returns once
# it answers; sets redis_pid. Fails (status 1, the log on stderr) if it does not start.
redis_start() { # DIR PORT
  local i
  rm -f "$1/redis.pid"
  setsid redis-server --port "$2" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$1" --pidfile "$1/redis.pid" --logfile '' --loglevel warning \
    </dev/null >>"$1/redis.log" 2>&1 &
  redis_pid=$!
  for ((i = 0; i < START_TIMEOUT; i++)); do
    alive "$redis_pid" || break
    redis_ping "$2" && return 0
    sleep 0.1
  done
  tail -n 20 "$1/redis.log" >&2
  kill -KILL "$redis_pid" 2>/dev/null || true
  return 1
}

# Stops the Redis server whose pid is in DIR/redis.pid (or PID), returns once it is gone.
redis_stop() { # DIR PORT [PID]
  local pid="" i
  [[ -r "$1/redis.pid" ]] && pid="$(cat "$1/redis.pid" 2>/dev/null || true)"
  [[ -z "$pid" ]] && pid="${3:-}"
  if [[ -n "$pid" ]] && alive "$pid" &&
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT; i++)); do
      alive "$pid" || break
      if ((i == 50)); then # not gone after 5 s
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  fi
  rm -f "$1/redis.pid"
  for ((i = 0; i < STOP_TIMEOUT; i++)); do
    redis_ping "$2" || return 0
    sleep 0.1
  done
  die "Redis on 127.0.0.1:$2 still answers after $((STOP_TIMEOUT / 10)) s"
}

require_env() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "$name is not set: run this under \`scripts/services.sh run -- ...\`"
  done
}

# ---------------------------------------------------------------------------------------------
# run

tmp=""
pg_bin=""
pg_data=""
pg_port=""
pg_user=""
redis_port=""
redis_pid=""
cmd_pid=""

cleanup() {
  set +e
  trap '' INT TERM HUP
  if [[ -n "$cmd_pid" ]] && alive "$cmd_pid"; then
    kill -TERM "$cmd_pid" 2>/dev/null
    wait "$cmd_pid" 2>/dev/null
  fi
  if [[ -n "$pg_data" && -e "$pg_data/postmaster.pid" ]]; then
    # Immediate: the data is thrown away.
    if ! as_pg_user "$pg_user" "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w -t 30 stop \
      >/dev/null 2>&1; then
      local pid
      pid="$(head -n 1 "$pg_data/postmaster.pid" 2>/dev/null)"
      [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null
    fi
  fi
  if [[ -n "$tmp" && -d "$tmp/redis" && -n "$redis_port" ]]; then
    (redis_stop "$tmp/redis" "$redis_port" "$redis_pid") 2>/dev/null
  fi
  [[ -n "$tmp" ]] && rm -rf "$tmp"
}

# PID and its descendants, as pid:starttime (the start time tells a reused pid apart).
process_tree() {
  local f stat rest fields pid out=()
  local -A children=() start=()
  for f in /proc/[0-9]*/stat; do
    { read -r stat <"$f"; } 2>/dev/null || continue
    pid="${stat%% *}"
    rest="${stat##*) }"
    read -r -a fields <<<"$rest"
    children[${fields[1]}]+=" $pid"
    start[$pid]="${fields[19]}"
  done
  local queue=("$1")
  while ((${#queue[@]} > 0)); do
    pid="${queue[0]}"
    queue=("${queue[@]:1}")
    [[ -n "${start[$pid]:-}" ]] && out+=("$pid:${start[$pid]}")
    # shellcheck disable=SC2206 # a list of pids
    queue+=(${children[$pid]:-})
  done
  echo "${out[*]}"
}

# The processes of a process_tree that still run (not zombies, same start time).
tree_alive() {
  local entry stat rest fields out=()
  for entry in "$@"; do
    { read -r stat <"/proc/${entry%%:*}/stat"; } 2>/dev/null || continue
    rest="${stat##*) }"
    read -r -a fields <<<"$rest"
    [[ "${fields[0]}" != Z && "${fields[19]}" == "${entry##*:}" ]] && out+=("$entry")
  done
  echo "${out[*]}"
}

# A signal while CMD runs: pass it on to CMD and its descendants (CMD may not pass it on itself:
# cargo does not to the test binaries), wait until they are gone (SIGTERM to those left after
# 3 s, SIGKILL after 15 s: a shell's background jobs ignore SIGINT), exit as the signal says.
on_signal() {
  local sig="$1" code="$2" i entry tree=()
  trap '' INT TERM HUP
  if [[ -n "$cmd_pid" ]]; then
    read -r -a tree <<<"$(process_tree "$cmd_pid")"
    for entry in "${tree[@]}"; do
      kill -s "$sig" "${entry%%:*}" 2>/dev/null || true
    done
    for ((i = 0; i < 150; i++)); do
      read -r -a tree <<<"$(tree_alive "${tree[@]}")"
      ((${#tree[@]} > 0)) || break
      if ((i == 30)); then
        for entry in "${tree[@]}"; do
          kill -TERM "${entry%%:*}" 2>/dev/null || true
        done
      fi
      sleep 0.1
    done
    for entry in "${tree[@]}"; do
      kill -KILL "${entry%%:*}" 2>/dev/null || true
    done
    wait "$cmd_pid" 2>/dev/null || true
    cmd_pid=""
  fi
  exit "$code"
}

run() {
  [[ "${1:-}" == -- ]] && shift
  (($# > 0)) || usage

  trap cleanup EXIT
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
  trap 'on_signal HUP 129' HUP

  install_packages
  command -v setsid >/dev/null 2>&1 || die "setsid (util-linux) not found"
  pg_bin="$(pg_bin_dir)" || die "no PostgreSQL server found in /usr/lib/postgresql"
  local pg_version
  pg_version="$(basename "$(dirname "$pg_bin")")"

  if [[ $(id -u) -eq 0 ]]; then
    pg_user=postgres
    id -u "$pg_user" >/dev/null 2>&1 ||
      die "running as root, but there is no \`postgres\` user to run PostgreSQL as"
  else
    pg_user="$(id -un)"
  fi

  local base="${TMPDIR:-/tmp}"
  base="${base%/}"
  [[ -d "$base" && -w "$base" ]] || die "temporary directory $base does not exist or is not writable"
  tmp="$(mktemp -d "$base/imagegate-services.XXXXXX")" ||
    die "cannot create a temporary directory in $base"
  mkdir "$tmp/pg" "$tmp/redis"
  pg_data="$tmp/pg/data"
  if [[ $(id -u) -eq 0 ]]; then
    chmod 711 "$tmp"
    chown "$pg_user:" "$tmp/pg"
    as_pg_user "$pg_user" test -w "$tmp/pg" ||
      die "the $pg_user user cannot reach $tmp: set TMPDIR to a directory it can (e.g. /tmp)"
  fi

  local ports
  read -r -a ports <<<"$(free_ports 2)"
  ((${#ports[@]} == 2)) || die "cannot find two free loopback ports"
  pg_port="${ports[0]}"
  redis_port="${ports[1]}"

  # PostgreSQL: a new cluster, trust authentication (loopback only: it listens on nothing else).
  local out
  if ! out="$(as_pg_user "$pg_user" "$pg_bin/initdb" -D "$pg_data" -A trust -E UTF8 --locale=C \
    --no-sync --no-instructions 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "initdb failed"
  fi
  # The Unix socket next to the data, if its path fits (108 bytes); the tests use TCP anyway.
  local sockets="$tmp/pg"
  ((${#sockets} + 18 > 107)) && sockets=""
  # Settings in postgresql.conf (not on pg_ctl's command line), so `pg_ctl start` keeps them.
  # For tests only: no durability.
  cat >>"$pg_data/postgresql.conf" <<EOF

# scripts/services.sh
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$sockets'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
lc_messages = 'C'
EOF
  local attempt
  for attempt in 1 2 3; do
    pg_start "$pg_bin" "$pg_data" "$pg_port" "$pg_user" 2>"$tmp/pg/start.err" && break
    # Someone took the port since it was picked: another one.
    if ((attempt < 3)) && grep -qi 'could not bind\|address already in use' \
      "$tmp/pg/postgres.log" 2>/dev/null; then
      read -r -a ports <<<"$(free_ports 1)"
      pg_port="${ports[0]}"
      echo "port = $pg_port" >>"$pg_data/postgresql.conf"
      continue
    fi
    cat "$tmp/pg/start.err" >&2
    die "PostgreSQL $pg_version did not start (log: above)"
  done
  rm -f "$tmp/pg/start.err"
  if ! out="$("$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U "$pg_user" \
    -d postgres 2>&1 <<'EOF'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'imagegate') THEN
    CREATE ROLE imagegate LOGIN SUPERUSER CREATEDB;
  END IF;
END
$$;
CREATE DATABASE imagegate OWNER imagegate;
EOF
  )"; then
    printf '%s\n' "$out" >&2
    die "cannot create the role and database imagegate"
  fi
  echo "==> PostgreSQL $pg_version on 127.0.0.1:$pg_port"

  # Redis: no persistence, nothing but loopback.
  local redis_version
  redis_version="$(redis-server --version | sed -n 's/.* v=\([0-9]*\.[0-9]*\).*/\1/p')"
  for attempt in 1 2 3; do
    redis_start "$tmp/redis" "$redis_port" 2>"$tmp/redis/start.err" && break
    if ((attempt < 3)) && grep -qi 'address already in use' "$tmp/redis/start.err"; then
      read -r -a ports <<<"$(free_ports 1)"
      redis_port="${ports[0]}"
      continue
    fi
    cat "$tmp/redis/start.err" >&2
    die "Redis did not start (log: above)"
  done
  rm -f "$tmp/redis/start.err"
  echo "==> Redis ${redis_version:-?} on 127.0.0.1:$redis_port"

  export IMAGEGATE_TEST_DATABASE_URL="postgres://imagegate@127.0.0.1:$pg_port/imagegate"
  export IMAGEGATE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/"
  export IMAGEGATE_TEST_PG_BIN="$pg_bin"
  export IMAGEGATE_TEST_PG_DATA="$pg_data"
  export IMAGEGATE_TEST_PG_PORT="$pg_port"
  export IMAGEGATE_TEST_PG_USER="$pg_user"
  export IMAGEGATE_TEST_REDIS_PORT="$redis_port"
  export IMAGEGATE_TEST_REDIS_PID="$redis_pid"
  export IMAGEGATE_TEST_REDIS_PIDFILE="$tmp/redis/redis.pid"
  export IMAGEGATE_TEST_SERVICES_DIR="$tmp"
  export IMAGEGATE_TEST_SERVICES="$script"

  # CMD in the background (with SIGINT and SIGQUIT back to their defaults and this script's
  # stdin) so that a signal to this script is handled at once, not after CMD ends.
  (
    trap - INT QUIT TERM HUP EXIT
    exec "$@"
  ) <&0 &
  cmd_pid=$!
  local status=0
  wait "$cmd_pid" 2>/dev/null || status=$?
  cmd_pid=""
  # Instead of bash's report of a job killed by a signal, which shows this script's internals.
  if ((status > 128 && status <= 128 + 64)); then
    echo "services.sh: $1 ended with status $status (SIG$(kill -l "$status" 2>/dev/null))" >&2
  fi
  exit "$status"
}

# ---------------------------------------------------------------------------------------------

case "${1:-}" in
  run)
    shift
    run "$@"
    ;;
  pg-stop | pg-start)
    require_env IMAGEGATE_TEST_PG_BIN IMAGEGATE_TEST_PG_DATA IMAGEGATE_TEST_PG_PORT \
      IMAGEGATE_TEST_PG_USER
    [[ -d "$IMAGEGATE_TEST_PG_DATA" ]] || die "no data directory $IMAGEGATE_TEST_PG_DATA"
    if [[ "$1" == pg-stop ]]; then
      pg_stop "$IMAGEGATE_TEST_PG_BIN" "$IMAGEGATE_TEST_PG_DATA" "$IMAGEGATE_TEST_PG_PORT" \
        "$IMAGEGATE_TEST_PG_USER" fast
    else
      if pg_running "$IMAGEGATE_TEST_PG_BIN" "$IMAGEGATE_TEST_PG_DATA" "$IMAGEGATE_TEST_PG_USER"
      then
        pg_wait "$IMAGEGATE_TEST_PG_BIN" "$IMAGEGATE_TEST_PG_PORT" 0
      else
        pg_start "$IMAGEGATE_TEST_PG_BIN" "$IMAGEGATE_TEST_PG_DATA" "$IMAGEGATE_TEST_PG_PORT" \
          "$IMAGEGATE_TEST_PG_USER" || die "PostgreSQL did not start (log: above)"
      fi
    fi
    ;;
  redis-stop | redis-start)
    require_env IMAGEGATE_TEST_SERVICES_DIR IMAGEGATE_TEST_REDIS_PORT
    dir="$IMAGEGATE_TEST_SERVICES_DIR/redis"
    [[ -d "$dir" ]] || die "no directory $dir"
    if [[ "$1" == redis-stop ]]; then
      redis_stop "$dir" "$IMAGEGATE_TEST_REDIS_PORT" "${IMAGEGATE_TEST_REDIS_PID:-}"
    elif ! redis_ping "$IMAGEGATE_TEST_REDIS_PORT"; then
      redis_start "$dir" "$IMAGEGATE_TEST_REDIS_PORT" || die "Redis did not start (log: above)"
    fi
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
