#!/usr/bin/env bash
# `make chaos`: the long fault suite (tests/faults/chaos.py) on the local stack, with Toxiproxy in
# front of Redis and Kafka and the settlement processor folding the run beside the gateway; with
# STACK=cluster, the cluster's faults (a Kafka node and a Redis master killed) on the cluster stack,
# without Toxiproxy. Stops what it started; exits non-zero when any fault lost or re-accepted a
# transaction, answered an unexpected status or hung, or when the processor exited, was not ready
# within 10 s of a dependency's return, lost or doubled a transaction, broke an invariant of its state
# or failed its replay (the report's verdict).
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ -z "${GATEWAY_REDIS_URL:-}${GATEWAY_KAFKA_BOOTSTRAP:-}" ] \
  || die "make chaos kills Redis and Kafka, so it runs on the local stack only: unset GATEWAY_REDIS_URL and GATEWAY_KAFKA_BOOTSTRAP"
use_stack
toxiproxy_started=""
if [ "$STACK" = single ] && ! "$ROOT/deploy/toxiproxy.sh" status; then
  "$ROOT/deploy/toxiproxy.sh" start
  toxiproxy_started=1
fi
trap '[ -z "$toxiproxy_started" ] || "$ROOT/deploy/toxiproxy.sh" stop; stop_started' EXIT
cd "$ROOT"
"$ROOT/.venv/bin/python" -m tests.faults.chaos "$@"
