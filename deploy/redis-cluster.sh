#!/usr/bin/env bash
# Local Redis Cluster for STACK=cluster: six redis-server processes on loopback, three masters and three
# replicas, on ports STACK_REDIS_CLUSTER_PORT to STACK_REDIS_CLUSTER_PORT+5 (17001-17006), each with its
# cluster bus on STACK_REDIS_CLUSTER_BUS_PORT+i (17101-17106). Never touches a Redis already running on 6379.
#   deploy/redis-cluster.sh start            install redis-server if needed, start the nodes that are not
#                                            running; on the first start only, `redis-cli --cluster create`
#                                            (one replica per master); wait until every node says
#                                            cluster_state:ok and every replica is in sync with its master
#   deploy/redis-cluster.sh stop             stop every node (SIGTERM: each flushes its AOF and nodes.conf)
#   deploy/redis-cluster.sh status           exit 0 when all six nodes run (the others are named on stderr)
#   deploy/redis-cluster.sh kill-node PORT   SIGKILL one node; a master's replica takes over within about 3 s
#   deploy/redis-cluster.sh start-node PORT  start a node again and wait until it is back (a replica: in sync):
#                                            it rejoins from its nodes.conf (a master that was replaced comes
#                                            back as a replica of its successor)
#   deploy/redis-cluster.sh masters          print the ports of the current masters, one a line
#   deploy/redis-cluster.sh config PORT      print a node's redis.conf (nothing is written)
# Each node has its folder, .stack/redis-cluster/PORT: redis.conf (written on every start), nodes.conf
# (the cluster's membership as this node knows it: a restart reuses it), the AOF (appendfsync everysec),
# redis.pid and redis.log. cluster-node-timeout is 2000 ms, so a dead master is replaced within about 3 s.
set -euo pipefail
. "$(dirname "$0")/common.sh"

CLUSTER_HOME=$STACK_DIR/redis-cluster
PORTS=$(seq "$STACK_REDIS_CLUSTER_PORT" $((STACK_REDIS_CLUSTER_PORT + REDIS_CLUSTER_NODES - 1)))
START_TIMEOUT=60

node_home() { echo "$CLUSTER_HOME/$1"; }
node_running() { pid_alive "$(node_home "$1")/redis.pid"; }
PIDFILES=()
for port in $PORTS; do PIDFILES+=("$(node_home "$port")/redis.pid"); done
cli() { redis-cli -h 127.0.0.1 -p "$@"; }

# check_port PORT: PORT is one of the cluster's
check_port() {
  grep -qx -- "$1" <<<"$PORTS" || die "a node is one of the ports $(paste -sd' ' - <<<"$PORTS"), not '$1'"
}

config() {
  local port=$1 home
  home=$(node_home "$1")
  cat <<CONF
# deploy/redis-cluster.sh writes this file on every start: edit the script, not this file.
bind 127.0.0.1
port $port
dir $home
daemonize yes
pidfile $home/redis.pid
logfile $home/redis.log
cluster-enabled yes
cluster-port $((port - STACK_REDIS_CLUSTER_PORT + STACK_REDIS_CLUSTER_BUS_PORT))
cluster-config-file nodes.conf
cluster-node-timeout 2000
appendonly yes
appendfsync everysec
save ""
# full, a node refuses writes (the gateway answers 503) rather than evict idempotency state
maxmemory $STACK_REDIS_MAXMEMORY
maxmemory-policy noeviction
CONF
}

# start_node PORT: start one node (its nodes.conf, when there is one, says which cluster it belongs to)
start_node() {
  local port=$1 home
  home=$(node_home "$port")
  if node_running "$port"; then say "Redis Cluster node $port already running"; return 0; fi
  [ "$port" != 6379 ] || die "STACK_REDIS_CLUSTER_PORT must not put a node on 6379: the local stack never takes the system Redis's port"
  install_redis
  mkdir -p "$home"
  config "$port" >"$home/redis.conf"
  say "starting Redis Cluster node on 127.0.0.1:$port"
  redis-server "$home/redis.conf" >&2
}

