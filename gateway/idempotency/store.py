"""Idempotency in Redis: one Lua round trip decides; recording the outcome is sent, not waited for.

Two strings per transaction, nothing kept that a later answer does not need (lua/claim.lua):
- the idempotency key, `key:{partner}:<key id>` (GATEWAY_IDEMPOTENCY_TTL_SECONDS): while its record is
  produced, the fingerprint and the record it is about to produce (event id, topic, Redis's time);
  once Kafka has it, the fingerprint and the compact answer replays get;
- the transaction id's guard, `txn:{partner}:<transaction_id>` (GATEWAY_TRANSACTION_ID_TTL_SECONDS, days):
  the fingerprint and key id that own the id, written once when claimed.
A retry whose key Redis has forgotten but whose id it still guards, or the same payment under another
key, is answered from the ledger (PostgreSQL) when it knows the transaction (gateway.intake.flow).

Keys carry the partner in a hash tag (`KeyLayout`), so on one node one script decides both keys at
once; a Redis Cluster spreads each partner over many slots instead (gateway.idempotency.sharded). A guard
holding a 64-hex digest was written by the previous layout (a hash `idem:{partner}:<digest>` beside it):
it is read as it stands until it expires, so no transaction accepted before an upgrade is accepted again.
The scripts run on the worker's pipelined connection: the source on a script's first run there, EVALSHA
after, and the source again when Redis lost it (SCRIPT FLUSH), so no request sees NOSCRIPT and a
completion is never overtaken by the replay behind it (gateway.idempotency.redis_pipeline).

A pending reservation names the record it is about to produce, so that when it stays pending too long
(its worker died, the delivery was in doubt, the completion was lost) any worker can settle it from
the Kafka log (gateway.intake.in_doubt); its age is measured by Redis's clock, the same for every
gateway. A completion that Redis did not take is sent again until it does; shutdown waits for the ones
still on their way.
"""

import asyncio
import base64
import copy
import enum
import hashlib
import logging
import time
import zlib
from collections.abc import Callable
from importlib import resources
from typing import Any, NamedTuple

from gateway.idempotency.redis_cluster import RedisCluster
from gateway.idempotency.redis_pipeline import RedisPipeline, RedisUnavailable, ReplyError, Script
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable

log = logging.getLogger("gateway.idempotency.store")


def _source(name: str) -> str:
    return resources.files("gateway.idempotency").joinpath("lua", f"{name}.lua").read_text()


def lua_script(name: str, *functions: str) -> Script:
    """A script from lua/, prefixed by common.lua and the files of the local functions it calls."""
    return Script("".join(_source(function) for function in ("common", *functions, name)))


RESERVE = lua_script("reserve", "admit", "claim")
RESERVE_ALL = lua_script("reserve_all", "admit", "claim")
COMPLETE, COMPLETE_ALL = lua_script("complete", "record"), lua_script("complete_all", "record")
RELEASE, LIMIT = lua_script("release", "drop"), lua_script("limit", "admit")
FP_BYTES = 8  # the bytes of a fingerprint Redis keeps (common.lua)


class Decision(enum.Enum):
    """What `reserve` found for a submission."""

    NEW = b"new"
    REPLAY = b"replay"
    IN_FLIGHT = b"in_flight"
    MISMATCH = b"mismatch"
    TXN_TAKEN = b"txn_taken"
    # the id is this payload's under this key, which Redis has forgotten: the ledger says whether it was
    # accepted (the key is held meanwhile; absent from the ledger, the submission is new)
    RECALL = b"recall"
    # the id is this payload's under another idempotency key: the ledger answers, else TXN_TAKEN
    ELSEWHERE = b"elsewhere"
    LEGACY = b"legacy"  # the id's guard is of the previous layout: read its hash (never returned)
    LIMITED = b"limited"  # the partner is over its rate limit: nothing was looked at
    NONCE_REPLAYED = b"nonce_replayed"  # a signed request's nonce was seen before: nothing was looked at


class Admission(NamedTuple):
    """What Redis checks before a partner's request does anything else (admit.lua): a signed request's
    nonce, and the partner's GCRA limit."""

    nonce_key: str
    nonce_ttl_ms: int  # 0: not signed
    rate_key: str
    interval_us: float  # 0: unlimited
    burst: int

    @property
    def args(self) -> list[Any]:
        return [self.nonce_ttl_ms, repr(self.interval_us), self.burst]


class Quota(NamedTuple):
    """What the admission found: requests left in the burst (-1 unlimited), microseconds until the
    burst is whole again, and, when refused for the rate, microseconds until one more is allowed."""

    remaining: int
    reset_us: int
    retry_after_us: int = 0


