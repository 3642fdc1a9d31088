"""What both forms of the idempotency store share (gateway.idempotency.store): the scripts run and
timed on the transport with its failures raised as the gateway's, the replies read (claims, the previous
layout's guards, pending reservations past the in-doubt horizon), `recall`, `answer_of`, the admission
alone, and completions sent with the tick's write, sent again until Redis takes them, drained at
shutdown. Each form says how it claims, records and releases (single_node, cluster)."""

import abc
import asyncio
import logging
import time
from importlib import resources
from typing import Any

from gateway.idempotency.reservation import FP_BYTES, AdmissionCheck, KeyLayout, PendingRecord, Quota, Reservation
from gateway.idempotency.store import Decision, DoubtWatcher
from gateway.redis.cluster import Client
from gateway.redis.errors import RedisError, RedisUnavailable, unavailable
from gateway.redis.memory import Memory
from gateway.redis.pipeline import Script
from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway.idempotency.store")


def _source(name: str) -> str:
    return resources.files("gateway.idempotency").joinpath("lua", f"{name}.lua").read_text()


def lua_script(name: str, *functions: str) -> Script:
    """A script from lua/, prefixed by common.lua and the files of the local functions it calls."""
    return Script("".join(_source(function) for function in ("common", *functions, name)))


LIMIT = lua_script("limit", "admit")


