#!/usr/bin/env bash
# `make test`: the same stack as `make run` (reused when running), the whole pytest suite, then
# stops what it started. Exits with pytest's status.
set -euo pipefail
. "$(dirname "$0")/common.sh"

single_stack_only "make test"

# headless Chromium loads /docs with the network limited to localhost (tests/e2e/test_docs_offline.py)
if ! command -v chromium >/dev/null; then
  say "installing chromium (apt) for the offline docs check"
  apt_install chromium || die "could not install chromium; install it with your package manager"
fi
# faketime runs a gateway with its clock 8 s off Redis's (tests/integration/test_clock_skew.py)
if ! command -v faketime >/dev/null; then
  say "installing faketime (apt) for the clock-skew test"
  apt_install faketime || die "could not install faketime; install it with your package manager"
fi
# wrk drives the benchmark harness's smoke, its CPU-per-transaction phase (tests/e2e/test_bench_smoke.py)
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt) for the benchmark smoke"
  apt_install wrk || die "could not install wrk; install it with your package manager"
fi
# promtool checks and unit-tests the Prometheus alert rules (tests/unit/test_alert_rules.py)
install_promtool
# newman runs the Postman collection against a live gateway (tests/e2e/test_postman.py)
NEWMAN_VERSION=6.2.2
export NEWMAN=$ROOT/.venv/node/node_modules/.bin/newman
if [ ! -x "$NEWMAN" ] || [ "$("$NEWMAN" --version 2>/dev/null)" != "$NEWMAN_VERSION" ]; then
  say "installing newman $NEWMAN_VERSION (npm)"
  # bounded: npm retries a failing registry for many minutes otherwise
  timeout 300 npm install --prefix "$ROOT/.venv/node" --no-audit --no-fund --silent --fetch-retries=2 \
    "newman@$NEWMAN_VERSION" >&2 || die "could not install newman with npm (Node.js and its registry reachable?)"
fi
use_stack
cd "$ROOT"
# the 25 slowest tests at the end: what to look at first when the run nears its 15-minute budget
"$ROOT/.venv/bin/python" -m pytest --durations=25 "$@"
