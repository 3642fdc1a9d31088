"""Kafka records of the window topics as rows to fold: TransactionAccepted v1 decoded with msgspec, and
anything else kept as unreadable (never folded, never a reason to stop)."""

from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.events import EVENT_TYPE, SCHEMA_VERSION, TransactionAccepted
from processor.store import Incoming, Unreadable

_DECODER = msgspec.json.Decoder(TransactionAccepted)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def read(message: Any) -> Incoming | Unreadable:
    """One consumed record as a row of the fold, or as unreadable with the reason."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    try:
        event = _DECODER.decode(message.value() or b"")
    except msgspec.DecodeError as exc:  # ValidationError included
        return Unreadable(topic, partition, offset, f"not a TransactionAccepted event: {exc}"[:500])
    if event.event_type != EVENT_TYPE or event.schema_version != SCHEMA_VERSION:
        return Unreadable(topic, partition, offset, f"unknown event {event.event_type} v{event.schema_version}")
    transaction, routing = event.transaction, event.routing
    _, timestamp_ms = message.timestamp()
    return Incoming(
        topic,
        partition,
        offset,
        event.partner,
        transaction.transaction_id,
        event.idempotency_key,
        event.event_id,
        event.fingerprint,
        transaction.amount,
        transaction.source_currency,
        transaction.destination_currency,
        transaction.source_account,
        transaction.destination_account,
        transaction.counterparty_id,
        routing.window,
        routing.requested_window,
        routing.value_date,
        routing.batch,
        routing.reason,
        _instant(event.occurred_at),
        datetime.fromtimestamp(timestamp_ms / 1000, UTC),
    )
