#!/usr/bin/env bash
# Project-owned PostgreSQL for the settlement processor and the status API: one cluster under
# .stack/postgres, listening on 127.0.0.1:STACK_POSTGRES_PORT (15432) only. Never touches a server on 5432.
#   deploy/postgres.sh install   Debian's postgresql package from apt when missing; as root, the user below
#   deploy/postgres.sh start     install if needed, initdb on the first start, start, wait for a real login
#   deploy/postgres.sh stop      fast shutdown (sessions ended, open transactions rolled back), 30 s grace
#   deploy/postgres.sh status    exit 0 when our server is running
# In .stack/postgres: data/ (the cluster), postgres.log, run/ (the Unix socket), password (the role's).
#
# PostgreSQL refuses to run as root. Run as root (CI, these machines), initdb, pg_ctl and the server run
# as the system user settlement-pg (made here: no login shell, no home); otherwise as the current user.
#
# Logins: the application role `settlement` (owner of the database `settlement`) over TCP with a
# password (scram-sha-256) made at the first start and kept in .stack/postgres/password (mode 600):
# `deploy/stack.sh env` puts it in GATEWAY_DATABASE_URL. Not `trust`: on 127.0.0.1 that would let every
# local account in as any role, the superuser included. The superuser (named after the server's OS user)
# logs in only through the Unix socket, by peer, which is how this script creates the role and database.
set -euo pipefail
. "$(dirname "$0")/common.sh"