class KeyLayout:
    """Where a partner's idempotency keys and transaction ids live.

    With `spread` 0 (one node), both keys of a submission carry the partner's own hash tag, `{partner}`,
    so one script can decide them together. With `spread` N (a cluster), a key's tag is
    `{partner.b}` with b taken from its key id, and an id's from a CRC of the id, each in 0..N-1:
    a partner's load lands on N slots, so on every master, while every key is still found from what
    the request carries. The two keys of one submission are then in different slots, decided in two
    steps (gateway.idempotency.sharded), and a bulk request costs one script per slot used."""

    __slots__ = ("spread",)

    def __init__(self, spread: int = 0) -> None:
        self.spread = spread

    def _tag(self, partner: str, shard: int) -> str:
        return f"{{{partner}}}" if not self.spread else f"{{{partner}.{shard % self.spread}}}"

    def idem(self, partner: str, key_id: bytes) -> str:
        """The Redis key of an idempotency key (its 12-byte id): fingerprint, then pending or answer."""
        name = base64.urlsafe_b64encode(key_id).decode()
        return f"key:{self._tag(partner, int.from_bytes(key_id[:4], 'big'))}:{name}"

    def legacy_idem(self, partner: str, key_digest: str) -> str:
        """The hash of an idempotency key (its SHA-256 hex digest) in the previous layout."""
        return f"idem:{self._tag(partner, int(key_digest[:8], 16))}:{key_digest}"

    def txn(self, partner: str, transaction_id: str) -> str:
        """The Redis key of a transaction id: the fingerprint and key id that own it."""
        return f"txn:{self._tag(partner, zlib.crc32(transaction_id.encode()))}:{transaction_id}"


ONE_NODE = KeyLayout()


def rate_key(partner: str) -> str:
    """The Redis key of a partner's GCRA state (its theoretical arrival time)."""
    return f"rate:{{{partner}}}"


def nonce_key(partner: str, nonce: str) -> str:
    """The Redis key remembering a signed request's nonce (its digest: the nonce is the partner's text)."""
    return f"nonce:{{{partner}}}:{hashlib.sha256(nonce.encode()).hexdigest()[:32]}"


def unlimited(partner: str) -> Admission:
    """The admission of a partner with no limit and no signature: the script checks nothing."""
    return Admission(nonce_key(partner, ""), 0, rate_key(partner), 0.0, 1)


class Reservation:
    """The Redis keys and values of one submission, computed once per request."""

    __slots__ = (
        "_digest",
        "_layout",
        "admission",
        "event_id",
        "fingerprint",
        "fp",
        "idem_key",
        "key_id",
        "partner",
        "quota",
        "reserved_at_ms",
        "seen_at",
        "topic",
        "transaction_id",
        "txn_key",
    )

    def __init__(
        self,
        partner: str,
        idempotency_key: str,
        transaction_id: str,
        fingerprint: str,
        event_id: str = "",
        topic: str = "",
        admission: Admission | None = None,
        layout: KeyLayout = ONE_NODE,
    ) -> None:
        self._digest = hashlib.sha256(idempotency_key.encode()).digest()
        self.key_id = self._digest[:12]
        self.partner = partner
        self.transaction_id = transaction_id
        self.idem_key = layout.idem(partner, self.key_id)
        self.txn_key = layout.txn(partner, transaction_id)
        self.fingerprint = fingerprint  # SHA-256 hex of the canonical transaction
        self.fp = bytes.fromhex(fingerprint[: 2 * FP_BYTES])
        self.event_id = event_id  # the record this reservation is about to produce
        self.topic = topic
        self.reserved_at_ms = 0  # set by `reserve`: Redis's clock
        self.seen_at = 0.0  # set by `reserve`: this process's monotonic clock when Redis answered
        self.admission = admission or unlimited(partner)
        self.quota: Quota | None = None  # set by `reserve`: what the admission found
        self._layout = layout

    @property
    def key_digest(self) -> str:
        """The idempotency key's SHA-256, hex: its name in the previous layout."""
        return self._digest.hex()

    @property
    def legacy_key(self) -> str:
        """Where the previous layout kept this idempotency key (a hash)."""
        return self._layout.legacy_idem(self.partner, self.key_digest)

    def holding(self, event_id: str, topic: str) -> "Reservation":
        """This submission's keys as held by another attempt (the record `event_id` on `topic`): what
        the in-doubt resolver completes or releases for a reservation it found pending."""
        held = copy.copy(self)
        held.event_id, held.topic = event_id, topic
        return held

    def reserved(self, redis_now_ms: int) -> None:
        """Note when Redis reserved it, by Redis's clock and by this process's."""
        self.reserved_at_ms, self.seen_at = redis_now_ms, time.monotonic()


