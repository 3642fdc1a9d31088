#!/usr/bin/env bash
# Project-owned Redis on its own port and data folder, AOF on (appendfsync everysec).
# Never touches a Redis already running on 6379.
#   deploy/redis.sh start | stop | status
# Installs redis-server from apt when it is missing. Logs: .stack/redis/redis.log.
set -euo pipefail
. "$(dirname "$0")/common.sh"

REDIS_HOME=$STACK_DIR/redis
PIDFILE=$REDIS_HOME/redis.pid

start() {
  if pid_alive "$PIDFILE"; then say "Redis already running on 127.0.0.1:$STACK_REDIS_PORT"; return 0; fi
  [ "$STACK_REDIS_PORT" != 6379 ] || die "STACK_REDIS_PORT must not be 6379: the local stack never takes the system Redis's port"
  install_redis
  mkdir -p "$REDIS_HOME"
  say "starting Redis on 127.0.0.1:$STACK_REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$STACK_REDIS_PORT" --dir "$REDIS_HOME" \
    --appendonly yes --appendfsync everysec --save "" \
    --maxmemory "$STACK_REDIS_MAXMEMORY" --maxmemory-policy noeviction \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$REDIS_HOME/redis.log" >&2
  wait_redis "$STACK_REDIS_PORT" "$REDIS_HOME/redis.log"
  say "Redis ready on 127.0.0.1:$STACK_REDIS_PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop_pid "$PIDFILE" Redis 20 ;;
  status) pid_alive "$PIDFILE" ;;
  *) die "usage: $0 start|stop|status" ;;
esac