case "$PG_HOME" in /*) ;; *) PG_HOME=$PWD/$PG_HOME ;; esac # the server's commands run from /
PG_DATA=$PG_HOME/data
PG_LOG=$PG_HOME/postgres.log
PG_SOCKETS=$PG_HOME/run
SERVICE_USER=settlement-pg
START_TIMEOUT=60

# as_pg CMD...: CMD as the server's user, from / (initdb and postgres fail in a working directory they
# cannot read, such as root's).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u "$PG_USER" -- "$@"); else (cd / && "$@"); fi
}

# pg_bin [MAJOR]: the server's own bin directory (Debian: /usr/lib/postgresql/<major>/bin; a pg_ctl in
# /usr/local/bin or a pg_wrapper in /usr/bin may be another version's). The newest when no major is given.
pg_bin() {
  local dir
  for dir in $(printf '%s\n' /usr/lib/postgresql/${1:-*}/bin | sort -Vr); do
    [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  done
  return 1
}

# cluster_major: the major version that made the cluster, empty before the first start
cluster_major() { cat "$PG_DATA/PG_VERSION" 2>/dev/null || true; }


# install: sets PG_BIN (installing Debian's postgresql package when no server is there) and PG_USER
# (creating the system user when run as root).
install() {
  local major
  major=$(cluster_major)
  if ! PG_BIN=$(pg_bin "$major"); then
    if [ -n "$major" ] && pg_bin >/dev/null; then
      die "the cluster in $PG_DATA was made by PostgreSQL $major, which is not installed (apt-get install postgresql-$major, or remove $PG_HOME to start afresh)"
    fi
    # Debian's package also makes a cluster `main` on 5432 where none exists; ours is apart from it
    say "PostgreSQL is missing; installing Debian's postgresql package from apt"
    apt_install postgresql || die "could not install postgresql; install it with your package manager"
    PG_BIN=$(pg_bin "$major") || die "no PostgreSQL server in /usr/lib/postgresql/${major:-*}/bin after installing postgresql"
  fi
  if [ "$(id -u)" -ne 0 ]; then
    PG_USER=$(id -un)
    return 0
  fi
  PG_USER=$SERVICE_USER
  id -u "$PG_USER" >/dev/null 2>&1 && return 0
  say "creating the system user $PG_USER to run PostgreSQL (it refuses to run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --comment "settlement gateway local PostgreSQL" "$PG_USER" >&2 || die "could not create the system user $PG_USER"
}

# The server's user must reach PG_HOME: the search (x) permission on every directory above it. A repository
# under a directory of root's alone (/root/src/...) does not give it. Then we grant exactly that: search
# (which allows no listing and no reading) on each directory that blocks, to this one account without a
# login, by an ACL. Not chmod o+x, which would open those directories to every account; and not a cluster
# outside STACK_DIR, which would break the rule that the whole stack lives there and goes with one rm (a
# ledger left behind by `make clean`, a second place to look for its log).
grant_traverse() {
  as_pg test -x "$PG_HOME" && return 0
  [ "$(id -u)" -eq 0 ] || die "$PG_HOME is not reachable by $PG_USER; set STACK_DIR to a directory of yours"
  local dir="" part
  local -a parts
  IFS=/ read -ra parts <<<"${PG_HOME#/}"
  for part in "${parts[@]}"; do
    as_pg test -x "$dir/" || {
      command -v setfacl >/dev/null || apt_install acl || die "setfacl (package acl) is needed to let $PG_USER reach ${dir:-/}"
      say "granting $PG_USER search permission on ${dir:-/} (ACL u:$PG_USER:--x) so that it reaches $PG_HOME"
      setfacl -m "u:$PG_USER:x" "${dir:-/}" || die "could not grant $PG_USER search permission on ${dir:-/} (no ACLs on its file system?): chmod o+x ${dir:-/}, or set STACK_DIR to a directory it can reach"
    }
    dir=$dir/$part
  done
  as_pg test -x "$PG_HOME" || die "$PG_USER still cannot reach $PG_HOME"
}

prepare_home() {
  mkdir -p "$PG_HOME"
  [ "$(id -u)" -ne 0 ] || chown "$PG_USER:" "$PG_HOME"
  chmod 700 "$PG_HOME"
  grant_traverse
  as_pg mkdir -p "$PG_SOCKETS"
  # a Unix socket path has at most 107 bytes
  local socket=$PG_SOCKETS/.s.PGSQL.$STACK_POSTGRES_PORT
  [ ${#socket} -le 107 ] || die "the socket path $socket is longer than 107 bytes; set a shorter STACK_DIR"
  if [ ! -s "$PG_HOME/password" ]; then
    # hex: nothing in it needs quoting in a URL, in SQL or in a shell
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PG_HOME/password")
    [ "$(id -u)" -ne 0 ] || chown "$PG_USER:" "$PG_HOME/password"
  fi
}

init_cluster() {
  [ -f "$PG_DATA/PG_VERSION" ] && return 0
  say "creating the PostgreSQL $(basename "$(dirname "$PG_BIN")") cluster in $PG_DATA (first start only)"
  as_pg rm -rf "$PG_DATA" # what an interrupted initdb left (no PG_VERSION: no cluster)
  # UTF8; C collation: text sorts by code point, the same on every glibc (indexes and digests do not
  # move with an OS upgrade), with C.UTF-8 character classes; page checksums catch a corrupted disk.
  # pg_hba.conf is replaced below; initdb needs a password-free method here.
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" --encoding=UTF8 --locale=C.UTF-8 --lc-collate=C --data-checksums \
    --auth-local=peer --auth-host=reject 2>&1 | as_pg tee "$PG_HOME/initdb.log" >/dev/null \
    || die "initdb failed; see $PG_HOME/initdb.log"
  echo "include 'stack.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

# Written on every start (a changed STACK_POSTGRES_PORT or STACK_DIR takes effect); edits are lost.
write_config() {
  as_pg tee "$PG_DATA/stack.conf" >/dev/null <<CONF
# deploy/postgres.sh writes this file on every start: edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $STACK_POSTGRES_PORT
unix_socket_directories = '$PG_SOCKETS'
max_connections = 50
# a development and test box: modest memory
shared_buffers = 128MB
work_mem = 8MB
maintenance_work_mem = 64MB
effective_cache_size = 512MB
# a ledger: a commit is acknowledged once it is on disk, even here
fsync = on
synchronous_commit = on
full_page_writes = on
# replays of the topics write a lot at once: fewer forced checkpoints
max_wal_size = 2GB
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
CONF
  as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<HBA
# deploy/postgres.sh writes this file on every start: edit the script, not this file.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       $PG_USER  peer
host    all       all   127.0.0.1/32  scram-sha-256
HBA
}

# running: our server runs (the pid of data/postmaster.pid is alive and works in our data directory)
running() {
  local pid
  pid=$(head -1 "$PG_DATA/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] && [ "/proc/$pid/cwd" -ef "$PG_DATA" ]
}

# leftovers: what remains of a server that was killed, beside which a new one refuses to start: its pid,
# taken until its parent reaps it, and its children, which outlive it for a moment.
leftovers() {
  local pid cwd
  pid=$(head -1 "$PG_DATA/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && return 0
  for cwd in /proc/[0-9]*/cwd; do [ "$cwd" -ef "$PG_DATA" ] && return 0; done 2>/dev/null
  return 1
}