class PendingRecord(NamedTuple):
    """What a pending reservation says about its record: enough to look for it in the log, and how old
    it was (Redis's clock) when this process saw it (`seen_at`, monotonic)."""

    event_id: str
    topic: str
    reserved_at_ms: int
    age_ms: int = 0
    seen_at: float = 0.0


# takes a reservation whose record may or may not be in the log, and settles it from the log
DoubtWatcher = Callable[[Reservation, PendingRecord], None]


class IdempotencyStore:
    """The `reserve`, `complete` and `release` scripts on the worker's Redis pipeline (one node)."""

    layout = ONE_NODE

    def __init__(
        self,
        redis: RedisPipeline | RedisCluster,
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
        except (RedisUnavailable, ReplyError) as exc:
            self._errors[name].inc()
            raise DependencyUnavailable("redis", str(exc)) from None
        self._duration[name].observe(time.perf_counter() - started)
        return reply

    async def _execute(self, name: str, *command: Any) -> Any:
        """One plain command (a look-up of the rare paths), its failure a DependencyUnavailable."""
        try:
            return await self._redis.execute(*command)
        except (RedisUnavailable, ReplyError) as exc:
            self._errors[name].inc()
            raise DependencyUnavailable("redis", str(exc)) from None

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        """Admit the partner's request, then claim the key when new; otherwise say why not (a replay
        carries the stored answer). `r.quota` tells what the admission found.

        A key found pending for longer than the in-doubt horizon (its owner may be gone) is handed to
        `on_doubt`, which settles it from the log."""
        a = r.admission
        reply = await self._run(
            "reserve",
            RESERVE,
            (r.idem_key, r.txn_key, a.nonce_key, a.rate_key),
            [r.fp, r.key_id, self._pending_ttl_ms, self._guard_ttl_ms, r.event_id, r.topic, *a.args],
        )
        if (refused := refusal(reply)) is not None:
            r.quota = refused[1]
            return refused[0], None
        r.quota = Quota(int(reply[0]), int(reply[1]))
        now_ms = int(reply[2])
        r.reserved(now_ms)
        (decided,) = await self._read_legacy([r], [self._claimed(r, reply[3:], now_ms)], now_ms)
        return decided

    async def reserve_all(
        self, reservations: list[Reservation], admission: Admission, cost: int
    ) -> tuple[Decision | None, Quota, list[tuple[Decision, bytes | None]]]:
        """A bulk request's `reserve`, in one round trip: admit the partner at `cost` (one per item it
        sent), then claim each reservation in order. Returns the admission's refusal (None when
        admitted), what it found, and per reservation what `reserve` would have said."""
        keys = [admission.nonce_key, admission.rate_key]
        args: list[Any] = [*admission.args, cost, self._pending_ttl_ms, self._guard_ttl_ms]
        for r in reservations:
            keys += (r.idem_key, r.txn_key)
            args += (r.fp, r.key_id, r.event_id, r.topic)
        reply = await self._run("reserve_all", RESERVE_ALL, tuple(keys), args)
        if (refused := refusal(reply)) is not None:
            return refused[0], refused[1], []
        quota = Quota(int(reply[0]), int(reply[1]))
        now_ms = int(reply[2])
        for r in reservations:
            r.reserved(now_ms)
        decisions = [self._claimed(r, claimed, now_ms) for r, claimed in zip(reservations, reply[3:], strict=True)]
        return None, quota, await self._read_legacy(reservations, decisions, now_ms)

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

    async def admit(self, a: Admission) -> tuple[Decision | None, Quota]:
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

    def _record_all(self, completions: list[tuple[Reservation, bytes]]) -> "asyncio.Future[Any]":
        """complete_all.lua for `completions`, sent with this tick's write: a future of one 1 or 0 each."""
        keys: list[str] = []
        args: list[Any] = [self._done_ttl_ms]
        for r, answer in completions:
            keys.append(r.idem_key)
            args += (r.fp, answer)
        return self._redis.run_script(COMPLETE_ALL, tuple(keys), args)

    def _record(self, r: Reservation, answer: bytes) -> "asyncio.Future[Any]":
        """complete.lua for `r`, sent with this tick's write: a future of 1 (stored) or 0."""
        return self._redis.run_script(COMPLETE, (r.idem_key,), [r.fp, answer, self._done_ttl_ms])

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

    async def release(self, r: Reservation) -> bool:
        """Drop our pending reservation so a retry starts afresh; False when there was none."""
        return bool(await self._run("release", RELEASE, (r.idem_key, r.txn_key), [r.fp, r.key_id, r.event_id]))


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
