"""The idempotency store on one Redis node: every key of a partner carries its own hash tag
(`ONE_NODE`), so one script admits the request and decides its idempotency key and transaction id at
once, in one round trip; a bulk request's whole array too."""

import asyncio
from typing import Any

from gateway.idempotency.base import StoreBase, lua_script, refusal
from gateway.idempotency.reservation import ONE_NODE, AdmissionCheck, Quota, Reservation
from gateway.idempotency.store import Decision

RESERVE = lua_script("reserve", "admit", "claim")
RESERVE_ALL = lua_script("reserve_all", "admit", "claim")
COMPLETE, COMPLETE_ALL = lua_script("complete", "record"), lua_script("complete_all", "record")
RELEASE = lua_script("release", "drop")
# admit.lua's arguments for a reservation made without an admission: no nonce, no limit, so it reads
# neither of its keys and the reservation's own stand in for them
UNCHECKED: list[Any] = [0, repr(0.0), 1]


class SingleNodeStore(StoreBase):
    """`IdempotencyStore` on one Redis node (`RedisPipeline`): the `reserve`, `complete` and `release`
    scripts, each one round trip."""

    layout = ONE_NODE

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        """Admit the partner's request, then claim the key when new; otherwise say why not (a replay
        carries the stored answer). `r.quota` tells what the admission found.

        A key found pending for longer than the in-doubt horizon (its owner may be gone) is handed to
        `on_doubt`, which settles it from the log."""
        a = r.admission
        if a is None:
            nonce, rate, checks = r.idem_key, r.txn_key, UNCHECKED
        else:
            nonce, rate, checks = a.nonce_key, a.rate_key, a.args
        reply = await self._run(
            "reserve",
            RESERVE,
            (r.idem_key, r.txn_key, nonce, rate),
            [r.fp, r.key_id, self._pending_ttl_ms, self._guard_ttl_ms, r.event_id, r.topic, *checks],
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
        self, reservations: list[Reservation], admission: AdmissionCheck, cost: int
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

    async def release(self, r: Reservation) -> bool:
        """Drop our pending reservation so a retry starts afresh; False when there was none."""
        return bool(await self._run("release", RELEASE, (r.idem_key, r.txn_key), [r.fp, r.key_id, r.event_id]))

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
