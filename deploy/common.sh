# Shared settings for the local stack scripts. Sourced, never run.
# Everything the stack writes lives under STACK_DIR (git-ignored), so a clone can be wiped with one rm.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
STACK_KAFKA_PORT=${STACK_KAFKA_PORT:-19092}
STACK_KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-19093}
STACK_REDIS_PORT=${STACK_REDIS_PORT:-16379}
# Redis's maxmemory (each cluster node's): full, it refuses writes and the gateway answers 503, never evicts
STACK_REDIS_MAXMEMORY=${STACK_REDIS_MAXMEMORY:-2gb}
# PostgreSQL (deploy/postgres.sh): a cluster in PG_HOME, the application's role and database, and the
# role's password, made on the first start (PG_HOME/password).
STACK_POSTGRES_PORT=${STACK_POSTGRES_PORT:-15432}
PG_HOME=$STACK_DIR/postgres
PG_ROLE=settlement
PG_DB=settlement
# Network faults (deploy/toxiproxy.sh): the broker's third listener, FAULTS, is reached only through
# toxiproxy's `kafka` proxy and advertises the proxy, so a client bootstrapped there stays behind it.
STACK_KAFKA_FAULTS_PORT=${STACK_KAFKA_FAULTS_PORT:-19096}
STACK_KAFKA_PROXY_PORT=${STACK_KAFKA_PROXY_PORT:-19095}
STACK_REDIS_PROXY_PORT=${STACK_REDIS_PROXY_PORT:-16380}
STACK_TOXIPROXY_PORT=${STACK_TOXIPROXY_PORT:-18474}
# STACK picks the stack: `single` (default: the Redis and the Kafka broker above) or `cluster`, beside it
# with ports and folders of its own: three combined KRaft nodes (deploy/kafka-cluster.sh, in
# STACK_DIR/kafka-cluster) and a Redis Cluster of three masters and three replicas (deploy/redis-cluster.sh,
# in STACK_DIR/redis-cluster). Both use the same PostgreSQL. Kafka node N (1-3) listens on
# STACK_KAFKA_CLUSTER_PORT+N-1 (PLAINTEXT: 19192-19194) and STACK_KAFKA_CLUSTER_CONTROLLER_PORT+N-1
# (CONTROLLER: 19292-19294), with a heap of STACK_KAFKA_CLUSTER_HEAP; Redis node i (0-5) on
# STACK_REDIS_CLUSTER_PORT+i (17001-17006) and its cluster bus on STACK_REDIS_CLUSTER_BUS_PORT+i
# (17101-17106; Redis's default, the port + 10000, would take 27001-27006, where other Redis servers run here).
STACK=${STACK:-single}
STACK_KAFKA_CLUSTER_PORT=${STACK_KAFKA_CLUSTER_PORT:-19192}
STACK_KAFKA_CLUSTER_CONTROLLER_PORT=${STACK_KAFKA_CLUSTER_CONTROLLER_PORT:-19292}
STACK_KAFKA_CLUSTER_HEAP=${STACK_KAFKA_CLUSTER_HEAP:-512m}
STACK_REDIS_CLUSTER_PORT=${STACK_REDIS_CLUSTER_PORT:-17001}
STACK_REDIS_CLUSTER_BUS_PORT=${STACK_REDIS_CLUSTER_BUS_PORT:-17101}
# shellcheck disable=SC2034 # read by the scripts that source this file
KAFKA_CLUSTER_NODES=3 REDIS_CLUSTER_NODES=6
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

case "$STACK" in single | cluster) ;; *) die "STACK must be single or cluster, not '$STACK'" ;; esac

# addresses FIRST_PORT COUNT: 127.0.0.1:FIRST_PORT,127.0.0.1:FIRST_PORT+1,... (COUNT of them)
addresses() {
  local i list=()
  for ((i = 0; i < $2; i++)); do list+=("127.0.0.1:$(($1 + i))"); done
  (IFS=, && echo "${list[*]}")
}

# single_stack_only WHAT: refuse STACK=cluster for what acts on the single broker and Redis themselves
single_stack_only() {
  [ "$STACK" = single ] || die "$1 runs on the single-node stack only (it stops, kills and proxies its broker and Redis): unset STACK"
}

# pid_alive PIDFILE: true when the file names a live process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE NAME SECONDS: TERM, wait, then KILL; removes the pid file.
stop_pid() {
  local pidfile=$1 name=$2 grace=${3:-20} pid i
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "$name stopped"; return 0; }
    sleep 0.1
  done
  say "$name did not stop in ${grace}s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# stop_all NAME GRACE PIDFILE...: stop_pid for several processes at once (the nodes of a cluster: a node's