# The role and database, made on the first start, checked on every one (a start cut short is mended);
# the password file is authoritative: the role gets its password again.
ensure_role_and_database() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKETS" -p "$STACK_POSTGRES_PORT" -d postgres >/dev/null <<SQL \
    || die "could not create the role $PG_ROLE and the database $PG_DB; see $PG_LOG"
-- the next statement carries the password: it must not reach the log, however long it takes
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SELECT 'CREATE ROLE $PG_ROLE LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE')\gexec
ALTER ROLE $PG_ROLE LOGIN PASSWORD '$(cat "$PG_HOME/password")';
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\gexec
SQL
}

start() {
  if running; then say "PostgreSQL already running on 127.0.0.1:$STACK_POSTGRES_PORT"; return 0; fi
  [ "$STACK_POSTGRES_PORT" != 5432 ] || die "STACK_POSTGRES_PORT must not be 5432: the local stack never takes the system PostgreSQL's port"
  install
  prepare_home
  init_cluster
  write_config
  local deadline=$((SECONDS + 10))
  while leftovers && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  say "starting PostgreSQL $(cluster_major) on 127.0.0.1:$STACK_POSTGRES_PORT as $PG_USER"
  # pg_ctl starts the server in a session of its own: a terminal's Ctrl-C does not reach it
  as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$START_TIMEOUT" -s >&2 || {
    tail -n 5 "$PG_LOG" >&2 || true
    die "PostgreSQL did not start; see $PG_LOG"
  }
  deadline=$((SECONDS + START_TIMEOUT))
  until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$STACK_POSTGRES_PORT" -t 2; do
    running || die "PostgreSQL exited during start-up; see $PG_LOG"
    [ $SECONDS -lt $deadline ] || die "PostgreSQL did not accept connections on 127.0.0.1:$STACK_POSTGRES_PORT within ${START_TIMEOUT}s; see $PG_LOG"
    sleep 0.1
  done
  ensure_role_and_database
  # a real login, as the application will make one
  PGPASSWORD=$(cat "$PG_HOME/password") PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At -h 127.0.0.1 \
    -p "$STACK_POSTGRES_PORT" -U "$PG_ROLE" -d "$PG_DB" -c 'SELECT 1' >/dev/null \
    || die "$PG_ROLE could not log in to $PG_DB on 127.0.0.1:$STACK_POSTGRES_PORT; see $PG_LOG"
  say "PostgreSQL ready on 127.0.0.1:$STACK_POSTGRES_PORT (database $PG_DB, role $PG_ROLE)"
}

stop() {
  running || return 0
  PG_USER=$(stat -c %U "$PG_DATA")
  PG_BIN=$(pg_bin "$(cluster_major)") || die "no pg_ctl of PostgreSQL $(cluster_major) to stop the server with"
  # fast: sessions are ended and their transactions rolled back, then a checkpoint
  if as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 30 -s >&2; then
    say "PostgreSQL stopped"
    return 0
  fi
  # immediate: no checkpoint; the next start replays the WAL, so nothing committed is lost
  say "PostgreSQL did not stop in 30s; stopping it immediately"
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 -s >&2 || die "PostgreSQL did not stop; see $PG_LOG"
  say "PostgreSQL stopped"
}

case "${1:-}" in
  install) install && say "PostgreSQL $(basename "$(dirname "$PG_BIN")") in $PG_BIN; the server runs as $PG_USER" ;;
  start) start ;;
  stop) stop ;;
  status) running ;;
  *) die "usage: $0 install|start|stop|status" ;;
esac
