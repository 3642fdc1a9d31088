"""Idempotency on a Redis Cluster: every partner spread over many slots, each submission decided in steps.

On one node `reserve` decides an idempotency key and its transaction id in one script. A cluster runs a
script on the keys of one slot only, and one slot per partner would put a partner's whole load on one
master. Here (`SPREAD`) an entry's slot follows its key's digest and an id's slot follows the id, so a
submission is decided in up to three steps, each one script per slot used, sent to every master at once:

1. the admission (limit.lua, on the partner's own `{partner}` slot), for a limited or signed partner only;
2. claim_entries: each idempotency key looked up, and held when new, in request order within its slot,
   so a key sent twice in one bulk request meets its first copy's reservation;
3. claim_ids: the ids of the entries just held. An id that another key owns answers `txn_taken`, and the
   entry held for it in step 2 is dropped again (release_entries).

Between steps 2 and 3 a retry of the same key finds it pending (409 in flight), never new. A failure
after step 2 drops what it held, so a retry starts afresh; when the drop cannot reach Redis either, the
entry stays pending until the in-doubt resolver settles it from the log. A completion writes the entry
and the id at once, each in its slot; a release drops the entry, then the id.

What a master's failover can lose: Redis replicates asynchronously, so a write acknowledged by a master
that dies before its replica got it is gone from the promoted replica. A lost pending entry lets a retry
of that submission be accepted again while the first is still producing; a lost completed entry lets a
later retry be accepted again. Both give the partner a second 202 for one transaction, and a second
record in the log. The log is the source of truth: the processor de-duplicates by (partner, transaction
id) across every window, so the payment settles once, and the second copy is recorded as a duplicate.
"""

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.errors import DependencyUnavailable
from gateway.idempotency.redis_cluster import key_slot
from gateway.idempotency.redis_pipeline import RedisUnavailable, ReplyError, Script
from gateway.idempotency.store import (
    LIMIT,
    Admission,
    Decision,
    IdempotencyStore,
    KeyLayout,
    Quota,
    Reservation,
    lua_script,
    refusal,
)

SPREAD = KeyLayout(64)  # slots per partner for entries, and as many for ids
CLAIM_ENTRIES, CLAIM_IDS = lua_script("claim_entries", "claim"), lua_script("claim_ids", "claim")
RECORD_ENTRIES, RECORD_IDS = lua_script("record_entries", "record"), lua_script("record_ids")
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


def _raise_first(replies: list[Any]) -> None:
    """DependencyUnavailable for the first error among `replies`, if any."""
    for reply in replies:
        if isinstance(reply, (RedisUnavailable, ReplyError)):
            raise DependencyUnavailable("redis", str(reply)) from None
        if isinstance(reply, BaseException):
            raise reply


