#!/usr/bin/env bash
# `make run`: the local stack (unless configured elsewhere) and the gateway under Granian on :8000.
# Ctrl-C stops the gateway (which flushes its producer), then whatever this script started.
set -euo pipefail
. "$(dirname "$0")/common.sh"

use_stack
trap 'exit 130' INT TERM
# one metrics folder per run: every worker writes there and a scrape sums them
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$STACK_DIR/metrics}
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
"$ROOT/.venv/bin/python" -m gateway check
say "gateway on http://${GATEWAY_HOST:-0.0.0.0}:${GATEWAY_PORT:-8000} (docs at /docs); Ctrl-C stops"
"$ROOT/.venv/bin/granian" --interface asgi --factory gateway.app:create_app \
  --host "${GATEWAY_HOST:-0.0.0.0}" --port "${GATEWAY_PORT:-8000}" \
  --workers "${GATEWAY_WORKERS:-$(nproc)}" --workers-kill-timeout "${GATEWAY_SHUTDOWN_GRACE_SECONDS:-15}" \
  --no-ws --log-level warning || true