# state_ok PORT...: every node says cluster_state:ok, and every replica among them has its master's
# data (a replica that has not synced since it started refuses to take over when its master dies)
state_ok() {
  local port
  for port in "$@"; do
    [[ "$(cli "$port" cluster info 2>/dev/null)" == *cluster_state:ok* ]] || return 1
    [[ "$(cli "$port" info replication 2>/dev/null)" != *role:slave* ]] \
      || [[ "$(cli "$port" info replication 2>/dev/null)" == *master_link_status:up* ]] || return 1
  done
}

# wait_state_ok PORT...: until state_ok, for at most START_TIMEOUT seconds
wait_state_ok() {
  local deadline=$((SECONDS + START_TIMEOUT))
  until state_ok "$@"; do
    [ $SECONDS -lt $deadline ] || die "Redis Cluster did not reach cluster_state:ok (replicas in sync) within ${START_TIMEOUT}s; see $CLUSTER_HOME/*/redis.log"
    sleep 0.2
  done
}

# create: `redis-cli --cluster create`, once: when no node has a slot yet (a fresh cluster); a node that
# knows others without slots is a create cut short, which is not mended here
create() {
  local port nodes=()
  for port in $PORTS; do
    [[ "$(cli "$port" cluster info)" == *cluster_slots_assigned:0* ]] || return 0
    [[ "$(cli "$port" cluster info)" == *cluster_known_nodes:1* ]] \
      || die "Redis Cluster node $port knows other nodes but no slots: a create cut short; stop the cluster and remove $CLUSTER_HOME"
    nodes+=("127.0.0.1:$port")
  done
  say "creating the Redis Cluster (first start only): 3 masters, 1 replica each"
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >>"$CLUSTER_HOME/create.log" 2>&1 \
    || die "redis-cli --cluster create failed; see $CLUSTER_HOME/create.log"
}

start() {
  local port
  if all_alive "Redis Cluster" "${PIDFILES[@]}" 2>/dev/null; then say "Redis Cluster already running on $(addresses "$STACK_REDIS_CLUSTER_PORT" "$REDIS_CLUSTER_NODES")"; return 0; fi
  for port in $PORTS; do start_node "$port"; done
  for port in $PORTS; do wait_redis "$port" "$(node_home "$port")/redis.log"; done
  create
  # shellcheck disable=SC2086 # one argument per port
  wait_state_ok $PORTS
  say "Redis Cluster ready on $(addresses "$STACK_REDIS_CLUSTER_PORT" "$REDIS_CLUSTER_NODES") (masters: $(masters | paste -sd' ' -))"
}

restart_node() {
  local port running=()
  start_node "$1"
  wait_redis "$1" "$(node_home "$1")/redis.log"
  for port in $PORTS; do ! node_running "$port" || running+=("$port"); done
  wait_state_ok "${running[@]}"
  say "Redis Cluster node $1 back ($(cli "$1" role | head -1))"
}

# masters: the ports of the masters that are not failed, as a running node sees the cluster
masters() {
  local port
  for port in $PORTS; do
    node_running "$port" || continue
    # <id> <ip:port@cport[,hostname]> <flags> ...: flags like myself,master or master,fail
    cli "$port" cluster nodes | awk '$3 ~ /(^|,)master(,|$)/ && $3 !~ /fail/ { split($2, a, "[:@]"); print a[2] }' | sort -n
    return 0
  done
  die "no Redis Cluster node is running"
}

case "${1:-}" in config | start-node | kill-node) check_port "${2:-}" ;; esac
case "${1:-}" in
  config) config "$2" ;;
  start) start ;;
  stop) stop_all "Redis Cluster node" 20 "${PIDFILES[@]}" ;;
  status) all_alive "Redis Cluster" "${PIDFILES[@]}" ;;
  start-node) restart_node "$2" ;;
  kill-node) kill_pid "$(node_home "$2")/redis.pid" "Redis Cluster node $2" ;;
  masters) masters ;;
  *) die "usage: $0 start|stop|status|start-node PORT|kill-node PORT|masters|config PORT" ;;
esac
