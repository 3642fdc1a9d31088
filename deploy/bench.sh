#!/usr/bin/env bash
# `make bench`: the same stack as `make test` (reused when running) and the cluster stack beside it, wrk
# from apt when missing, then benchmarks/run.py (the gateway, the peer and the ceiling under identical
# load, the gateway on one node against the cluster, Redis's cost per transaction before and after on Redis
# servers of its own (benchmarks/redis_cost.py), the report, the plot and the verdict against
# benchmarks/targets.toml), then the processor phase (benchmarks/processor.py) and the webhook phase
# (benchmarks/webhooks.py).
# Stops what it started; exits with the verdict.
set -euo pipefail
. "$(dirname "$0")/common.sh"

if ! command -v wrk >/dev/null; then
  say "installing wrk (apt)"
  apt_install wrk || die "could not install wrk; install it with your package manager"
fi
# the cluster stack beside the single one (BENCH_CLUSTER=0 skips it): the gateway on one node and on the
# cluster side by side, and the Redis clients A/B on both (benchmarks/run.py reads these two variables)
cluster_started=""
if [ "$STACK" = single ] && [ "${BENCH_CLUSTER:-1}" = 1 ] && [ -z "${GATEWAY_REDIS_URL:-}${GATEWAY_KAFKA_BOOTSTRAP:-}" ]; then
  cluster_started=$(STACK=cluster "$ROOT/deploy/stack.sh" up)
  BENCH_CLUSTER_ENV=$(STACK=cluster "$ROOT/deploy/stack.sh" env)
  BENCH_REDIS_CLUSTER_URL=$(sed -n 's/^GATEWAY_REDIS_URL=//p' <<<"$BENCH_CLUSTER_ENV")
  export BENCH_CLUSTER_ENV BENCH_REDIS_CLUSTER_URL
fi
use_stack
trap '[ -z "$cluster_started" ] || STACK=cluster "$ROOT/deploy/stack.sh" down $cluster_started; stop_started' EXIT
cd "$ROOT"
verdict=0
"$ROOT/.venv/bin/python" -m benchmarks.run "$@" || verdict=$?
# the processor phase (catch-up, lag under intake, status GET latency); skipped by --smoke
case " $* " in *" --smoke "*) ;; *) "$ROOT/.venv/bin/python" -m benchmarks.processor || verdict=1 ;; esac
# the webhook phase (deliveries/s draining a backlog, state change to delivery p99 at 1,000 tx/s); skipped by --smoke
case " $* " in *" --smoke "*) ;; *) "$ROOT/.venv/bin/python" -m benchmarks.webhooks || verdict=1 ;; esac
exit $verdict
