#!/usr/bin/env bash
# `make test`: the same stack as `make run` (reused when running), the whole pytest suite, then
# stops what it started. Exits with pytest's status.
set -euo pipefail
. "$(dirname "$0")/common.sh"

use_stack
cd "$ROOT"
"$ROOT/.venv/bin/python" -m pytest "$@"
