"""Idempotency in Redis: one Lua round trip decides, two more record the outcome.

Keys carry the partner in a hash tag, so the scripts touch one cluster slot:
`idem:{partner}:<sha256 of the idempotency key>` and `txn:{partner}:<transaction_id>`.
The scripts are registered once and run with EVALSHA; redis-py reloads a script that Redis lost
(SCRIPT FLUSH, restart) and retries the call, so no request sees NOSCRIPT.
"""

import enum
import hashlib
import time
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.errors import DependencyUnavailable
from gateway.metrics import Metrics


def _script(name: str) -> str:
    return resources.files("gateway").joinpath("lua", f"{name}.lua").read_text()


class Decision(enum.Enum):
    """What `reserve` found for a submission."""

    NEW = b"new"
    REPLAY = b"replay"
    IN_FLIGHT = b"in_flight"
    MISMATCH = b"mismatch"
    TXN_TAKEN = b"txn_taken"


class Reservation:
    """The Redis keys and values of one submission, computed once per request."""

    __slots__ = ("fingerprint", "idem_key", "key_digest", "txn_key")

    def __init__(self, partner: str, idempotency_key: str, transaction_id: str, fingerprint: str) -> None:
        self.key_digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        self.idem_key = f"idem:{{{partner}}}:{self.key_digest}"
        self.txn_key = f"txn:{{{partner}}}:{transaction_id}"
        self.fingerprint = fingerprint


class IdempotencyStore:
    """The `reserve`, `complete` and `release` scripts on one Redis client."""

    def __init__(self, redis: Redis, metrics: Metrics, *, pending_ttl_ms: int, done_ttl_ms: int) -> None:
        self._redis = redis
        self._metrics = metrics
        self._reserve = redis.register_script(_script("reserve"))
        self._complete = redis.register_script(_script("complete"))
        self._release = redis.register_script(_script("release"))
        self._pending_ttl_ms = pending_ttl_ms
        self._done_ttl_ms = done_ttl_ms

    async def _run(self, name: str, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            reply = await script(keys=keys, args=args)
        except RedisError as exc:
            self._metrics.redis_errors.labels(name).inc()
            raise DependencyUnavailable("redis", type(exc).__name__) from None
        self._metrics.redis_duration.labels(name).observe(time.perf_counter() - started)
        return reply

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        """Claim the key when new; otherwise say why not (a replay carries the stored response)."""
        reply = await self._run(
            "reserve", self._reserve, [r.idem_key, r.txn_key], [r.fingerprint, r.key_digest, self._pending_ttl_ms]
        )
        return Decision(reply[0]), (reply[1] if len(reply) > 1 else None)

    async def complete(self, r: Reservation, response: bytes) -> bool:
        """Mark the key done with the response replays will get; False when it was not ours."""
        args = [r.fingerprint, r.key_digest, response, self._done_ttl_ms]
        return bool(await self._run("complete", self._complete, [r.idem_key, r.txn_key], args))

    async def release(self, r: Reservation) -> bool:
        """Drop our pending reservation so a retry starts afresh; False when there was none."""
        args = [r.fingerprint, r.key_digest]
        return bool(await self._run("release", self._release, [r.idem_key, r.txn_key], args))
