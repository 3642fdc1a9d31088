"""Hot reload of the partner registry: each worker looks at the file (GATEWAY_PARTNERS_FILE) every
GATEWAY_PARTNERS_RELOAD_SECONDS and serves a changed one from the next request.

Change the file by writing the new version beside it, on the same file system, and renaming it over
the old one (`mv partners.toml.new partners.toml`, `os.replace`): a rename is one atomic step, so a
worker reads either the old file or the new one, whole. `python -m gateway check` on the new file first
(GATEWAY_PARTNERS_FILE=partners.toml.new) catches a mistake before any worker sees it.

A file written in place (an editor saving over it, `cat > partners.toml`) can be read half-written.
The watcher guards against it twice: a changed file is read only once its modification time is
`settle` old (0.5 s, at most the interval), and its stamp (settlement.stamps.FileStamp: inode,
size, times) is taken again after the read; if it moved, the read is thrown away and the file is read
again at the next look. A change is served within one interval of the last write, since the settle
time is spent only on a file younger than it and a write during that wait restarts the wait, not the
interval (tests/e2e/test_registry_reload.py holds a revocation to it on the two-worker server).

What a reload removed, partners and keys (by partner and key id, never a digest), is logged as a
warning and counted in settlement_partner_registry_removed_total before the new registry is served:
removing a key is how an operator revokes it, and a half-written file shows up there too. A file that
does not load is an error: logged with its line, counted (settlement_partner_registry_reloads_total
{outcome="failed"}), flagged (settlement_partner_registry_reload_failed) and named in /ready's warning
until a later reload succeeds; the previous registry serves meanwhile.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.partners.authentication import Authenticator
from gateway.partners.registry import Registry
from gateway.telemetry.metrics import Metrics
from settlement.errors import ConfigurationError
from settlement.stamps import FileStamp, file_stamp

log = logging.getLogger("gateway.partners")

SETTLE_SECONDS = 0.5  # how long a changed file is left alone before it is read (capped at the interval)


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RegistryWatcher:
    """Reloads `path` into `authenticator` when the file's stamp differs from the served registry's."""

    def __init__(
        self,
        path: Path,
        authenticator: Authenticator,
        interval: float,
        metrics: Metrics,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self._path = path
        self._authenticator = authenticator
        self._interval = interval
        self._settle = min(settle, interval) if interval > 0 else settle
        self._metrics = metrics
        served = authenticator.registry
        self._seen: FileStamp | None = served.source if served is not None else None
        self._failure: str | None = None  # why the last reload failed, until one succeeds
        self._task: asyncio.Task[None] | None = None

    @property
    def warning(self) -> str | None:
        """What /ready says while the file on disk could not be served, or None."""
        served = self._authenticator.registry
        if self._failure is None or served is None:
            return None
        return f"{self._failure}; serving the registry loaded at {_utc(served.loaded_at)}"

    def start(self) -> None:
        """Report the served registry (its warnings, the metrics), then watch the file every interval."""
        served = self._authenticator.registry
        if served is not None:
            for warning in served.warnings:
                log.warning("partner registry: %s", warning)
            self._metrics.registry_loaded.set(served.loaded_at)
            self._metrics.registry_reload_failed.set(0)
            for outcome in ("loaded", "failed"):  # both series exist from the start, at 0
                self._metrics.registry_reloads.labels(outcome)
            for kind in ("partner", "key"):
                self._metrics.registry_removed.labels(kind)
        if self._interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def settling(self, stamp: FileStamp | None, now: float) -> float:
        """Seconds until a file with `stamp` has been left alone for the settle time (0: read it now).
        At most the settle time, whatever the clock says of the file's modification time."""
        if stamp is None:
            return 0.0
        return min(max(self._settle - (now - stamp.mtime_ns / 1e9), 0.0), self._settle)

    def check(self, expected: FileStamp | None = None) -> bool:
        """Reload when the file changed; True when a new registry is now served. `expected`: the stamp
        the caller waited on; a file that moved since then is still being written (try again later)."""
        stamp = file_stamp(self._path)
        if stamp == self._seen or (expected is not None and stamp != expected):
            return False
        try:
            registry = Registry.load(self._path)
        except Exception as exc:  # whatever it is, the reload failed and an operator must see it
            if file_stamp(self._path) != stamp:
                return False  # changed while read: read it again at the next look
            if not isinstance(exc, ConfigurationError):
                log.exception("partner registry %s: unexpected error while loading", self._path)
            self._seen = stamp
            self._failed(str(exc) if isinstance(exc, ConfigurationError) else f"{type(exc).__name__}: {exc}")
            return False
        if registry.source != stamp or file_stamp(self._path) != stamp:
            return False  # changed while read: never serve what may be half a file
        self._seen = stamp
        self._serve(registry)
        return True

    def _failed(self, error: str) -> None:
        self._failure = f"partner registry reload failed at {_utc(time.time())}: {error}"
        log.error("partner registry not reloaded, the previous one stays: %s", error)
        self._metrics.registry_reloads.labels("failed").inc()
        self._metrics.registry_reload_failed.set(1)

    def _serve(self, registry: Registry) -> None:
        served = self._authenticator.registry
        if served is not None:
            partners, keys = registry.removed_since(served)
            if partners or keys:
                gone = [
                    f"{kind} {', '.join(names)}" for kind, names in (("partners", partners), ("keys", keys)) if names
                ]
                log.warning(
                    "partner registry reload removes %s: refused from now on (if not meant, the file may have "
                    "been read while written in place: write a new file and rename it over the old one)",
                    " and ".join(gone),
                )
                self._metrics.registry_removed.labels("partner").inc(len(partners))
                self._metrics.registry_removed.labels("key").inc(len(keys))
            revoked = registry.revoked_since(served, registry.loaded_at)
            if revoked:
                log.info("partner registry reload revokes keys %s", ", ".join(revoked))
        for warning in registry.warnings:
            log.warning("partner registry: %s", warning)
        self._authenticator.replace(registry)
        self._failure = None
        self._metrics.registry_reloads.labels("loaded").inc()
        self._metrics.registry_loaded.set(registry.loaded_at)
        self._metrics.registry_reload_failed.set(0)
        log.info("partner registry reloaded: %d partners", len(registry.partners))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            stamp = file_stamp(self._path)
            while stamp != self._seen:
                wait = self.settling(stamp, time.time())
                if wait:
                    await asyncio.sleep(wait)
                    moved = file_stamp(self._path)
                    if moved != stamp:  # written again meanwhile: let that write settle, not the next look
                        stamp = moved
                        continue
                try:
                    # in a thread: a load resolves every webhook host (settlement.webhooks), and a slow
                    # DNS answer must not hold up the requests this worker's loop is serving
                    await asyncio.to_thread(self.check, stamp)
                except Exception:  # the watch must outlive any surprise; the previous registry stays
                    log.exception("partner registry reload failed unexpectedly")
                break
