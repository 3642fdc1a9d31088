#!/usr/bin/env bash
# `make run`: the local stack (unless configured elsewhere) and the gateway under Granian on :8000, its
# operations listener (/metrics, /health) on 127.0.0.1:9101, HTTPS when GATEWAY_TLS_CERT_FILE and
# GATEWAY_TLS_KEY_FILE are set; beside it the settlement processor (metrics on 127.0.0.1:9102) and the
# webhook deliverer (127.0.0.1:9103). Ctrl-C stops the gateway (which flushes its producer), then
# whatever this script started.
set -euo pipefail
. "$(dirname "$0")/common.sh"

PORT=${GATEWAY_PORT:-8000}
# Open mode (no partner registry) serves anyone as the default partner: loopback only, unless the
# operator names the listen address (the gateway then warns again). With a registry: every address.
if [ -n "${GATEWAY_HOST:-}" ]; then
  HOST=$GATEWAY_HOST
elif [ -n "${GATEWAY_PARTNERS_FILE:-}" ]; then
  HOST=0.0.0.0
else
  HOST=127.0.0.1
  say "open mode (no GATEWAY_PARTNERS_FILE): listening on loopback only; set GATEWAY_HOST to listen elsewhere"
fi
export GATEWAY_HOST=$HOST
# The operations listener: every worker binds it (SO_REUSEPORT, as Granian binds PORT). It serves /metrics,
# which names every partner and its volumes: loopback unless the operator says otherwise. 0: none.
OPS_HOST=${GATEWAY_OPS_HOST:-127.0.0.1}
OPS_PORT=${GATEWAY_OPS_PORT:-9101}
if [ "$OPS_PORT" = "$PORT" ]; then
  die "GATEWAY_OPS_PORT and GATEWAY_PORT are both $PORT: the kernel would hand partners' connections to the operations listener; give it a port of its own (0: none)"
fi

# listeners HOST PORT: the `ss` lines of the sockets listening on PORT that a server on HOST:PORT
# would collide with (same address, or either one the wildcard); nothing when ss is missing.
listeners() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$2" 2>/dev/null | awk -v host="$1" '{
    addr = $4; sub(/:[0-9]+$/, "", addr); gsub(/[][]/, "", addr); sub(/%.*/, "", addr); sub(/^::ffff:/, "", addr)
    if (host == "0.0.0.0" || host == "::" || addr == "0.0.0.0" || addr == "::" || addr == "*" || addr == host) print
  }' || true
}

# Granian binds with SO_REUSEPORT, so a second gateway on a port already served would not fail: the
# kernel would silently split the partners' connections (or the scrapes) between the two. Refuse before
# starting anything. refuse_if_served HOST PORT [VARIABLE that sets the port]
refuse_if_served() {
  local host=$1 port=$2 variable=${3:-GATEWAY_PORT} probe=$1 found owners
  case "$host" in 0.0.0.0 | "") probe=127.0.0.1 ;; :: | "[::]") probe=::1 ;; esac
  found=$(listeners "$host" "$port")
  if [ -z "$found" ] && ! timeout 2 bash -c ": </dev/tcp/$probe/$port" 2>/dev/null; then
    return 0
  fi
  # users:(("granian",pid=4242,fd=27)) -> granian (pid 4242)
  owners=$(printf '%s\n' "$found" | grep -o '("[^"]*",pid=[0-9]*' | sed 's/^("\(.*\)",pid=\([0-9]*\)$/\1 (pid \2)/' |
    sort -u | paste -sd, - | sed 's/,/, /g' || true)
  local advice="stop it or set $variable to a free port"
  if [ -n "$owners" ]; then
    die "$host:$port is already served by $owners; $advice"
  elif [ -n "$found" ]; then
    die "$host:$port is already served (by a process of another user: ss names none); $advice"
  elif command -v ss >/dev/null; then
    die "$host:$port already accepts connections; $advice"
  fi
  die "$host:$port already accepts connections (install ss, from iproute2, to see which process); $advice"
}

