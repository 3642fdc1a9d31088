"""The local stack as the tests and the fault suite see it (deploy/stack.sh)."""

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """GATEWAY_DATABASE_URL, else the local stack's (with its role's password), as `deploy/stack.sh env`
    prints it."""
    if os.environ.get("GATEWAY_DATABASE_URL"):
        return os.environ["GATEWAY_DATABASE_URL"]
    printed = subprocess.run(
        [str(ROOT / "deploy" / "stack.sh"), "env"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in printed.splitlines():
        name, _, value = line.partition("=")
        if name == "GATEWAY_DATABASE_URL":
            return shlex.split(value)[0]
    raise LookupError("deploy/stack.sh env printed no GATEWAY_DATABASE_URL")