class ShardedIdempotencyStore(IdempotencyStore):
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
        self, reservations: list[Reservation], admission: Admission, cost: int
    ) -> tuple[Decision | None, Quota, list[tuple[Decision, bytes | None]]]:
        return await self._reserve("reserve_all", reservations, admission, cost)

    async def _reserve(
        self, name: str, reservations: list[Reservation], a: Admission, cost: int
    ) -> tuple[Decision | None, Quota, list[tuple[Decision, bytes | None]]]:
        started = time.perf_counter()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        quota = Quota(-1, 0)
        if a.nonce_ttl_ms or a.interval_us:
            (reply,) = await self._calls(name, [(LIMIT, [a.nonce_key, a.rate_key], [*a.args, cost])])
            if (refused := refusal(reply)) is not None:
                return refused[0], refused[1], []
            quota = Quota(int(reply[1]), int(reply[2]))
        now_ms = int(time.time() * 1000)
        for r in reservations:
            r.reserved_at_ms = now_ms
        claimed = await self._claim_entries(name, reservations, now_ms)
        held = [i for i, decision in enumerate(claimed) if decision[0] == b"new"]
        try:
            owned = await self._claim_ids(name, [reservations[i] for i in held])
        except DependencyUnavailable:
            await self._drop_entries([reservations[i] for i in held])
            raise
        taken = [i for i, own in zip(held, owned, strict=True) if not own]
        if taken:
            await self._drop_entries([reservations[i] for i in taken])
            for i in taken:
                claimed[i] = [b"txn_taken"]
        self._duration[name].observe(time.perf_counter() - started)
        return None, quota, [self._claimed(r, c, now_ms) for r, c in zip(reservations, claimed, strict=True)]

    async def _claim_entries(self, name: str, reservations: list[Reservation], now_ms: int) -> list[Any]:
        """Step 2; when a slot's master fails, what the other slots held is dropped again."""
        calls, positions = per_slot(
            CLAIM_ENTRIES,
            [r.idem_key for r in reservations],
            [self._pending_ttl_ms, now_ms],
            lambda i: (reservations[i].fingerprint, reservations[i].event_id, reservations[i].topic),
        )
        replies = await self._settled(name, calls)
        if any(isinstance(reply, Exception) for reply in replies):
            held = [
                reservations[i]
                for group, reply in zip(positions, replies, strict=True)
                if not isinstance(reply, Exception)
                for i, decision in zip(group, reply, strict=True)
                if decision[0] == b"new"
            ]
            await self._drop_entries(held)
            _raise_first(replies)
        return in_order(len(reservations), positions, replies)

    async def _claim_ids(self, name: str, reservations: list[Reservation]) -> list[Any]:
        if not reservations:
            return []
        calls, positions = per_slot(
            CLAIM_IDS,
            [r.txn_key for r in reservations],
            [self._pending_ttl_ms],
            lambda i: (reservations[i].key_digest,),
        )
        return in_order(len(reservations), positions, await self._calls(name, calls))

    async def _drop_entries(self, reservations: list[Reservation]) -> list[Any]:
        """Drop entries held for `reservations` (still pending with their payload); when Redis cannot take
        it, they stay pending and the in-doubt resolver or their TTL ends them."""
        if not reservations:
            return []
        calls, positions = per_slot(
            RELEASE_ENTRIES, [r.idem_key for r in reservations], [], lambda i: (reservations[i].fingerprint,)
        )
        try:
            return in_order(len(reservations), positions, await self._calls("release", calls))
        except DependencyUnavailable:
            return [0] * len(reservations)

    async def release(self, r: Reservation) -> bool:
        (dropped,) = await self._drop_entries([r])
        if dropped:
            await self._calls("release", [(RELEASE_IDS, [r.txn_key], [r.key_digest])])
        return bool(dropped)

    def _record(self, r: Reservation, response: bytes) -> "asyncio.Future[Any]":
        return self._recorded([(r, response)], lambda stored: stored[0])

    def _record_all(self, completions: list[tuple[Reservation, bytes]]) -> "asyncio.Future[Any]":
        return self._recorded(completions, lambda stored: stored)

    def _recorded(
        self, completions: list[tuple[Reservation, bytes]], answer: Callable[[list[Any]], Any]
    ) -> "asyncio.Future[Any]":
        """Every entry and id of `completions` written at once, each in its slot: a future of `answer`
        applied to one 1 or 0 per entry (see record.lua); it fails when any write failed."""
        entries, entry_positions = per_slot(
            RECORD_ENTRIES,
            [r.idem_key for r, _ in completions],
            [self._done_ttl_ms],
            lambda i: (completions[i][0].fingerprint, completions[i][1]),
        )
        ids, _ = per_slot(
            RECORD_IDS,
            [r.txn_key for r, _ in completions],
            [self._done_ttl_ms],
            lambda i: (completions[i][0].key_digest,),
        )
        sent = [self._redis.run_script(s, keys, args) for s, keys, args in (*entries, *ids)]
        assert self._loop is not None
        result: asyncio.Future[Any] = self._loop.create_future()

        def done(replies: "asyncio.Future[list[Any]]") -> None:
            if result.done():
                return
            if (error := replies.exception()) is not None:
                result.set_exception(error)
            else:
                stored = in_order(len(completions), entry_positions, replies.result()[: len(entries)])
                result.set_result(answer(stored))

        asyncio.gather(*sent).add_done_callback(done)
        return result
