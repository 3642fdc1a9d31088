# What deploy/kafka.sh (one node) and deploy/kafka-cluster.sh (three) share: the broker jars, a node's
# files (server.properties, log4j2.properties, data/, logs/ in its own folder), formatting its storage,
# starting it and waiting for it. Sourced after common.sh, never run.
JARS=$STACK_DIR/kafka-jars

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

# broker_properties HOME ID VOTERS REPLICATION MIN_ISR: the lines of server.properties every node of
# ours has (combined broker and controller, its data in HOME/data, the replication of topics created
# without one and of the internal topics); the caller adds its listeners.
broker_properties() {
  local home=$1 id=$2 voters=$3 replication=$4 min_isr=$5
  cat <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=3
auto.create.topics.enable=false
default.replication.factor=$replication
min.insync.replicas=$min_isr
unclean.leader.election.enable=false
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
# a developer's machine: a thread per core is plenty, and fewer threads switch less
num.network.threads=1
num.io.threads=$(nproc)
PROPS
}

# write_node HOME: HOME/server.properties from stdin, HOME/log4j2.properties (logs/server.log)
write_node() {
  local home=$1
  mkdir -p "$home/data" "$home/logs"
  cat >"$home/server.properties"
  cat >"$home/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $home/logs/server.log
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

# java_args HOME HEAP: JAVA_ARGS, the JVM's arguments for the node in HOME with at most HEAP of heap
java_args() {
  JAVA_ARGS=(-Xms256m "-Xmx$2" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$1/log4j2.properties" -cp "$JARS/*")
}

# new_cluster_id: a KRaft cluster id, 16 random bytes in URL-safe base64 without padding (it may begin
# with "-", hence --cluster-id=ID rather than -t ID below)
new_cluster_id() { head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='; }

# format_storage HOME HEAP CLUSTER_ID: format the node's storage on its first start
format_storage() {
  local home=$1
  [ -f "$home/data/meta.properties" ] && return 0
  say "formatting KRaft storage in $home (cluster $3)"
  java_args "$home" "$2"
  java "${JAVA_ARGS[@]}" kafka.tools.StorageTool format --cluster-id="$3" -c "$home/server.properties" \
    >>"$home/logs/format.log" 2>&1 || die "formatting Kafka storage failed; see $home/logs/format.log"
}

# launch HOME HEAP: start the node in HOME in the background; its pid goes to HOME/kafka.pid
launch() {
  local home=$1
  java_args "$home" "$2"
  # setsid: the broker must not receive the terminal's Ctrl-C before the gateway has flushed to it.
  setsid nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$home/server.properties" >>"$home/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$home/kafka.pid"
}

# wait_ready WHAT HOMES CHECK...: run CHECK until it succeeds; fail when the node of one of HOMES
# (space-separated) exits, or after STACK_KAFKA_START_TIMEOUT seconds (90)
wait_ready() {
  local what=$1 homes=$2 home timeout=${STACK_KAFKA_START_TIMEOUT:-90}
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" 2>/dev/null; do
    for home in $homes; do
      pid_alive "$home/kafka.pid" || die "$what: a broker exited during start-up; see $home/logs/server.log"
    done
    [ $SECONDS -lt $deadline ] || die "$what was not ready within ${timeout}s; see $homes (logs/server.log)"
    sleep 0.5
  done
}
