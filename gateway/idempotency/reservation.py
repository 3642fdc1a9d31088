"""One submission as Redis sees it: where its keys live (`KeyLayout`), the keys and values computed once
per request (`Reservation`), what its request must pass first (`AdmissionCheck`) and what that found
(`Quota`), and what a pending reservation says about its record (`PendingRecord`)."""

import base64
import copy
import hashlib
import time
import zlib
from typing import Any, NamedTuple, Protocol

FP_BYTES = 8  # the bytes of a fingerprint Redis keeps (common.lua)


class AdmissionCheck(Protocol):
    """What Redis checks before a partner's request does anything else (admit.lua), run in the same
    script as the reservation: the store needs only its keys and arguments. The partners make it
    (gateway.partners.admission.Admission)."""

    @property
    def nonce_key(self) -> str: ...

    @property
    def rate_key(self) -> str: ...

    @property
    def nonce_ttl_ms(self) -> int:
        """0: not signed."""
        ...

    @property
    def interval_us(self) -> float:
        """0: unlimited."""
        ...

    @property
    def args(self) -> list[Any]:
        """admit.lua's arguments after its keys: nonce TTL, interval, burst."""
        ...


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
    steps (gateway.idempotency.cluster), and a bulk request costs one script per slot used."""

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
        admission: AdmissionCheck | None = None,
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
        self.admission = admission  # None: nothing to check
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
