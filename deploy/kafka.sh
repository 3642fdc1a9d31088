#!/usr/bin/env bash
# Local Apache Kafka 4.x broker in KRaft mode (one combined broker+controller on loopback, no ZooKeeper).
#   deploy/kafka.sh fetch    resolve the broker jars from Maven Central into .stack/kafka-jars (once)
#   deploy/kafka.sh start    fetch if needed, format storage on first start, start, wait for metadata
#   deploy/kafka.sh stop     stop the broker cleanly (SIGTERM, then SIGKILL after a grace period)
#   deploy/kafka.sh status   exit 0 when our broker is running
#   deploy/kafka.sh config   print the broker's server.properties (nothing is written)
# Listeners: PLAINTEXT on STACK_KAFKA_PORT for everyone; FAULTS on STACK_KAFKA_FAULTS_PORT, advertised as
# toxiproxy's kafka proxy (STACK_KAFKA_PROXY_PORT), for network-fault tests (deploy/toxiproxy.sh).
# Needs Java 17+ and Maven. Logs: .stack/kafka/logs/server.log.
set -euo pipefail
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/kafka-lib.sh"

KAFKA_HOME=$STACK_DIR/kafka
PIDFILE=$KAFKA_HOME/kafka.pid
BOOTSTRAP=127.0.0.1:$STACK_KAFKA_PORT
HEAP=768m

config() {
  broker_properties "$KAFKA_HOME" 1 "1@127.0.0.1:$STACK_KAFKA_CONTROLLER_PORT" 1 1
  cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$STACK_KAFKA_PORT,CONTROLLER://127.0.0.1:$STACK_KAFKA_CONTROLLER_PORT,FAULTS://127.0.0.1:$STACK_KAFKA_FAULTS_PORT
# FAULTS is reached through toxiproxy and tells its clients to come back the same way
advertised.listeners=PLAINTEXT://127.0.0.1:$STACK_KAFKA_PORT,FAULTS://127.0.0.1:$STACK_KAFKA_PROXY_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,FAULTS:PLAINTEXT
PROPS
}

start() {
  if pid_alive "$PIDFILE"; then say "Kafka already running on $BOOTSTRAP"; return 0; fi
  need_java
  fetch
  config | write_node "$KAFKA_HOME"
  format_storage "$KAFKA_HOME" "$HEAP" "$(new_cluster_id)"
  say "starting Kafka on $BOOTSTRAP"
  launch "$KAFKA_HOME" "$HEAP"
  wait_ready Kafka "$KAFKA_HOME" "$PYTHON" "$ROOT/deploy/probe.py" kafka "$BOOTSTRAP"
  say "Kafka ready on $BOOTSTRAP"
}

case "${1:-}" in
  fetch) fetch ;;
  config) config ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" Kafka 30 ;;
  status) pid_alive "$PIDFILE" ;;
  *) die "usage: $0 fetch|config|start|stop|status" ;;
esac
