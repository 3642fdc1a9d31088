"""Idempotency in Redis: one Lua round trip decides; recording the outcome is sent, not waited for.

Two strings per transaction, nothing kept that a later answer does not need (lua/claim.lua):
- the idempotency key, `key:{partner}:<key id>` (GATEWAY_IDEMPOTENCY_TTL_SECONDS): while its record is
  produced, the fingerprint and the record it is about to produce (event id, topic, Redis's time);
  once Kafka has it, the fingerprint and the compact answer replays get;
- the transaction id's guard, `txn:{partner}:<transaction_id>` (GATEWAY_TRANSACTION_ID_TTL_SECONDS, days):
  the fingerprint and key id that own the id, written once when claimed.
A retry whose key Redis has forgotten but whose id it still guards, or the same payment under another
key, is answered from the ledger (PostgreSQL) when it knows the transaction (gateway.intake.recall).

The store has two forms behind the one protocol here, chosen by gateway.idempotency.factory from
GATEWAY_REDIS_URL: on one node (gateway.idempotency.single_node) keys carry the partner in a hash tag
(`KeyLayout`), so one script decides both keys at once, and the partner's admission with them; a Redis
Cluster (gateway.idempotency.cluster) spreads each partner over many slots instead and decides in steps.
A guard holding a 64-hex digest was written by the previous layout (a hash `idem:{partner}:<digest>`
beside it): it is read as it stands until it expires, so no transaction accepted before an upgrade is
accepted again. The scripts run on the worker's pipelined connection: the source on a script's first
run there, EVALSHA after, and the source again when Redis lost it (SCRIPT FLUSH), so no request sees
NOSCRIPT and a completion is never overtaken by the replay behind it (gateway.redis.pipeline).

A pending reservation names the record it is about to produce, so that when it stays pending too long
(its worker died, the delivery was in doubt, the completion was lost) any worker can settle it from
the Kafka log (gateway.intake.in_doubt); its age is measured by Redis's clock, the same for every
gateway. A completion that Redis did not take is sent again until it does; shutdown waits for the ones
still on their way. Every failure of Redis reaches the callers as DependencyUnavailable.
"""

import asyncio
import enum
from collections.abc import Callable
from typing import Protocol

from gateway.idempotency.reservation import AdmissionCheck, KeyLayout, PendingRecord, Quota, Reservation
from gateway.redis.memory import Memory


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


# takes a reservation whose record may or may not be in the log, and settles it from the log
DoubtWatcher = Callable[[Reservation, PendingRecord], None]


class IdempotencyStore(Protocol):
    """What the intake, the edge, the status API and the in-doubt resolver ask of the store, in either
    form. Every Redis failure is raised as DependencyUnavailable."""

    layout: KeyLayout  # where its keys live: a Reservation is made with it
    on_doubt: DoubtWatcher | None  # set by the app: the in-doubt resolver

    async def reserve(self, r: Reservation) -> tuple[Decision, bytes | None]:
        """Admit the partner's request (`r.admission`), then claim the key when new; otherwise say why
        not (a replay carries the stored answer). `r.quota` tells what the admission found. A key
        found pending past the in-doubt horizon is handed to `on_doubt`."""
        ...

    async def reserve_all(
        self, reservations: list[Reservation], admission: AdmissionCheck, cost: int
    ) -> tuple[Decision | None, Quota, list[tuple[Decision, bytes | None]]]:
        """A bulk request's `reserve`: admit the partner at `cost`, then claim each reservation in
        order. Returns the admission's refusal (None when admitted), what it found, and per reservation
        what `reserve` would have said."""
        ...

    async def admit(self, a: AdmissionCheck) -> tuple[Decision | None, Quota]:
        """The admission alone (a request that does not reserve): None when admitted, else why not."""
        ...

    async def recall(self, r: Reservation) -> tuple[Decision | None, bytes | None]:
        """What Redis remembers of `r` without claiming anything (REPLAY, IN_FLIGHT, RECALL or
        ELSEWHERE); None when it knows nothing of it for this payload."""
        ...

    async def answer_of(self, partner: str, transaction_id: str) -> bytes | None:
        """The stored answer of an accepted transaction of `partner`, None while in flight or forgotten."""
        ...

    def complete(self, r: Reservation, response: bytes) -> "asyncio.Future[bool]":
        """Mark the key done with the response replays will get, sent with this tick's write and sent
        again until Redis takes it; the future says whether the entry was ours once recorded."""
        ...

    def complete_all(self, completions: list[tuple[Reservation, bytes]]) -> None:
        """`complete` for every transaction of a bulk request that Kafka has."""
        ...

    async def release(self, r: Reservation) -> bool:
        """Drop our pending reservation so a retry starts afresh; False when there was none."""
        ...

    def hold_in_doubt(self, r: Reservation) -> None:
        """Keep `r` locked after its delivery came out in doubt, and have it settled from the log."""
        ...

    async def drain(self, timeout: float) -> int:
        """Shutdown: wait for the completions still on their way; return how many were given up."""
        ...

    async def memory(self) -> Memory:
        """How full Redis is (the readiness probe; on a cluster, its fullest master)."""
        ...

    def close(self) -> None:
        """Close the connections to Redis; commands still waiting fail."""
        ...
