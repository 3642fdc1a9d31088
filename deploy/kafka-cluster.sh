#!/usr/bin/env bash
# Local Apache Kafka 4.x cluster for STACK=cluster: three combined KRaft nodes (broker and controller) on
# loopback, from the same jars as deploy/kafka.sh, with a static quorum of all three and the durability of
# a production cluster: replication factor 3 and min.insync.replicas 2 for every topic created without
# its own (and the internal topics), no unclean leader election, no automatic topic creation.
#   deploy/kafka-cluster.sh start          fetch if needed, format the storage on the first start, start the
#                                          nodes that are not running, wait until every node serves metadata
#                                          with every running broker in it and the quorum agrees on a leader
#   deploy/kafka-cluster.sh stop           stop every node (SIGTERM to all at once, SIGKILL after 30 s)
#   deploy/kafka-cluster.sh status         exit 0 when all three nodes run (the others are named on stderr)
#   deploy/kafka-cluster.sh kill-node N    SIGKILL node N (1-3): a crash, no controlled shutdown
#   deploy/kafka-cluster.sh start-node N   start node N again and wait until it is back in the cluster
#   deploy/kafka-cluster.sh pid N          print node N's pid; exit 1 when it does not run
#   deploy/kafka-cluster.sh leader         print the node id of the controller quorum's leader
#   deploy/kafka-cluster.sh config N       print node N's server.properties (nothing is written)
#   deploy/kafka-cluster.sh fetch          resolve the broker jars into .stack/kafka-jars (once)
# Node N listens on 127.0.0.1:STACK_KAFKA_CLUSTER_PORT+N-1 (PLAINTEXT, for clients and the other brokers;
# 19192-19194) and STACK_KAFKA_CLUSTER_CONTROLLER_PORT+N-1 (CONTROLLER; 19292-19294), with a heap of
# STACK_KAFKA_CLUSTER_HEAP (512m). Each node has its folder, .stack/kafka-cluster/node-N (server.properties,
# data/, logs/server.log, kafka.pid); the cluster id formatted into all three is in .stack/kafka-cluster/cluster.id.
set -euo pipefail
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/kafka-lib.sh"

CLUSTER_HOME=$STACK_DIR/kafka-cluster
NODES=$(seq 1 "$KAFKA_CLUSTER_NODES")
BOOTSTRAP=$(addresses "$STACK_KAFKA_CLUSTER_PORT" "$KAFKA_CLUSTER_NODES")

node_home() { echo "$CLUSTER_HOME/node-$1"; }
node_port() { echo $((STACK_KAFKA_CLUSTER_PORT + $1 - 1)); }
controller_port() { echo $((STACK_KAFKA_CLUSTER_CONTROLLER_PORT + $1 - 1)); }
node_running() { pid_alive "$(node_home "$1")/kafka.pid"; }
PIDFILES=()
for n in $NODES; do PIDFILES+=("$(node_home "$n")/kafka.pid"); done

# check_node N: N names a node (1-3)
check_node() {
  [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$KAFKA_CLUSTER_NODES" ] \
    || die "a node is a number from 1 to $KAFKA_CLUSTER_NODES, not '$1'"
}

config() {
  local n=$1 voters=() i
  for i in $NODES; do voters+=("$i@127.0.0.1:$(controller_port "$i")"); done
  broker_properties "$(node_home "$n")" "$n" "$(IFS=, && echo "${voters[*]}")" 3 2
  cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$(node_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(node_port "$n")
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
# a dead broker is fenced, and its partitions get new leaders and shrunk ISRs, after this long without a
# heartbeat (9 s by default): longer than the gateway's delivery timeout, so 503s for those partitions
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
PROPS
}

# cluster_id: the cluster's id, made on the first start (or read back from a node formatted with it)
cluster_id() {
  local file=$CLUSTER_HOME/cluster.id id
  if [ ! -s "$file" ]; then
    id=$(sed -n 's/^cluster.id=//p' "$CLUSTER_HOME"/node-*/data/meta.properties 2>/dev/null | head -1)
    mkdir -p "$CLUSTER_HOME"
    echo "${id:-$(new_cluster_id)}" >"$file"
  fi
  cat "$file"
}

# leader: the node id of the quorum's leader, when every running node's quorum-state names the same
# one in the same epoch and it runs; fails otherwise
leader() {
  local n state seen="" found=""
  for n in $NODES; do
    node_running "$n" || continue
    state=$(cat "$(node_home "$n")/data/__cluster_metadata-0/quorum-state" 2>/dev/null) || return 1
    found=$(sed -n 's/.*"leaderId":\([0-9][0-9]*\).*"leaderEpoch":\([0-9][0-9]*\).*/\1 \2/p' <<<"$state")
    [ -n "$found" ] && [ "${seen:-$found}" = "$found" ] || return 1
    seen=$found
  done
  [ -n "$seen" ] && node_running "${seen% *}" && echo "${seen% *}"
}

# ready: every running node serves metadata listing at least as many brokers as run, and the quorum has a leader
ready() {
  local n running=0
  for n in $NODES; do ! node_running "$n" || running=$((running + 1)); done
  for n in $NODES; do
    node_running "$n" || continue
    "$PYTHON" "$ROOT/deploy/probe.py" kafka "127.0.0.1:$(node_port "$n")" "$running" || return 1
  done
  leader >/dev/null
}

# start_nodes N...: start these nodes (formatting their storage on their first start) and wait until ready
start_nodes() {
  local n homes="" id formats=() pid
  need_java
  fetch
  id=$(cluster_id)
  for n in "$@"; do
    config "$n" | write_node "$(node_home "$n")"
    format_storage "$(node_home "$n")" "$STACK_KAFKA_CLUSTER_HEAP" "$id" &
    formats+=($!)
  done
  for pid in "${formats[@]}"; do wait "$pid" || exit 1; done
  for n in "$@"; do
    say "starting Kafka node $n on 127.0.0.1:$(node_port "$n")"
    launch "$(node_home "$n")" "$STACK_KAFKA_CLUSTER_HEAP"
    homes+=" $(node_home "$n")"
  done
  wait_ready "the Kafka cluster" "$homes" ready
  say "Kafka cluster ready on $BOOTSTRAP (quorum leader: node $(leader))"
}

start() {
  local n missing=()
  for n in $NODES; do node_running "$n" || missing+=("$n"); done
  if [ ${#missing[@]} -eq 0 ]; then say "Kafka cluster already running on $BOOTSTRAP"; return 0; fi
  start_nodes "${missing[@]}"
}

start_node() {
  if node_running "$1"; then say "Kafka node $1 already running"; return 0; fi
  start_nodes "$1"
}

case "${1:-}" in config | start-node | kill-node | pid) check_node "${2:-}" ;; esac
case "${1:-}" in
  fetch) fetch ;;
  config) config "$2" ;;
  start) start ;;
  # all at once: a node's controlled shutdown needs the quorum the others make
  stop) stop_all "Kafka" 30 "${PIDFILES[@]}" ;;
  status) all_alive "Kafka cluster" "${PIDFILES[@]}" ;;
  start-node) start_node "$2" ;;
  kill-node) kill_pid "$(node_home "$2")/kafka.pid" "Kafka node $2" ;;
  pid) node_running "$2" && cat "$(node_home "$2")/kafka.pid" ;;
  leader) leader || die "the Kafka cluster's quorum has no leader that every running node agrees on" ;;
  *) die "usage: $0 start|stop|status|start-node N|kill-node N|pid N|leader|config N|fetch" ;;
esac
