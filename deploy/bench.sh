#!/usr/bin/env bash
# `make bench`: the same stack as `make test` (reused when running), wrk from apt when missing, then
# benchmarks/run.py (the gateway, the peer and the ceiling under identical load, the report, the plot
# and the verdict against benchmarks/targets.toml), then the processor phase (benchmarks/processor.py).
# Stops what it started; exits with the verdict.
set -euo pipefail
. "$(dirname "$0")/common.sh"

if ! command -v wrk >/dev/null; then
  say "installing wrk (apt)"
  apt_install wrk || die "could not install wrk; install it with your package manager"
fi
use_stack
cd "$ROOT"
verdict=0
"$ROOT/.venv/bin/python" -m benchmarks.run "$@" || verdict=$?
# the processor phase (catch-up, lag under intake, status GET latency); skipped by --smoke
case " $* " in *" --smoke "*) ;; *) "$ROOT/.venv/bin/python" -m benchmarks.processor || verdict=1 ;; esac
exit $verdict