refuse_if_served "$HOST" "$PORT"
[ "$OPS_PORT" = 0 ] || refuse_if_served "$OPS_HOST" "$OPS_PORT" GATEWAY_OPS_PORT
# The processor's and the deliverer's operations ports (PROCESSOR_METRICS_HOST, 127.0.0.1 by default): one
# already served (a processor or deliverer left running) would stop the new one at start, in the background.
PROCESSOR_HOST=${PROCESSOR_METRICS_HOST:-127.0.0.1}
PROCESSOR_PORT=${PROCESSOR_METRICS_PORT:-9102}
DELIVER_PORT=${PROCESSOR_DELIVER_METRICS_PORT:-9103}
[ "$PROCESSOR_PORT" = 0 ] || refuse_if_served "$PROCESSOR_HOST" "$PROCESSOR_PORT" PROCESSOR_METRICS_PORT
[ "$DELIVER_PORT" = 0 ] || refuse_if_served "$PROCESSOR_HOST" "$DELIVER_PORT" PROCESSOR_DELIVER_METRICS_PORT
use_stack
trap 'exit 130' INT TERM
# one metrics folder per run: every worker writes there and a scrape sums them
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$STACK_DIR/metrics}
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
"$ROOT/.venv/bin/python" -m gateway check
# The settlement processor beside the gateway: it folds the window topics into PostgreSQL (metrics,
# /health and /ready on PROCESSOR_METRICS_PORT, 9102 by default), supervised: started again with
# back-off whenever it dies (as Granian respawns a worker). It stops when this script ends.
"$ROOT/.venv/bin/settlement-processor" supervise &
processor=$!
trap 'kill -TERM "$processor" 2>/dev/null; wait "$processor" 2>/dev/null; stop_started' EXIT
where="metrics and /ready on http://$PROCESSOR_HOST:$PROCESSOR_PORT"
[ "$PROCESSOR_PORT" != 0 ] || where="no metrics: PROCESSOR_METRICS_PORT=0"
say "settlement processor started under supervision (pid $processor; $where)"
# The webhook deliverer beside it: it sends the outbox's events to the partners the registry
# (GATEWAY_PARTNERS_FILE) subscribes, signed, and retries them (metrics, /health and /ready on
# PROCESSOR_DELIVER_METRICS_PORT, 9103 by default). Without a registry nobody is subscribed and it sends
# nothing. It waits out PostgreSQL by itself; SIGTERM lets the attempts under way end and be recorded.
# It stops when this script ends, with the processor.
"$ROOT/.venv/bin/settlement-processor" deliver &
deliverer=$!
trap 'kill -TERM "$deliverer" "$processor" 2>/dev/null; wait "$deliverer" "$processor" 2>/dev/null; stop_started' EXIT
where="metrics and /ready on http://$PROCESSOR_HOST:$DELIVER_PORT"
[ "$DELIVER_PORT" != 0 ] || where="no metrics: PROCESSOR_DELIVER_METRICS_PORT=0"
say "webhook deliverer started (pid $deliverer; $where)"
# HTTPS without a proxy in front: `gateway check` above refused one file without the other, or a bad pair
scheme=http
[ -z "${GATEWAY_TLS_CERT_FILE:-}" ] || scheme=https
say "gateway on $scheme://$HOST:$PORT (docs at /docs); Ctrl-C stops"
if [ "$OPS_PORT" = 0 ]; then
  say "no operations listener (GATEWAY_OPS_PORT=0): no /metrics"
else
  say "metrics on http://$OPS_HOST:$OPS_PORT/metrics (every worker's; /health there too)"
fi
# the one launcher (gateway/__main__.py: Granian's options, workers from GATEWAY_WORKERS, the grace from
# GATEWAY_SHUTDOWN_GRACE_SECONDS, TLS from GATEWAY_TLS_*); it becomes Granian, found on PATH
PATH="$ROOT/.venv/bin:$PATH" "$ROOT/.venv/bin/python" -m gateway serve --host "$HOST" --port "$PORT" \
  --log-level warning || true
