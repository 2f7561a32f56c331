#!/usr/bin/env bash
# Run N chatledger workers behind HAProxy on this machine, without containers.
#
#   REDIS_URL=redis://127.0.0.1:6380/0 deploy/run-local.sh [--workers N] [--port PORT]
#       [--worker-ports P1,P2,...] [--run-dir DIR]
#
# Each worker is its own `chatledger serve` process on 127.0.0.1 (ports PORT+1..PORT+N unless
# --worker-ports names them); HAProxy listens on 127.0.0.1:PORT with deploy/haproxy.cfg's settings and
# balances over them. The workers share state only through Redis, so REDIS_URL, REDIS_CLUSTER_URL or
# REDIS_SENTINEL_URL must be set; every CHATLEDGER_* variable is passed to them (CHATLEDGER_WORKERS=M
# gives each M processes).
#
# Needs haproxy (`apt-get install haproxy`) and chatledger: $CHATLEDGER if set (a command, may have
# arguments, e.g. "python -m service"), else this checkout's .venv/bin/chatledger, else `chatledger`.
# Logs and the generated haproxy.cfg go to --run-dir (default: a new temporary directory).
#
# Prints "ready: http://127.0.0.1:PORT" once HAProxy answers /readyz through the workers. SIGTERM or
# Ctrl-C stops it gracefully: HAProxy stops accepting and finishes its requests, then the workers drain
# theirs. If a worker or HAProxy dies on its own, everything is stopped and the exit status is 1.
set -euo pipefail
# Debian installs haproxy in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workers=3
port=8080
worker_ports=""
run_dir=""

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --worker-ports) worker_ports="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run-local.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

fail() { echo "run-local.sh: $*" >&2; exit 2; }
[[ -n "${REDIS_URL:-}${REDIS_CLUSTER_URL:-}${REDIS_SENTINEL_URL:-}" ]] \
  || fail "set REDIS_URL, REDIS_CLUSTER_URL or REDIS_SENTINEL_URL: the workers share every chat through Redis"
command -v haproxy >/dev/null || fail "haproxy not found (apt-get install haproxy)"
if [[ -n "${CHATLEDGER:-}" ]]; then
  read -ra chatledger <<<"$CHATLEDGER"
elif [[ -x "$here/../.venv/bin/chatledger" ]]; then
  chatledger=("$here/../.venv/bin/chatledger")
else
  command -v chatledger >/dev/null || fail "chatledger not found: set CHATLEDGER or run make in the checkout"
  chatledger=(chatledger)
fi
if [[ -n "$worker_ports" ]]; then
  IFS=, read -ra ports <<<"$worker_ports"
  workers=${#ports[@]}
else
  ports=()
  for ((i = 1; i <= workers; i++)); do ports+=($((port + i))); done
fi
((workers >= 1)) || fail "--workers must be at least 1"
run_dir="${run_dir:-$(mktemp -d -t chatledger-local-XXXXXX)}"
mkdir -p "$run_dir"
base_path="${CHATLEDGER_BASE_PATH:-}"
base_path="${base_path%/}"
[[ -z "$base_path" || "$base_path" == /* ]] || base_path="/$base_path"

worker_pids=()
haproxy_pid=""

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# HAProxy first (SIGUSR1: soft stop, it finishes what it forwarded), then the workers (SIGTERM: they
# finish their in-flight requests). The other order would refuse requests HAProxy still holds.
shutdown() {
  trap - TERM INT
  if alive "$haproxy_pid"; then
    kill -USR1 "$haproxy_pid" 2>/dev/null || true
    wait "$haproxy_pid" 2>/dev/null || true
  fi
  for pid in "${worker_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${worker_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  echo "stopped" >&2
}
# Whatever path leads out, leave no process behind.
on_exit() {
  for pid in "$haproxy_pid" "${worker_pids[@]}"; do
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}
trap on_exit EXIT
trap 'shutdown; exit 0' TERM INT

# GET path on 127.0.0.1:port; true on a 200. Plain bash: curl may not be installed.
http_ok() {
  local status
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  IFS= read -r status <&3 || status=""
  exec 3>&- 3<&-
  [[ "$status" == *" 200 "* ]]
}

# Poll until GET answers 200, for at most 30 s; fail if the process to watch died meanwhile.
wait_ready() {
  local port="$1" path="$2" pid="$3" name="$4"
  for ((tries = 0; tries < 300; tries++)); do
    alive "$pid" || { echo "run-local.sh: $name exited; see $run_dir" >&2; return 1; }
    if http_ok "$port" "$path" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-local.sh: $name did not answer $path on port $port; see $run_dir" >&2
  return 1
}

for ((i = 0; i < workers; i++)); do
  "${chatledger[@]}" serve --host 127.0.0.1 --port "${ports[i]}" >"$run_dir/worker-$((i + 1)).log" 2>&1 &
  worker_pids+=($!)
done
for ((i = 0; i < workers; i++)); do
  wait_ready "${ports[i]}" "$base_path/readyz" "${worker_pids[i]}" "worker $((i + 1))" || exit 1
done

# deploy/haproxy.cfg with this machine's bind address, health-check path and servers.
servers=""
for ((i = 0; i < workers; i++)); do
  servers+="    server worker$((i + 1)) 127.0.0.1:${ports[i]}"$'\n'
done
awk -v bind="    bind 127.0.0.1:$port" -v check="    option httpchk GET $base_path/readyz" \
  -v servers="$servers" '
  /^[[:space:]]*bind / { print bind; next }
  /^[[:space:]]*option httpchk / { print check; next }
  /^[[:space:]]*server / { next }
  /^[[:space:]]*# servers:/ { print; printf "%s", servers; next }
  { print }
' "$here/haproxy.cfg" >"$run_dir/haproxy.cfg"
haproxy -W -db -f "$run_dir/haproxy.cfg" >"$run_dir/haproxy.log" 2>&1 &
haproxy_pid=$!
wait_ready "$port" "$base_path/readyz" "$haproxy_pid" "haproxy" || exit 1

echo "ready: http://127.0.0.1:$port$base_path ($workers workers on ports ${ports[*]}; logs in $run_dir)"

# Until a signal (the trap stops everything and exits 0) or until one process dies on its own.
wait -n "$haproxy_pid" "${worker_pids[@]}" || true
echo "run-local.sh: a worker or HAProxy exited on its own; stopping; see $run_dir" >&2
shutdown
exit 1
