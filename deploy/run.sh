#!/usr/bin/env bash
# `make run`: the local stack (unless configured elsewhere) and the gateway under Granian on :8000.
# Ctrl-C stops the gateway (which flushes its producer), then whatever this script started.
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
# kernel would silently split the partners' connections between the two. Refuse before starting anything.
refuse_if_served() {
  local host=$1 port=$2 probe=$1 found owners
  case "$host" in 0.0.0.0 | "") probe=127.0.0.1 ;; :: | "[::]") probe=::1 ;; esac
  found=$(listeners "$host" "$port")
  if [ -z "$found" ] && ! timeout 2 bash -c ": </dev/tcp/$probe/$port" 2>/dev/null; then
    return 0
  fi
  # users:(("granian",pid=4242,fd=27)) -> granian (pid 4242)
  owners=$(printf '%s\n' "$found" | grep -o '("[^"]*",pid=[0-9]*' | sed 's/^("\(.*\)",pid=\([0-9]*\)$/\1 (pid \2)/' |
    sort -u | paste -sd, - | sed 's/,/, /g' || true)
  local advice="stop it or set GATEWAY_PORT to a free port"
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
say "settlement processor started under supervision (pid $processor; metrics on :${PROCESSOR_METRICS_PORT:-9102})"
say "gateway on http://$HOST:$PORT (docs at /docs); Ctrl-C stops"
# --respawn-failed-workers: a worker that dies is replaced at once while the others keep serving.
# --respawn-interval only paces graceful respawns (SIGHUP): a new worker starts that long before its
# predecessor stops; 5 s covers a worker's start-up (2-6 s on a loaded 2-core machine), 1 s left no
# worker listening for 1-3 s of a reload there. It does not delay the replacement of a dead worker.
"$ROOT/.venv/bin/granian" --interface asgi --factory gateway.api.app:create_app \
  --host "$HOST" --port "$PORT" \
  --workers "${GATEWAY_WORKERS:-$(nproc)}" --workers-kill-timeout "${GATEWAY_SHUTDOWN_GRACE_SECONDS:-15}" \
  --respawn-failed-workers --respawn-interval 5 \
  --no-ws --log-level warning || true
