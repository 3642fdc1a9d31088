"""Idempotency on a Redis Cluster: every partner spread over many slots, each submission decided in steps.

On one node `reserve` decides an idempotency key and its transaction id in one script. A cluster runs a
script on the keys of one slot only, and one slot per partner would put a partner's whole load on one
master. Here (`SPREAD`) a key's slot follows its key id and an id's slot follows the id, so a
submission is decided in up to three steps, each one script per slot used, sent to every master at once:

1. the admission (limit.lua, on the partner's own `{partner}` slot), for a limited or signed partner only;
2. claim_entries: each idempotency key looked up, and held when new, in request order within its slot,
   so a key sent twice in one bulk request meets its first copy's reservation;
3. claim_ids: the ids of the keys just held. An id that another payload or key owns says so, and the
   key held for it in step 2 is dropped again (release_entries).

Between steps 2 and 3 a retry of the same key finds it pending (409 in flight), never new. A failure
in step 2 or 3 rolls back what the other masters took (the keys held, the ids taken), so a retry
starts afresh; what the roll-back cannot reach either is handed to the in-doubt resolver, which finds
the record absent from the log and releases it. A completion writes only the key, in its slot; a
release drops the key, then the id.

What a master's failover can lose: Redis replicates asynchronously, so a write acknowledged by a master
that dies before its replica got it is gone from the promoted replica. A lost pending key lets a retry
of that submission be accepted again while the first is still producing; a lost completed key is
answered from the id's guard and the ledger; a lost guard lets a later retry be accepted again. Those
give the partner a second 202 for one transaction, and a second record in the log. The log is the
source of truth: the processor de-duplicates by (partner, transaction id) across every window, so the
payment settles once, and the second copy is recorded as a duplicate.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.idempotency.base import LIMIT, StoreBase, lua_script, refusal
from gateway.idempotency.reservation import AdmissionCheck, KeyLayout, Quota, Reservation
from gateway.idempotency.store import Decision
from gateway.redis.cluster import key_slot
from gateway.redis.errors import RedisError, RedisUnavailable, unavailable
from gateway.redis.pipeline import Script
from settlement.errors import DependencyUnavailable

SPREAD = KeyLayout(64)  # slots per partner for entries, and as many for ids
CLAIM_ENTRIES, CLAIM_IDS = lua_script("claim_entries", "claim"), lua_script("claim_ids", "claim")
COMPLETE_SLOT = lua_script("complete_all", "record")
RELEASE_ENTRIES, RELEASE_IDS = lua_script("release_entries", "drop"), lua_script("release_ids", "drop")

Call = tuple[Script, list[str], list[Any]]


def by_slot(keys: Iterable[str]) -> dict[int, list[int]]:
    """The positions of `keys` grouped by cluster slot, in order within each slot."""
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key_slot(key), []).append(position)
    return groups


def per_slot(
    script: Script, keys: list[str], head: list[Any], item_args: Callable[[int], Iterable[Any]]
) -> tuple[list[Call], list[list[int]]]:
    """One call of `script` per slot of `keys`: its keys, `head` then each key's own arguments; and the
    positions each call covers, to put the replies back in order."""
    calls: list[Call] = []
    positions: list[list[int]] = []
    for group in by_slot(keys).values():
        args = list(head)
        for position in group:
            args += item_args(position)
        calls.append((script, [keys[position] for position in group], args))
        positions.append(group)
    return calls, positions


def in_order(size: int, positions: list[list[int]], replies: list[list[Any]]) -> list[Any]:
    """The per-key replies of `per_slot`'s calls, back in the order of the keys."""
    ordered: list[Any] = [None] * size
    for group, reply in zip(positions, replies, strict=True):
        for position, item in zip(group, reply, strict=True):
            ordered[position] = item
    return ordered


def _failed(reservations: list[Reservation], positions: list[list[int]], replies: list[Any]) -> list[Reservation]:
    """The reservations of the calls that failed."""
    return [
        reservations[i]
        for group, reply in zip(positions, replies, strict=True)
        if isinstance(reply, Exception)
        for i in group
    ]


def _raise_first(replies: list[Any]) -> None:
    """DependencyUnavailable for the first error among `replies`, if any."""
    for reply in replies:
        if isinstance(reply, RedisError):
            raise unavailable(reply) from None
        if isinstance(reply, BaseException):
            raise reply


