"""Idempotency in Redis: one Lua round trip decides; recording the outcome is sent, not waited for.

Keys carry the partner in a hash tag, so the scripts touch one cluster slot:
`idem:{partner}:<sha256 of the idempotency key>` and `txn:{partner}:<transaction_id>`.
The scripts run with EVALSHA on the worker's pipelined connection, which sends the source again
when Redis lost it (SCRIPT FLUSH, restart), so no request sees NOSCRIPT.
"""

import asyncio
import enum
import hashlib
import logging
import time
from importlib import resources
from typing import Any

from gateway.errors import DependencyUnavailable
from gateway.metrics import Metrics
from gateway.redis_pipeline import RedisPipeline, RedisUnavailable, ReplyError, Script

log = logging.getLogger("gateway.idempotency")


def _script(name: str) -> Script:
    return Script(resources.files("gateway").joinpath("lua", f"{name}.lua").read_text())


RESERVE, COMPLETE, RELEASE = _script("reserve"), _script("complete"), _script("release")


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
    """The `reserve`, `complete` and `release` scripts on the worker's Redis pipeline."""

    def __init__(self, redis: RedisPipeline, metrics: Metrics, *, pending_ttl_ms: int, done_ttl_ms: int) -> None:
        self._redis = redis
        self._metrics = metrics
        self._pending_ttl_ms = pending_ttl_ms
        self._done_ttl_ms = done_ttl_ms
        scripts = ("reserve", "complete", "release")
        self._duration = {name: metrics.tally_histogram(metrics.redis_duration, name) for name in scripts}
        self._errors = {name: metrics.tally(metrics.redis_errors, name) for name in scripts}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _run(self, name: str, script: Script, r: Reservation, args: list[Any]) -> Any:
        started = time.perf_counter()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        try:
            await self._redis.connect()
            reply = await self._redis.run_script(script, (r.idem_key, r.txn_key), args)
        except (RedisUnavailable, ReplyError) as exc:
            self._errors[name].inc()
            raise DependencyUnavailable("redis", str(exc)) from None
        self._duration[name].observe(time.perf_counter() - started)
        return reply

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        """Claim the key when new; otherwise say why not (a replay carries the stored response)."""
        reply = await self._run("reserve", RESERVE, r, [r.fingerprint, r.key_digest, self._pending_ttl_ms])
        return Decision(reply[0]), (reply[1] if len(reply) > 1 else None)

    def complete(self, r: Reservation, response: bytes) -> "asyncio.Future[bool]":
        """Mark the key done with the response replays will get: sent with this tick's pipeline write,
        and not waited for by the intake.

        Called once Kafka has the record, before the 202 goes out, so the command reaches Redis ahead
        of the partner's answer and a replay finds the key done. The future says whether the entry
        was ours (False also when Redis failed; that is logged and counted, never raised: Kafka has
        the record whatever happens here, and consumers de-duplicate by idempotency key)."""
        assert self._loop is not None, "reserve first"
        outcome: asyncio.Future[bool] = self._loop.create_future()
        started = time.perf_counter()

        def failed(error: BaseException) -> None:
            self._errors["complete"].inc()
            log.error(
                "could not complete %s after Kafka accepted: %s; it stays pending until it expires", r.idem_key, error
            )
            outcome.set_result(False)

        def recorded(reply: "asyncio.Future[Any]") -> None:
            if (error := reply.exception()) is not None:
                return failed(error)
            self._duration["complete"].observe(time.perf_counter() - started)
            if not reply.result():
                log.error("idempotency key %s changed hands while its record was produced", r.idem_key)
            outcome.set_result(bool(reply.result()))

        try:
            sent = self._redis.run_script(
                COMPLETE, (r.idem_key, r.txn_key), [r.fingerprint, r.key_digest, response, self._done_ttl_ms]
            )
        except RedisUnavailable as exc:
            failed(exc)
        else:
            sent.add_done_callback(recorded)
        return outcome

    async def release(self, r: Reservation) -> bool:
        """Drop our pending reservation so a retry starts afresh; False when there was none."""
        return bool(await self._run("release", RELEASE, r, [r.fingerprint, r.key_digest]))
