"""The event contracts, each with its one factory: TransactionAccepted (the intake writes it to a window's
topic: versioned JSON value, CloudEvents binary-mode headers) and BatchClosed / BatchSettled (the
processor writes them to the batches topic).

TransactionAccepted is the source of truth downstream: state is a fold of the log, and consumers
de-duplicate by idempotency key and transaction id, because Redis is only the fast first check.
"""

import functools
import hashlib
import re
from datetime import UTC, date, datetime
from typing import Any, Literal

import msgspec

from settlement import ids

EVENT_TYPE = "TransactionAccepted"
SCHEMA_VERSION = 1
CE_TYPE = "com.settlement.transaction.accepted.v1"
CE_SOURCE = "urn:settlement-gateway"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class Transaction(msgspec.Struct, frozen=True):
    """The instruction in canonical form: amounts as exact decimal strings in the currency's minor units."""

    transaction_id: str
    amount: str
    source_currency: str
    destination_currency: str
    source_account: str
    destination_account: str
    counterparty_id: str
    settlement_window: str | None
    metadata: dict[str, str] | None


class Routing(msgspec.Struct, frozen=True):
    """The router's decision."""

    window: str
    requested_window: str | None
    value_date: str
    batch: str
    reason: str


class TransactionAccepted(msgspec.Struct, frozen=True):
    """Version 1 of the event written to the window's topic."""

    event_id: str
    occurred_at: str
    partner: str
    idempotency_key: str
    fingerprint: str
    transaction: Transaction
    routing: Routing
    event_type: str = EVENT_TYPE
    schema_version: int = SCHEMA_VERSION


def transaction_accepted(
    partner: str,
    idempotency_key: str,
    transaction: Transaction,
    routing: Routing,
    occurred_at: str,
    event_id: str | None = None,
) -> TransactionAccepted:
    """The one way to make a TransactionAccepted: its fingerprint is always its transaction's, its id a
    fresh UUIDv7 unless given."""
    return TransactionAccepted(
        event_id=event_id or ids.uuid7(),
        occurred_at=occurred_at,
        partner=partner,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint(transaction),
        transaction=transaction,
        routing=routing,
    )


@functools.lru_cache(maxsize=256)  # a bulk request's transactions share their instants
def instant(epoch: float) -> str:
    """Unix seconds as the ISO 8601 UTC instant the events and answers carry (`...T09:30:00.123Z`)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_time_ms(event: "TransactionAccepted") -> int:
    """The event time (Unix ms): `occurred_at`, the instant the router decided on, by the clock that
    chose the batch (a few milliseconds before the record's timestamp, the 202's `accepted_at`)."""
    return round(datetime.fromisoformat(event.occurred_at).timestamp() * 1000)


_CANONICAL = msgspec.json.Encoder(order="sorted")
EVENT_ENCODER = msgspec.json.Encoder()


def fingerprint(transaction: Transaction) -> str:
    """SHA-256 of the canonical transaction: the same instruction always hashes the same, whatever the
    spelling of its amount (250, 250.0, "250.00") or the order of its fields and metadata."""
    return hashlib.sha256(_CANONICAL.encode(transaction)).hexdigest()


def binary_mode_headers(
    event_id: str, event_type: str, source: str, occurred_at: str, subject: str
) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0 binary-mode headers of a JSON event (the intake's and the processor's)."""
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", source.encode()),
        ("ce_time", occurred_at.encode()),
        ("ce_subject", subject.encode()),
        ("content-type", b"application/json"),
    ]


def cloudevents_headers(event: TransactionAccepted, traceparent: str | None) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0 binary-mode headers, the idempotency key and, when valid, the W3C trace context."""
    headers = binary_mode_headers(
        event.event_id, CE_TYPE, CE_SOURCE, event.occurred_at, event.transaction.transaction_id
    )
    headers.append(("idempotency-key", event.idempotency_key.encode()))
    if traceparent is not None and _TRACEPARENT.match(traceparent):
        headers.append(("traceparent", traceparent.encode()))
    return headers


BatchEventType = Literal["BatchClosed", "BatchSettled"]
BATCH_SCHEMA_VERSION = 1


def parse_batch_id(batch_id: str) -> tuple[str, date, str]:
    """`t1-20261127-GBP` as ("t1", date(2026, 11, 27), "GBP")."""
    window, day, currency = batch_id.split("-")
    return window, date(int(day[:4]), int(day[4:6]), int(day[6:])), currency


def batch_event(
    event_type: BatchEventType, event_id: str, occurred_at: datetime, batch_id: str, facts: dict[str, Any]
) -> dict[str, Any]:
    """The one way to make a BatchClosed or BatchSettled value: the batch named in full, then `facts`
    (a close's frozen positions and totals, a settlement's count and totals)."""
    window, value_date, currency = parse_batch_id(batch_id)
    return {
        "event_type": event_type,
        "schema_version": BATCH_SCHEMA_VERSION,
        "event_id": event_id,
        "occurred_at": instant(occurred_at.timestamp()),
        "batch_id": batch_id,
        "settlement_window": window,
        "value_date": value_date.isoformat(),
        "currency": currency,
        **facts,
    }


def batch_event_headers(
    event_type: str, event_id: str, occurred_at: datetime, batch_id: str
) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0 binary-mode headers of a batch event (the batch is its subject)."""
    kind = "closed" if event_type == "BatchClosed" else "settled"
    return binary_mode_headers(
        event_id,
        f"com.settlement.batch.{kind}.v1",
        f"{CE_SOURCE}:processor",
        instant(occurred_at.timestamp()),
        batch_id,
    )
