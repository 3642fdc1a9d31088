"""The checkouts of issue 23's measurement (benchmarks/redis_cost.py): "before", a git worktree of a
commit (the compiled fastcore copied in when its source is the same), "after", the working tree, and a
gateway of each, run from that checkout's code."""

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.servers import Contender
from tests.servers import BIN, ROOT, free_port


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def before_checkout(before: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The "before" checkout: `before` itself when it is a folder, else a git worktree of that commit in
    a temporary folder, removed afterwards; with what it is."""
    if Path(before).is_dir():
        yield Path(before).resolve(), {"path": str(Path(before).resolve())}
        return
    commit = git("rev-parse", "--verify", f"{before}^{{commit}}")
    path = Path(tempfile.mkdtemp(prefix="redis-cost-before-"))
    git("worktree", "add", "--detach", str(path), commit)
    try:
        yield path, {"commit": commit, "worktree": str(path)}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def after_state(path: Path) -> dict[str, Any]:
    """What the "after" checkout holds: its HEAD, the files changed from it, and a digest of the change."""
    if path.resolve() != ROOT:
        return {"path": str(path)}
    changed = git("status", "--porcelain", "--", "gateway", "fastcore", "processor").splitlines()
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "gateway", "fastcore", "processor"],
                          capture_output=True, check=True).stdout  # fmt: skip
    digest = hashlib.sha256(diff)
    for line in changed:  # files git does not track yet: their names and contents
        if line.startswith("??"):
            top = ROOT / line[3:]
            for file in sorted(p for p in [top, *top.rglob("*")] if p.is_file()):
                digest.update(str(file).encode() + file.read_bytes())
    head = git("rev-parse", "HEAD")
    return {"path": str(ROOT), "head": head, "changed": changed, "change_sha256": digest.hexdigest()[:16]}


def prepare_fastcore(before: Path, before_info: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The compiled fastcore extension into the "before" worktree when fastcore's source there is the
    working tree's; else pure Python for both. The environment both gateways get, and what was done."""
    if "commit" not in before_info:
        return {}, "each checkout's own"
    changed = git("diff", "--name-only", before_info["commit"], "--", "fastcore/")
    built = sorted(ROOT.glob("fastcore/_core*.so"))
    if changed or not built:
        why = f"fastcore differs at {before_info['commit'][:7]}: {changed}" if changed else "no compiled extension"
        return {"FASTCORE_NO_EXTENSIONS": "1"}, f"pure Python for both ({why})"
    for library in built:
        shutil.copy2(library, before / "fastcore" / library.name)
    return {}, f"compiled, {built[0].name} copied into the before worktree (fastcore/ unchanged since that commit)"


def start_gateway(label: str, checkout: Path, redis_url: str, env: dict[str, str], scratch: Path) -> Contender:
    """The gateway of `checkout` (Granian, one worker per core, open mode), ready; SystemExit with the end
    of its log when it does not become ready."""
    from gateway.__main__ import granian_arguments

    # Granian run directly with the launcher's options (gateway/__main__.py): the checkout measured may
    # predate the launcher
    port = free_port()
    command = [str(BIN / "granian"), *granian_arguments("127.0.0.1", port, os.cpu_count() or 1, 10)]
    command += ["--working-dir", str(checkout), "--log-level", "warning"]
    metrics = scratch / f"metrics-{label}"
    metrics.mkdir()
    environment = {
        **env,
        "PYTHONPATH": str(checkout),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_PARTNERS_FILE": "",  # open mode
        "GATEWAY_ACCESS_LOG": "false",  # the client's side; Redis does the same either way
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "GATEWAY_OPS_PORT": str(free_port()),  # an operations listener of its own, not a running gateway's 9101
    }
    # Granian puts its working directory first on the path, and its cwd
    server = Contender(label, command, port, "/ready", environment, cwd=checkout)
    server.start(scratch)
    return server


def loaded_from(server: Contender, checkout: Path) -> list[str]:
    """Where each worker's compiled fastcore was loaded from (/proc/<pid>/maps): a check that the worker
    runs `checkout`'s code; empty without the compiled extension."""
    places = set()
    for pid in server.workers():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "fastcore/_core" in line:
                    places.add(line.split(maxsplit=5)[-1])
    if any(not place.startswith(str(checkout.resolve()) + "/") for place in places):
        raise SystemExit(f"a worker of {server.name} loaded fastcore from {sorted(places)}, not from {checkout}")
    return sorted(places)
