#!/usr/bin/env bash
# The local stack: Redis, Kafka and PostgreSQL for tests, benchmarks and `make run`.
#   deploy/stack.sh up             start what is needed; print the names of the services it started
#   deploy/stack.sh down [NAMES]   stop the named services (default: toxiproxy when running, Kafka, PostgreSQL, Redis)
#   deploy/stack.sh env            print the GATEWAY_* variables that point at the local stack
# A service is not started when GATEWAY_KAFKA_BOOTSTRAP / GATEWAY_REDIS_URL / GATEWAY_DATABASE_URL point elsewhere.
# STACK=cluster: the Kafka cluster (kafka-cluster) and the Redis Cluster (redis-cluster) instead of the single
# broker and Redis, beside them (ports and folders of their own), with the same PostgreSQL (the processor's
# state in a schema of its own); `down` without names leaves PostgreSQL up while the single stack's Redis
# or Kafka runs.
set -euo pipefail
. "$(dirname "$0")/common.sh"

KAFKA=kafka
REDIS=redis
if [ "$STACK" = cluster ]; then
  KAFKA=kafka-cluster
  REDIS=redis-cluster
fi

up() {
  local started=()
  if [ -z "${GATEWAY_REDIS_URL:-}" ] && ! "$ROOT/deploy/$REDIS.sh" status; then
    "$ROOT/deploy/$REDIS.sh" start
    started+=("$REDIS")
  fi
  if [ -z "${GATEWAY_DATABASE_URL:-}" ] && ! "$ROOT/deploy/postgres.sh" status; then
    "$ROOT/deploy/postgres.sh" start || { [ ${#started[@]} -eq 0 ] || down "${started[@]}"; exit 1; }
    started+=(postgres)
  fi
  if [ -z "${GATEWAY_KAFKA_BOOTSTRAP:-}" ] && ! "$ROOT/deploy/$KAFKA.sh" status; then
    "$ROOT/deploy/$KAFKA.sh" start || { [ ${#started[@]} -eq 0 ] || down "${started[@]}"; exit 1; }
    started+=("$KAFKA")
  fi
  echo "${started[*]:-}"
}

# everything: the single stack's services, or the cluster's and PostgreSQL, which the single stack may use
everything() {
  if [ "$STACK" = single ]; then
    echo "toxiproxy kafka postgres redis"
  elif "$ROOT/deploy/kafka.sh" status || "$ROOT/deploy/redis.sh" status; then
    say "PostgreSQL stays up: the single stack runs beside the cluster"
    echo "$KAFKA $REDIS"
  else
    echo "$KAFKA postgres $REDIS"
  fi
}

down() {
  local name
  for name in "${@:-$(everything)}"; do
    for service in $name; do "$ROOT/deploy/$service.sh" stop; done
  done
}

case "${1:-}" in
  up) up ;;
  down) shift; down "$@" ;;
  env)
    if [ "$STACK" = cluster ]; then
      echo "GATEWAY_KAFKA_BOOTSTRAP=${GATEWAY_KAFKA_BOOTSTRAP:-$(addresses "$STACK_KAFKA_CLUSTER_PORT" "$KAFKA_CLUSTER_NODES")}"
      # several seeds in one URL: a Redis Cluster (the first three nodes, masters when it was created)
      echo "GATEWAY_REDIS_URL=${GATEWAY_REDIS_URL:-redis://$(addresses "$STACK_REDIS_CLUSTER_PORT" 3)}"
      echo "GATEWAY_TOPIC_REPLICATION=${GATEWAY_TOPIC_REPLICATION:-3}"
      # the processor's state (and the offsets it has reached) belongs to one Kafka cluster: a schema of
      # its own in the shared database, beside the single stack's `settlement`
      echo "GATEWAY_DATABASE_SCHEMA=${GATEWAY_DATABASE_SCHEMA:-settlement_cluster}"
    else
      echo "GATEWAY_KAFKA_BOOTSTRAP=${GATEWAY_KAFKA_BOOTSTRAP:-127.0.0.1:$STACK_KAFKA_PORT}"
      echo "GATEWAY_REDIS_URL=${GATEWAY_REDIS_URL:-redis://127.0.0.1:$STACK_REDIS_PORT/0}"
    fi
    # quoted for `eval`: a database URL may carry a query (?sslmode=require&...)
    printf 'GATEWAY_DATABASE_URL=%q\n' "${GATEWAY_DATABASE_URL:-$(postgres_url)}"
    ;;
  *) die "usage: [STACK=cluster] $0 up|down [toxiproxy] [kafka] [kafka-cluster] [postgres] [redis] [redis-cluster]|env" ;;
esac