class StoreBase(abc.ABC):
    """The part of `IdempotencyStore` both forms share, on the worker's Redis client."""

    layout: KeyLayout  # each form's

    def __init__(
        self,
        redis: Client,
        metrics: Metrics,
        *,
        pending_ttl_ms: int,
        done_ttl_ms: int,
        guard_ttl_ms: int | None = None,
        stale_after_ms: int | None = None,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._pending_ttl_ms = pending_ttl_ms
        self._done_ttl_ms = done_ttl_ms
        self._guard_ttl_ms = max(guard_ttl_ms or done_ttl_ms, done_ttl_ms, pending_ttl_ms)
        self._stale_after_ms = stale_after_ms
        self.on_doubt: DoubtWatcher | None = None  # set by the app: the in-doubt resolver
        scripts = ("reserve", "reserve_all", "complete", "complete_all", "release", "limit", "recall")
        self._duration = {name: metrics.tally_histogram(metrics.redis_duration, name) for name in scripts}
        self._errors = {name: metrics.tally(metrics.redis_errors, name) for name in scripts}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsent: list[tuple[Reservation, bytes, asyncio.Future[bool]]] = []  # completions to send again
        self._resender: asyncio.Task[None] | None = None
        self._completing: set[asyncio.Future[bool]] = set()

    async def _run(self, name: str, script: Script, keys: tuple[str, ...], args: list[Any]) -> Any:
        started = time.perf_counter()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        try:
            await self._redis.connect()
            reply = await self._redis.run_script(script, keys, args)
        except RedisError as exc:
            self._errors[name].inc()
            raise unavailable(exc) from None
        self._duration[name].observe(time.perf_counter() - started)
        return reply

    async def _execute(self, name: str, *command: Any) -> Any:
        """One plain command (a look-up of the rare paths), its failure a DependencyUnavailable."""
        try:
            return await self._redis.execute(*command)
        except RedisError as exc:
            self._errors[name].inc()
            raise unavailable(exc) from None

    def _claimed(self, r: Reservation, claimed: list[Any], now_ms: int) -> tuple[Decision, bytes | None]:
        """claim.lua's decision for `r` (a replay carries the stored answer; the previous layout's guard
        its digest). A key found pending for longer than the in-doubt horizon, by Redis's clock (its
        owner may be gone), is handed to `on_doubt`."""
        decision = Decision(claimed[0])
        if decision is Decision.IN_FLIGHT:
            self._watch(r, int(claimed[1]), claimed[2], claimed[3], now_ms)
            return decision, None
        return decision, (claimed[1] if len(claimed) > 1 else None)

    def _watch(self, r: Reservation, reserved_at_ms: int, event_id: bytes, topic: bytes, now_ms: int) -> None:
        """Hand a pending reservation older than the in-doubt horizon to `on_doubt`."""
        age_ms = now_ms - reserved_at_ms
        if self._stale_after_ms is None or age_ms <= self._stale_after_ms or self.on_doubt is None or not event_id:
            return
        pending = PendingRecord(event_id.decode(), topic.decode(), reserved_at_ms, age_ms, time.monotonic())
        self.on_doubt(r.holding(pending.event_id, pending.topic), pending)

    async def _read_legacy(
        self, reservations: list[Reservation], decisions: list[tuple[Decision, bytes | None]], now_ms: int
    ) -> list[tuple[Decision, bytes | None]]:
        """`decisions`, each guard of the previous layout (LEGACY, its digest) decided by its hash."""
        return [
            await self._legacy(r, d[1], now_ms) if d[0] is Decision.LEGACY else d
            for r, d in zip(reservations, decisions, strict=True)
        ]

    async def _legacy(self, r: Reservation, digest: bytes | None, now_ms: int) -> tuple[Decision, bytes | None]:
        """What the previous layout's hash of the key owning an id (`digest`) decides for `r`."""
        if digest is None or digest.decode() != r.key_digest:
            return Decision.TXN_TAKEN, None
        fp, state, response, at, event_id, topic = await self._execute(
            "reserve", "HMGET", r.legacy_key, "fp", "state", "response", "at", "ev", "topic"
        )
        if fp is None:
            return Decision.TXN_TAKEN, None  # expired between the two looks: the guard goes with it
        if fp.decode() != r.fingerprint:
            return Decision.MISMATCH, None
        if state == b"done":
            return Decision.REPLAY, response
        self._watch(r, int(at or 0), event_id or b"", topic or b"", now_ms)
        return Decision.IN_FLIGHT, None

    async def recall(self, r: Reservation) -> tuple[Decision | None, bytes | None]:
        """What Redis remembers of `r` without claiming anything: for a submission refused before its
        reservation (its grant, the limits or the calendar changed since it was accepted), whose replay
        still gets its original answer. REPLAY, IN_FLIGHT, RECALL or ELSEWHERE; None when Redis knows
        nothing of it for this payload (the refusal stands)."""
        started = time.perf_counter()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        held, owner = await asyncio.gather(
            self._execute("recall", "GET", r.idem_key), self._execute("recall", "GET", r.txn_key)
        )
        self._duration["recall"].observe(time.perf_counter() - started)
        if held is not None:
            state, answer = _held(held, r.fp)
            if state is None:
                return None, None
            return (Decision.REPLAY, answer) if state == b"D" else (Decision.IN_FLIGHT, None)
        if owner is None:
            return None, None
        if owner == r.fp + r.key_id:
            return Decision.RECALL, None
        if len(owner) == 64:
            decided = await self._legacy(r, owner, 0)
            return decided if decided[0] in (Decision.REPLAY, Decision.IN_FLIGHT) else (None, None)
        return (Decision.ELSEWHERE, None) if owner[:FP_BYTES] == r.fp else (None, None)

    async def answer_of(self, partner: str, transaction_id: str) -> bytes | None:
        """The stored answer of an accepted transaction of `partner` (None while in flight, or once its
        idempotency key expired): the status API's view of what only the gateway knows yet."""
        owner = await self._execute("recall", "GET", self.layout.txn(partner, transaction_id))
        if owner is None:
            return None
        if len(owner) == 64:  # the previous layout
            state, response = await self._execute(
                "recall", "HMGET", self.layout.legacy_idem(partner, owner.decode()), "state", "response"
            )
            return response if state == b"done" else None
        held = await self._execute("recall", "GET", self.layout.idem(partner, owner[FP_BYTES:]))
        state, answer = _held(held or b"", owner[:FP_BYTES])
        return answer if state == b"D" else None

    async def admit(self, a: AdmissionCheck) -> tuple[Decision | None, Quota]:
        """The admission alone (a request that does not reserve): None when admitted, else why not."""
        reply = await self._run("limit", LIMIT, (a.nonce_key, a.rate_key), a.args)
        if (refused := refusal(reply)) is not None:
            return refused
        return None, Quota(int(reply[1]), int(reply[2]))

    def complete(self, r: Reservation, response: bytes) -> "asyncio.Future[bool]":
        """Mark the key done with the response replays will get: sent with this tick's pipeline write,
        and not waited for by the intake.

        Called once Kafka has the record, before the 202 goes out, so the command reaches Redis ahead
        of the partner's answer and a replay finds the key done. When Redis does not take it (the
        connection dropped, Redis restarts), it is sent again, with back-off, until Redis does: the
        key stays pending meanwhile, so a retry gets 409 and never a second acceptance. The future
        says whether the entry was ours once recorded (False also when shutdown gave up on it)."""
        outcome = self._tracked()
        self._send_complete(r, response, outcome)
        return outcome

    def complete_all(self, completions: list[tuple[Reservation, bytes]]) -> None:
        """`complete` for every transaction of a bulk request that Kafka has, as one script sent with
        this tick's pipeline write. When Redis does not take it, each completion is sent again on its
        own, as `complete` does, until Redis takes it."""
        if not completions:
            return
        batch = self._tracked()
        started = time.perf_counter()

        def failed(error: BaseException) -> None:
            self._errors["complete_all"].inc()
            log.warning("could not complete %d transactions: %s; sending each again", len(completions), error)
            for r, response in completions:
                self._send_later(r, response, self._tracked())
            if not batch.done():
                batch.set_result(False)

        def recorded(reply: "asyncio.Future[Any]") -> None:
            if (error := reply.exception()) is not None:
                return failed(error)
            self._duration["complete_all"].observe(time.perf_counter() - started)
            for (r, _), stored in zip(completions, reply.result(), strict=True):
                if not stored:
                    log.warning("idempotency key %s was already settled when its completion arrived", r.idem_key)
            if not batch.done():
                batch.set_result(True)

        try:
            sent = self._record_all(completions)
        except RedisUnavailable as exc:
            failed(exc)
        else:
            sent.add_done_callback(recorded)

    @abc.abstractmethod
    def _record(self, r: Reservation, answer: bytes) -> "asyncio.Future[Any]":
        """Record `r`'s answer, sent with this tick's write: a future of 1 (stored) or 0."""

    @abc.abstractmethod
    def _record_all(self, completions: list[tuple[Reservation, bytes]]) -> "asyncio.Future[Any]":
        """Record every answer of `completions`, sent with this tick's write: a future of one 1 or 0 each."""

    def _tracked(self) -> "asyncio.Future[bool]":
        """A completion's future, which shutdown waits for."""
        assert self._loop is not None, "reserve first"
        outcome: asyncio.Future[bool] = self._loop.create_future()
        self._completing.add(outcome)
        outcome.add_done_callback(self._completing.discard)
        return outcome

    def _send_later(self, r: Reservation, response: bytes, outcome: "asyncio.Future[bool]") -> None:
        """A completion Redis did not take: sent again, with back-off, until Redis takes it."""
        self._unsent.append((r, response, outcome))
        if self._resender is None or self._resender.done():
            assert self._loop is not None
            self._resender = self._loop.create_task(self._resend())

    def _send_complete(self, r: Reservation, response: bytes, outcome: "asyncio.Future[bool]") -> None:
        started = time.perf_counter()

        def failed(error: BaseException) -> None:
            self._errors["complete"].inc()
            if not self._unsent:
                log.warning("could not complete %s: %s; sending it again when Redis answers", r.idem_key, error)
            self._send_later(r, response, outcome)

        def recorded(reply: "asyncio.Future[Any]") -> None:
            if (error := reply.exception()) is not None:
                return failed(error)
            self._duration["complete"].observe(time.perf_counter() - started)
            if not reply.result():
                log.warning("idempotency key %s was already settled when its completion arrived", r.idem_key)
            if not outcome.done():
                outcome.set_result(bool(reply.result()))

        try:
            sent = self._record(r, response)
        except RedisUnavailable as exc:
            failed(exc)
        else:
            sent.add_done_callback(recorded)

    async def _resend(self) -> None:
        """Send the completions Redis did not take again, reconnecting with back-off, until none is left."""
        pause = 0.05
        while self._unsent:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            try:
                await self._redis.connect()
            except RedisUnavailable:
                continue
            batch, self._unsent = self._unsent, []
            self._metrics.tally(self._metrics.completes_retried).inc(len(batch))
            for r, response, outcome in batch:
                if not outcome.done():
                    self._send_complete(r, response, outcome)  # a failure puts it back in _unsent
            if not self._unsent:
                log.info("completions sent again: %d", len(batch))

    async def drain(self, timeout: float) -> int:
        """Shutdown: wait up to `timeout` seconds for every completion still on its way; return how many
        were given up (their keys stay pending and are settled from the log when retried)."""
        waiting = list(self._completing)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        left = [outcome for outcome in self._completing if not outcome.done()]
        for outcome in left:
            outcome.set_result(False)
        if self._resender is not None:
            self._resender.cancel()
        self._unsent.clear()
        if left:
            log.error("shutdown: %d completions could not reach Redis; those keys are settled from the log", len(left))
        return len(left)

    def hold_in_doubt(self, r: Reservation) -> None:
        """Keep `r` (reserved by this worker) locked after its delivery came out in doubt, or after its
        release could not reach Redis, and have it settled from the log; without a resolver it stays
        pending until its TTL."""
        if self.on_doubt is not None:
            self.on_doubt(r, PendingRecord(r.event_id, r.topic, r.reserved_at_ms, 0, r.seen_at))
        else:
            log.error("reservation %s in doubt and no resolver: it stays pending until it expires", r.idem_key)

    async def memory(self) -> Memory:
        """How full Redis is (the readiness probe); DependencyUnavailable when it cannot answer."""
        try:
            return await self._redis.memory()
        except RedisError as exc:
            raise unavailable(exc) from None

    def close(self) -> None:
        """Close the connections to Redis; commands still waiting fail."""
        self._redis.close()


def _held(value: bytes, fp: bytes) -> tuple[bytes | None, bytes]:
    """An idempotency key's value (claim.lua) as this payload's state, `P` (pending) or `D` (done), and
    what follows its fingerprint (the answer when done); (None, b"") when it holds another payload."""
    if len(value) <= FP_BYTES or value[1 : 1 + FP_BYTES] != fp:
        return None, b""
    return value[:1], bytes(value[1 + FP_BYTES :])


def refusal(reply: list[Any]) -> tuple[Decision, Quota] | None:
    """The admission's refusal in a script's reply, or None when it admitted the request."""
    if reply[0] == b"limited":
        return Decision.LIMITED, Quota(0, int(reply[2]), int(reply[1]))
    if reply[0] == b"nonce_replayed":
        return Decision.NONCE_REPLAYED, Quota(-1, 0)
    return None
