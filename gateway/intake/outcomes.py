"""What a submission comes to (an Outcome, a bulk request's BulkOutcome with one item each, the time of
each stage) and the words of the refusals the idempotency store's decisions become."""

from typing import NamedTuple

import msgspec

from gateway.errors import Refused
from gateway.idempotency.reservation import Quota
from gateway.idempotency.store import Decision
from settlement.errors import DependencyUnavailable


class Timing(NamedTuple):
    """Seconds spent in each stage of one submission, for the `Server-Timing` header."""

    decode: float
    validate: float
    redis: float
    kafka: float

    def header(self) -> str:
        """`decode;dur=0.012, validate;dur=0.008, redis;dur=0.101, kafka;dur=0.611` (milliseconds)."""
        return (
            f"decode;dur={self.decode * 1000:.3f}, validate;dur={self.validate * 1000:.3f}, "
            f"redis;dur={self.redis * 1000:.3f}, kafka;dur={self.kafka * 1000:.3f}"
        )


class Outcome(msgspec.Struct, frozen=True):
    """What the partner gets: `replayed` is False for a new acceptance, True for an exact resubmission;
    `quota` is what the partner's admission found in the same round trip (a bulk request's items
    carry neither timing nor quota: the request does)."""

    transaction_id: str
    replayed: bool
    body: bytes
    timing: Timing | None = None
    quota: Quota | None = None


# one transaction of a bulk request: accepted or replayed, refused, or not taken for now (503)
ItemOutcome = Outcome | Refused | DependencyUnavailable


class BulkOutcome(NamedTuple):
    """A bulk request's outcome: one per transaction, in the request's order."""

    items: list[ItemOutcome]
    timing: Timing
    quota: Quota | None


REPLAYED_NONCE = "the signature's nonce was already used: sign every request afresh"

# what the partner is told when `reserve` does not claim the key: the problem's cause and detail
REFUSALS = {
    Decision.IN_FLIGHT: ("request-in-flight", "a request with this idempotency key is still being processed"),
    Decision.MISMATCH: ("idempotency-key-reused", "this idempotency key was already used for a different transaction"),
    Decision.TXN_TAKEN: (
        "transaction-id-conflict",
        "this transaction_id was already submitted under another idempotency key",
    ),
    Decision.LIMITED: ("rate-limited", "the partner's rate limit is exhausted; retry after the time given"),
}


INVALID = "the transaction breaks one or more rules"
