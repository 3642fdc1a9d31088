#!/usr/bin/env bash
# Local Apache Kafka 4.x broker in KRaft mode (one combined broker+controller on loopback, no ZooKeeper).
#   deploy/kafka.sh fetch    resolve the broker jars from Maven Central into .stack/kafka-jars (once)
#   deploy/kafka.sh start    fetch if needed, format storage on first start, start, wait for metadata
#   deploy/kafka.sh stop     stop the broker cleanly (SIGTERM, then SIGKILL after a grace period)
#   deploy/kafka.sh status   exit 0 when our broker is running
# Listeners: PLAINTEXT on STACK_KAFKA_PORT for everyone; FAULTS on STACK_KAFKA_FAULTS_PORT, advertised as
# toxiproxy's kafka proxy (STACK_KAFKA_PROXY_PORT), for network-fault tests (deploy/toxiproxy.sh).
# Needs Java 17+ and Maven. Logs: .stack/kafka/logs/server.log.
set -euo pipefail
. "$(dirname "$0")/common.sh"

KAFKA_HOME=$STACK_DIR/kafka
JARS=$STACK_DIR/kafka-jars
PIDFILE=$KAFKA_HOME/kafka.pid
BOOTSTRAP=127.0.0.1:$STACK_KAFKA_PORT

need_java() {
  command -v java >/dev/null || die "Java 17+ is required to run the local Kafka broker (apt-get install openjdk-17-jre-headless)"
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${major:-0}" -ge 17 ] || die "Java 17+ is required for Kafka 4.x; found Java ${major:-unknown} (set JAVA_HOME/PATH)"
}

fetch() {
  [ -f "$JARS/.complete" ] && return 0
  command -v mvn >/dev/null || die "Maven is required once to fetch the Kafka broker jars (apt-get install maven)"
  say "fetching the Kafka broker jars (first run only)"
  rm -rf "$JARS"
  mvn -q -B -f "$ROOT/deploy/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$JARS" >&2 || die "Maven could not resolve the Kafka broker jars"
  touch "$JARS/.complete"
}

write_config() {
  mkdir -p "$KAFKA_HOME/data" "$KAFKA_HOME/logs"
  cat >"$KAFKA_HOME/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$STACK_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$STACK_KAFKA_PORT,CONTROLLER://127.0.0.1:$STACK_KAFKA_CONTROLLER_PORT,FAULTS://127.0.0.1:$STACK_KAFKA_FAULTS_PORT
# FAULTS is reached through toxiproxy and tells its clients to come back the same way
advertised.listeners=PLAINTEXT://127.0.0.1:$STACK_KAFKA_PORT,FAULTS://127.0.0.1:$STACK_KAFKA_PROXY_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,FAULTS:PLAINTEXT
log.dirs=$KAFKA_HOME/data
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# one broker on a developer's machine: a thread per core is plenty, and fewer threads switch less
num.network.threads=1
num.io.threads=$(nproc)
PROPS
  cat >"$KAFKA_HOME/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_HOME/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.org.name = org.apache.kafka
logger.org.level = INFO
PROPS
}

JAVA_ARGS=(-Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$KAFKA_HOME/log4j2.properties" -cp "$JARS/*")

format_storage() {
  [ -f "$KAFKA_HOME/data/meta.properties" ] && return 0
  local cluster_id
  # A KRaft cluster id is 16 random bytes in URL-safe base64 without padding (it may begin with "-",
  # hence --cluster-id=ID rather than -t ID).
  cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  say "formatting KRaft storage (cluster $cluster_id)"
  java "${JAVA_ARGS[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$KAFKA_HOME/server.properties" \
    >>"$KAFKA_HOME/logs/format.log" 2>&1 || die "formatting Kafka storage failed; see $KAFKA_HOME/logs/format.log"
}

start() {
  if pid_alive "$PIDFILE"; then say "Kafka already running on $BOOTSTRAP"; return 0; fi
  need_java
  fetch
  write_config
  format_storage
  say "starting Kafka on $BOOTSTRAP"
  # setsid: the broker must not receive the terminal's Ctrl-C before the gateway has flushed to it.
  setsid nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$KAFKA_HOME/server.properties" >>"$KAFKA_HOME/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_ready
}

wait_ready() {
  local deadline=$((SECONDS + ${STACK_KAFKA_START_TIMEOUT:-90}))
  until "$PYTHON" "$ROOT/deploy/probe.py" kafka "$BOOTSTRAP" 2>/dev/null; do
    pid_alive "$PIDFILE" || die "Kafka exited during start-up; see $KAFKA_HOME/logs/server.log"
    [ $SECONDS -lt $deadline ] || die "Kafka did not serve metadata within ${STACK_KAFKA_START_TIMEOUT:-90}s; see $KAFKA_HOME/logs/server.log"
    sleep 0.5
  done
  say "Kafka ready on $BOOTSTRAP"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" Kafka 30 ;;
  status) pid_alive "$PIDFILE" ;;
  *) die "usage: $0 fetch|start|stop|status" ;;
esac