class ClusterStore(StoreBase):
    """`IdempotencyStore` on a Redis Cluster (`RedisCluster`), with each partner spread over `SPREAD`."""

    layout = SPREAD

    async def _settled(self, name: str, calls: list[Call]) -> list[Any]:
        """Send every call at once (each to its slot's master); each one's reply, or the error it got
        (RedisUnavailable, ReplyError), counted."""
        try:
            await self._redis.connect()
            sent = [self._redis.run_script(s, keys, args) for s, keys, args in calls]
        except RedisUnavailable as exc:
            self._errors[name].inc()
            return [exc] * len(calls)
        replies = await asyncio.gather(*sent, return_exceptions=True)
        self._errors[name].inc(sum(isinstance(reply, Exception) for reply in replies))
        return replies

    async def _calls(self, name: str, calls: list[Call]) -> list[Any]:
        """Every call's reply; DependencyUnavailable when any of them failed."""
        replies = await self._settled(name, calls)
        _raise_first(replies)
        return replies

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        refused, quota, decisions = await self._reserve("reserve", [r], r.admission, 1)
        r.quota = quota
        return (refused, None) if refused is not None else decisions[0]

    async def reserve_all(
        self, reservations: list[Reservation], admission: AdmissionCheck, cost: int
    ) -> tuple[Decision | None, Quota, list[tuple[Decision, bytes | None]]]:
        return await self._reserve("reserve_all", reservations, admission, cost)

    async def _reserve(
        self, name: str, reservations: list[Reservation], a: AdmissionCheck | None, cost: int
    ) -> tuple[Decision | None, Quota, list[tuple[Decision, bytes | None]]]:
        started = time.perf_counter()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        quota = Quota(-1, 0)
        if a is not None and (a.nonce_ttl_ms or a.interval_us):
            (reply,) = await self._calls(name, [(LIMIT, [a.nonce_key, a.rate_key], [*a.args, cost])])
            if (refused := refusal(reply)) is not None:
                return refused[0], refused[1], []
            quota = Quota(int(reply[1]), int(reply[2]))
        now_ms, claimed = await self._claim_entries(name, reservations)
        held = [i for i, decision in enumerate(claimed) if decision[0] == b"new"]
        owned = await self._claim_ids(name, [reservations[i] for i in held])
        refused_ids = [(i, own) for i, own in zip(held, owned, strict=True) if own[0] != b"new"]
        for i, own in refused_ids:
            claimed[i] = own
        # not this submission's to hold after all (a recalled one stays held: the ledger decides); what
        # cannot be dropped now goes to the in-doubt resolver
        with contextlib.suppress(DependencyUnavailable):
            await self._drop_entries([reservations[i] for i, own in refused_ids if own[0] != b"recall"])
        self._duration[name].observe(time.perf_counter() - started)
        decisions = [self._claimed(r, c, now_ms) for r, c in zip(reservations, claimed, strict=True)]
        return None, quota, await self._read_legacy(reservations, decisions, now_ms)

    async def _claim_entries(self, name: str, reservations: list[Reservation]) -> tuple[int, list[Any]]:
        """Step 2: Redis's time and each key's decision. When a slot's master fails, what the other
        slots held is dropped again."""
        calls, positions = per_slot(
            CLAIM_ENTRIES,
            [r.idem_key for r in reservations],
            [self._pending_ttl_ms],
            lambda i: (reservations[i].fp, reservations[i].event_id, reservations[i].topic),
        )
        replies = await self._settled(name, calls)
        now_ms = max((int(reply[0]) for reply in replies if not isinstance(reply, Exception)), default=0)
        for r in reservations:
            r.reserved(now_ms)
        if any(isinstance(reply, Exception) for reply in replies):
            held = [
                reservations[i]
                for group, reply in zip(positions, replies, strict=True)
                if not isinstance(reply, Exception)
                for i, decision in zip(group, reply[1:], strict=True)
                if decision[0] == b"new"
            ]
            with contextlib.suppress(DependencyUnavailable):
                await self._drop_entries(held)
            self._in_doubt(_failed(reservations, positions, replies))  # their keys may be held late
            _raise_first(replies)
        return now_ms, in_order(len(reservations), positions, [reply[1:] for reply in replies])

    async def _claim_ids(self, name: str, reservations: list[Reservation]) -> list[Any]:
        """Step 3: each id's decision. When a slot's master fails, the ids the other slots took and every
        key held in step 2 are dropped again."""
        if not reservations:
            return []
        calls, positions = per_slot(
            CLAIM_IDS,
            [r.txn_key for r in reservations],
            [self._guard_ttl_ms],
            lambda i: (reservations[i].fp, reservations[i].key_id),
        )
        replies = await self._settled(name, calls)
        if any(isinstance(reply, Exception) for reply in replies):
            taken = [
                reservations[i]
                for group, reply in zip(positions, replies, strict=True)
                if not isinstance(reply, Exception)
                for i, decision in zip(group, reply, strict=True)
                if decision[0] == b"new"
            ]
            await self._drop_ids(taken)
            # a master that failed to answer may still take its ids: the resolver releases them later
            self._in_doubt(_failed(reservations, positions, replies))
            with contextlib.suppress(DependencyUnavailable):
                await self._drop_entries(reservations)
            _raise_first(replies)
        return in_order(len(reservations), positions, replies)

    async def _drop_entries(self, reservations: list[Reservation]) -> list[Any]:
        """Drop the keys held for `reservations` (still pending for their record): per key 1 dropped, 0
        not theirs, -1 absent. When Redis cannot take it, they are handed to the in-doubt resolver (their
        records were never produced: it finds them absent from the log and releases them)."""
        if not reservations:
            return []
        calls, positions = per_slot(
            RELEASE_ENTRIES,
            [r.idem_key for r in reservations],
            [],
            lambda i: (reservations[i].fp, reservations[i].event_id),
        )
        try:
            return in_order(len(reservations), positions, await self._calls("release", calls))
        except DependencyUnavailable:
            self._in_doubt(reservations)
            raise

    async def _drop_ids(self, reservations: list[Reservation]) -> None:
        """Drop the ids taken for `reservations` (while still theirs); the resolver gets them otherwise."""
        if not reservations:
            return
        calls, _ = per_slot(
            RELEASE_IDS, [r.txn_key for r in reservations], [], lambda i: (reservations[i].fp, reservations[i].key_id)
        )
        try:
            await self._calls("release", calls)
        except DependencyUnavailable:
            self._in_doubt(reservations)

    def _in_doubt(self, reservations: list[Reservation]) -> None:
        for r in reservations:
            self.hold_in_doubt(r)

    async def release(self, r: Reservation) -> bool:
        (dropped,) = await self._drop_entries([r])
        if dropped:  # ours (1), or gone (-1): the id may still be this payload's
            await self._calls("release", [(RELEASE_IDS, [r.txn_key], [r.fp, r.key_id])])
        return dropped == 1

    def _record(self, r: Reservation, response: bytes) -> "asyncio.Future[Any]":
        return self._recorded([(r, response)], lambda stored: stored[0])

    def _record_all(self, completions: list[tuple[Reservation, bytes]]) -> "asyncio.Future[Any]":
        return self._recorded(completions, lambda stored: stored)

    def _recorded(
        self, completions: list[tuple[Reservation, bytes]], answer: Callable[[list[Any]], Any]
    ) -> "asyncio.Future[Any]":
        """Every key of `completions` written at once, each in its slot: a future of `answer` applied to
        one 1 or 0 per key (see record.lua); it fails when any write failed."""
        calls, positions = per_slot(
            COMPLETE_SLOT,
            [r.idem_key for r, _ in completions],
            [self._done_ttl_ms],
            lambda i: (completions[i][0].fp, completions[i][1]),
        )
        sent = [self._redis.run_script(s, keys, args) for s, keys, args in calls]
        assert self._loop is not None
        result: asyncio.Future[Any] = self._loop.create_future()

        def done(replies: "asyncio.Future[list[Any]]") -> None:
            if result.done():
                return
            if (error := replies.exception()) is not None:
                result.set_exception(error)
            else:
                result.set_result(answer(in_order(len(completions), positions, replies.result())))

        asyncio.gather(*sent).add_done_callback(done)
        return result
