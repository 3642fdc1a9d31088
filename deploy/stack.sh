#!/usr/bin/env bash
# The local stack: Redis, Kafka and PostgreSQL for tests, benchmarks and `make run`.
#   deploy/stack.sh up             start what is needed; print the names of the services it started
#   deploy/stack.sh down [NAMES]   stop the named services (default: toxiproxy when running, Kafka, PostgreSQL, Redis)
#   deploy/stack.sh env            print the GATEWAY_* variables that point at the local stack
# A service is not started when GATEWAY_KAFKA_BOOTSTRAP / GATEWAY_REDIS_URL / GATEWAY_DATABASE_URL point elsewhere.
set -euo pipefail
. "$(dirname "$0")/common.sh"

up() {
  local started=()
  if [ -z "${GATEWAY_REDIS_URL:-}" ] && ! "$ROOT/deploy/redis.sh" status; then
    "$ROOT/deploy/redis.sh" start
    started+=(redis)
  fi
  if [ -z "${GATEWAY_DATABASE_URL:-}" ] && ! "$ROOT/deploy/postgres.sh" status; then
    "$ROOT/deploy/postgres.sh" start || { [ ${#started[@]} -eq 0 ] || down "${started[@]}"; exit 1; }
    started+=(postgres)
  fi
  if [ -z "${GATEWAY_KAFKA_BOOTSTRAP:-}" ] && ! "$ROOT/deploy/kafka.sh" status; then
    "$ROOT/deploy/kafka.sh" start || { [ ${#started[@]} -eq 0 ] || down "${started[@]}"; exit 1; }
    started+=(kafka)
  fi
  echo "${started[*]:-}"
}

down() {
  local name
  for name in "${@:-toxiproxy kafka postgres redis}"; do
    for service in $name; do "$ROOT/deploy/$service.sh" stop; done
  done
}

case "${1:-}" in
  up) up ;;
  down) shift; down "$@" ;;
  env)
    echo "GATEWAY_KAFKA_BOOTSTRAP=${GATEWAY_KAFKA_BOOTSTRAP:-127.0.0.1:$STACK_KAFKA_PORT}"
    echo "GATEWAY_REDIS_URL=${GATEWAY_REDIS_URL:-redis://127.0.0.1:$STACK_REDIS_PORT/0}"
    # quoted for `eval`: a database URL may carry a query (?sslmode=require&...)
    printf 'GATEWAY_DATABASE_URL=%q\n' "${GATEWAY_DATABASE_URL:-$(postgres_url)}"
    ;;
  *) die "usage: $0 up|down [toxiproxy] [kafka] [postgres] [redis]|env" ;;
esac
