"""Hot reload of the partner registry: each worker looks at the file every few seconds and serves a
changed one from the next request; a bad file is logged (naming the line) and the previous registry
stays."""

import asyncio
import logging
from pathlib import Path

from gateway.errors import ConfigurationError
from gateway.partners.authentication import Authenticator
from gateway.partners.registry import Registry

log = logging.getLogger("gateway.partners")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class RegistryWatcher:
    """Reloads `path` into `authenticator` when its modification time or size changes."""

    def __init__(self, path: Path, authenticator: Authenticator, interval: float) -> None:
        self._path = path
        self._authenticator = authenticator
        self._interval = interval
        self._seen = _stamp(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def check(self) -> bool:
        """Reload when the file changed; True when a new registry is now served."""
        stamp = _stamp(self._path)
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        try:
            registry = Registry.load(self._path)
        except ConfigurationError as exc:
            log.error("partner registry not reloaded, the previous one stays: %s", exc)
            return False
        self._authenticator.replace(registry)
        log.info("partner registry reloaded: %d partners", len(registry.partners))
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()
