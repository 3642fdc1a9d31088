#!/usr/bin/env bash
# `make test`: the same stack as `make run` (reused when running), the whole pytest suite, then
# stops what it started. Exits with pytest's status.
set -euo pipefail
. "$(dirname "$0")/common.sh"

started=$("$ROOT/deploy/stack.sh" up)
cleanup() { [ -z "$started" ] || "$ROOT/deploy/stack.sh" down $started; }
trap cleanup EXIT
set -a
eval "$("$ROOT/deploy/stack.sh" env)"
set +a
cd "$ROOT"
"$ROOT/.venv/bin/python" -m pytest "$@"
