# Shared settings for the local stack scripts. Sourced, never run.
# Everything the stack writes lives under STACK_DIR (git-ignored), so a clone can be wiped with one rm.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
STACK_KAFKA_PORT=${STACK_KAFKA_PORT:-19092}
STACK_KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-19093}
STACK_REDIS_PORT=${STACK_REDIS_PORT:-16379}
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
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

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

# postgres_url: the local PostgreSQL's URL for the application role, with its password once it exists
# (hex, so nothing in it needs quoting).
postgres_url() {
  local password=""
  [ ! -r "$PG_HOME/password" ] || password=:$(cat "$PG_HOME/password")
  echo "postgresql://$PG_ROLE$password@127.0.0.1:$STACK_POSTGRES_PORT/$PG_DB"
}

# stop_started: stop what use_stack started (a script with more to clean up calls it from its own trap).
stop_started() { [ -z "${started:-}" ] || "$ROOT/deploy/stack.sh" down toxiproxy $started; }

# use_stack: bring the local stack up (or reuse what runs or is configured), stop on exit only what
# this script started, and export the GATEWAY_* variables that point at it. For run.sh, test.sh, bench.sh.
use_stack() {
  started=$("$ROOT/deploy/stack.sh" up)
  # toxiproxy, which tests may have started in front of the stack, goes with the stack it fronts
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
