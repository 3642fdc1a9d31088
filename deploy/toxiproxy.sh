#!/usr/bin/env bash
# Toxiproxy (Shopify) in front of the local Redis and Kafka, for network-fault tests. `stack.sh up`
# does not start it (the tests that need it do); `stack.sh down` stops it.
#   deploy/toxiproxy.sh install   build the server with `go install` into .stack/bin (once)
#   deploy/toxiproxy.sh start     install if needed, start the API on 127.0.0.1:STACK_TOXIPROXY_PORT (18474)
#                                 and create the proxies (again, if running: the same ones are kept)
#   deploy/toxiproxy.sh stop      stop it
#   deploy/toxiproxy.sh status    exit 0 when our toxiproxy is running
#   deploy/toxiproxy.sh reset     enable every proxy and remove every toxic
#   deploy/toxiproxy.sh restart   kill it (within 2 s, a hung one too) and start it again: the way out when
#                                 removing a toxic deadlocks it (Shopify/toxiproxy#558; tests/toxiproxy.py)
# Proxies: redis  127.0.0.1:STACK_REDIS_PROXY_PORT (16380) -> Redis on STACK_REDIS_PORT
#          kafka  127.0.0.1:STACK_KAFKA_PROXY_PORT (19095) -> the broker's FAULTS listener on
#                 STACK_KAFKA_FAULTS_PORT (19096), which advertises the proxy (deploy/kafka.sh)
# Toxics are added through the HTTP API (tests/toxiproxy.py). Needs Go once. Log: .stack/toxiproxy/toxiproxy.log.
set -euo pipefail
. "$(dirname "$0")/common.sh"

TOXIPROXY_HOME=$STACK_DIR/toxiproxy
PIDFILE=$TOXIPROXY_HOME/toxiproxy.pid
BIN=$STACK_DIR/bin/toxiproxy-server
# pinned: `@latest` resolves to an old release of the module
MODULE=github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0
API=http://127.0.0.1:$STACK_TOXIPROXY_PORT

install() {
  [ -x "$BIN" ] && return 0
  command -v go >/dev/null || die "Go is required once to build toxiproxy (https://go.dev/dl/, or apt-get install golang)"
  say "installing toxiproxy ($MODULE) into $STACK_DIR/bin"
  mkdir -p "$STACK_DIR/bin"
  local gobin
  gobin=$(mktemp -d "$STACK_DIR/bin/.go-install.XXXXXX")
  # the command builds as `server`: installed under its own name
  GOBIN=$gobin go install "$MODULE" >&2 && mv "$gobin/server" "$BIN" || {
    rm -rf "$gobin"
    die "go install $MODULE failed"
  }
  rm -rf "$gobin"
}

api() { # api METHOD PATH [JSON]: one API call; a refusal's answer goes to stderr
  local args=(-sS --fail-with-body --max-time 5 -X "$1" -H 'Content-Type: application/json') answer
  [ $# -lt 3 ] || args+=(--data "$3")
  answer=$(curl "${args[@]}" "$API$2") || { printf '%s\n' "$answer" >&2; return 1; }
}

create_proxies() {
  # /populate creates what is missing, replaces what differs and leaves the rest (and their toxics) alone
  api POST /populate "[
    {\"name\": \"redis\", \"listen\": \"127.0.0.1:$STACK_REDIS_PROXY_PORT\", \"upstream\": \"127.0.0.1:$STACK_REDIS_PORT\"},
    {\"name\": \"kafka\", \"listen\": \"127.0.0.1:$STACK_KAFKA_PROXY_PORT\", \"upstream\": \"127.0.0.1:$STACK_KAFKA_FAULTS_PORT\"}
  ]" || die "toxiproxy could not create its proxies (a listen port taken?); see $TOXIPROXY_HOME/toxiproxy.log"
  say "toxiproxy: redis 127.0.0.1:$STACK_REDIS_PROXY_PORT -> :$STACK_REDIS_PORT, kafka 127.0.0.1:$STACK_KAFKA_PROXY_PORT -> :$STACK_KAFKA_FAULTS_PORT"
  if ! timeout 2 bash -c ": </dev/tcp/127.0.0.1/$STACK_KAFKA_FAULTS_PORT" 2>/dev/null; then
    say "warning: nothing listens on the broker's FAULTS port $STACK_KAFKA_FAULTS_PORT, so the kafka proxy leads nowhere;" \
      "a broker started before that listener existed needs a restart (deploy/kafka.sh stop; deploy/kafka.sh start)"
  fi
}

# served_by_us: the API port is listened on by the process of our pid file (always true without ss)
served_by_us() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$STACK_TOXIPROXY_PORT" 2>/dev/null | grep -q "pid=$(cat "$PIDFILE"),"
}

start() {
  command -v curl >/dev/null || die "curl is required to configure toxiproxy"
  if pid_alive "$PIDFILE"; then
    say "toxiproxy already running on $API"
  else
    # another toxiproxy (another STACK_DIR's) must not be reconfigured for this stack
    if timeout 2 bash -c ": </dev/tcp/127.0.0.1/$STACK_TOXIPROXY_PORT" 2>/dev/null; then
      die "127.0.0.1:$STACK_TOXIPROXY_PORT is already served, but not by the toxiproxy of $STACK_DIR; set STACK_TOXIPROXY_PORT and the proxy ports to free ones"
    fi
    install
    mkdir -p "$TOXIPROXY_HOME"
    say "starting toxiproxy on $API"
    setsid nohup "$BIN" -host 127.0.0.1 -port "$STACK_TOXIPROXY_PORT" >>"$TOXIPROXY_HOME/toxiproxy.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + 10))
    until curl -sf --max-time 1 "$API/version" >/dev/null && served_by_us; do
      pid_alive "$PIDFILE" || die "toxiproxy exited during start-up; see $TOXIPROXY_HOME/toxiproxy.log"
      if [ $SECONDS -ge $deadline ]; then
        stop_pid "$PIDFILE" toxiproxy 5 # it may live on without its API (a port taken meanwhile)
        die "toxiproxy did not serve its API within 10s; see $TOXIPROXY_HOME/toxiproxy.log"
      fi
      sleep 0.1
    done
  fi
  create_proxies
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_pid "$PIDFILE" toxiproxy 10 ;;
  status) pid_alive "$PIDFILE" ;;
  reset) api POST /reset ;;
  restart)
    stop_pid "$PIDFILE" toxiproxy 2
    start
    ;;
  *) die "usage: $0 install|start|stop|status|reset|restart" ;;
esac