# clean shutdown may need the others); each is named NAME and its pid file's folder
stop_all() {
  local name=$1 grace=$2 pidfile
  shift 2
  for pidfile in "$@"; do stop_pid "$pidfile" "$name $(basename "$(dirname "$pidfile")")" "$grace" & done
  wait
}

# all_alive NAME PIDFILE...: true when every one runs; when some but not all do, names the others on stderr
all_alive() {
  local name=$1 pidfile down=()
  shift
  for pidfile in "$@"; do pid_alive "$pidfile" || down+=("$(basename "$(dirname "$pidfile")")"); done
  [ ${#down[@]} -eq 0 ] && return 0
  [ ${#down[@]} -eq $# ] || say "$name: ${down[*]} not running"
  return 1
}

# kill_pid PIDFILE NAME: SIGKILL (a crash: nothing flushed, no goodbye to the rest of a cluster), wait
# until the process is gone; removes the pid file
kill_pid() {
  local pidfile=$1 name=$2 pid i
  pid_alive "$pidfile" || die "$name is not running"
  pid=$(cat "$pidfile")
  kill -KILL "$pid"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
  say "$name killed (pid $pid)"
}

# postgres_url: the local PostgreSQL's URL for the application role, with its password once it exists
# (hex, so nothing in it needs quoting).
postgres_url() {
  local password=""
  [ ! -r "$PG_HOME/password" ] || password=:$(cat "$PG_HOME/password")
  echo "postgresql://$PG_ROLE$password@127.0.0.1:$STACK_POSTGRES_PORT/$PG_DB"
}

# stop_started: stop what use_stack started (a script with more to clean up calls it from its own trap).
# toxiproxy, which tests may have started in front of the single stack, goes with the stack it fronts.
stop_started() {
  local fronts=toxiproxy
  [ "$STACK" = single ] || fronts=""
  [ -z "${started:-}" ] || "$ROOT/deploy/stack.sh" down $fronts $started
}

# use_stack: bring the local stack up (or reuse what runs or is configured), stop on exit only what
# this script started, and export the GATEWAY_* variables that point at it. For run.sh, test.sh, bench.sh.
use_stack() {
  started=$("$ROOT/deploy/stack.sh" up)
  trap stop_started EXIT
  set -a
  eval "$("$ROOT/deploy/stack.sh" env)"
  set +a
}

# apt_install PACKAGE...: Debian packages from apt (with sudo unless root), refreshing stale lists once
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  # the package lists are needed first on a fresh machine (or image) and when they are stale
  if ! apt-cache show "$@" >/dev/null 2>&1; then $sudo apt-get update -qq >&2 || true; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 \
    || { $sudo apt-get update -qq >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; }
}

# install_redis: redis-server (and redis-cli) from apt when missing
install_redis() {
  command -v redis-server >/dev/null && return 0
  say "redis-server is missing; installing it from apt"
  apt_install redis-server || die "could not install redis-server; install it with your package manager"
}

# install_promtool: promtool (`make test` checks and unit-tests the alert rules with it) from Debian's
# prometheus package when missing. The package holds the server too, and its install script enables it
# and starts it on :9090 (systemd, or its init script where there is none); a test machine runs no
# Prometheus of its own, so what the install enabled and started is disabled and stopped again. Without
# recommends: prometheus-node-exporter would be one more server (:9100).
install_promtool() {
  command -v promtool >/dev/null && return 0
  say "promtool is missing; installing Debian's prometheus package (apt) for the alert rules' tests"
  apt_install -o APT::Install-Recommends=false prometheus \
    || die "could not install promtool (Debian's prometheus package); install it with your package manager"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >&2 || true
  elif [ -x /etc/init.d/prometheus ]; then
    $sudo /etc/init.d/prometheus stop >&2 || true
    # the init script's links, and the systemd unit's that the install made as well (for a later boot
    # with systemd; update-rc.d removes those through systemctl)
    $sudo update-rc.d prometheus disable >&2 || true
  fi
  command -v promtool >/dev/null || die "the prometheus package installed no promtool"
}

# wait_redis PORT LOG: until our Redis on PORT answers PING. 20 s to answer at all; a Redis loading a
# large AOF answers LOADING, and gets STACK_REDIS_START_TIMEOUT (300 s).
wait_redis() {
  local started=$SECONDS limit=20 answer
  while :; do
    answer=$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null || true)
    [ "$answer" = PONG ] && return 0
    if [[ "$answer" == *LOADING* && $limit -eq 20 ]]; then
      limit=${STACK_REDIS_START_TIMEOUT:-300}
      say "Redis on 127.0.0.1:$1 is loading its data from the AOF; waiting up to ${limit}s"
    fi
    [ $((SECONDS - started)) -lt "$limit" ] || die "Redis on 127.0.0.1:$1 did not answer PING within ${limit}s; see $2"
    sleep 0.1
  done
}
