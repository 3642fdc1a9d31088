"""Idempotency in Redis: one Lua round trip decides, two more record the outcome.

Keys carry the partner in a hash tag, so the scripts touch one cluster slot:
`idem:{partner}:<sha256 of the idempotency key>` and `txn:{partner}:<transaction_id>`.
The scripts are registered once and run with EVALSHA; redis-py reloads a script that Redis lost
(SCRIPT FLUSH, restart) and retries the call, so no request sees NOSCRIPT.
"""

import enum
import hashlib
from importlib import resources

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import DependencyUnavailable


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

    def __init__(self, redis: Redis, *, pending_ttl_ms: int, done_ttl_ms: int) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_script("reserve"))
        self._complete = redis.register_script(_script("complete"))
        self._release = redis.register_script(_script("release"))
        self._pending_ttl_ms = pending_ttl_ms
        self._done_ttl_ms = done_ttl_ms

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        """Claim the key when new; otherwise say why not (a replay carries the stored response)."""
        try:
            reply = await self._reserve(
                keys=[r.idem_key, r.txn_key], args=[r.fingerprint, r.key_digest, self._pending_ttl_ms]
            )
        except RedisError as exc:
            raise DependencyUnavailable("redis", type(exc).__name__) from None
        return Decision(reply[0]), (reply[1] if len(reply) > 1 else None)

    async def complete(self, r: Reservation, response: bytes) -> bool:
        """Mark the key done with the response replays will get; False when it was not ours."""
        try:
            stored = await self._complete(
                keys=[r.idem_key, r.txn_key], args=[r.fingerprint, r.key_digest, response, self._done_ttl_ms]
            )
        except RedisError as exc:
            raise DependencyUnavailable("redis", type(exc).__name__) from None
        return bool(stored)

    async def release(self, r: Reservation) -> bool:
        """Drop our pending reservation so a retry starts afresh; False when there was none."""
        try:
            released = await self._release(keys=[r.idem_key, r.txn_key], args=[r.fingerprint, r.key_digest])
        except RedisError as exc:
            raise DependencyUnavailable("redis", type(exc).__name__) from None
        return bool(released)
