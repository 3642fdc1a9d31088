"""Kafka records of the window topics as rows to fold: TransactionAccepted v1 decoded with msgspec and
written straight into a COPY line; anything else kept as unreadable (never folded, never a reason to
stop)."""

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import KafkaError

from gateway.kafka.events import EVENT_TYPE, SCHEMA_VERSION, TransactionAccepted

Partition = tuple[str, int]  # topic, partition
log = logging.getLogger("processor")

_DECODER = msgspec.json.Decoder(TransactionAccepted)
# COPY's text format: these four would end a field or a row, or start an escape
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_FIELDS = 21  # the columns of COPY_COLUMNS


class Incoming(NamedTuple):
    """One TransactionAccepted record: its line for COPY, and its batch (opened before the fold)."""

    line: str
    batch_id: str


class Unreadable(NamedTuple):
    topic: str
    partition: int
    kafka_offset: int
    reason: str


# the columns of each Incoming line, in order (accepted_ms: the record's timestamp, Unix milliseconds)
COPY_COLUMNS = (
    "topic", "partition", "kafka_offset", "partner", "transaction_id", "idempotency_key", "event_id", "fingerprint",
    "amount", "source_currency", "destination_currency", "source_account", "destination_account",
    "counterparty_id", "settlement_window", "requested_window", "value_date", "batch_id", "reason", "occurred_at",
    "accepted_ms",
)  # fmt: skip


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
    fields = (
        topic, str(partition), str(offset), event.partner, transaction.transaction_id, event.idempotency_key,
        event.event_id, event.fingerprint, transaction.amount, transaction.source_currency,
        transaction.destination_currency, transaction.source_account, transaction.destination_account,
        transaction.counterparty_id, routing.window, routing.requested_window or "\\N", routing.value_date,
        routing.batch, routing.reason, event.occurred_at, str(message.timestamp()[1]),
    )  # fmt: skip
    line = "\t".join(fields)
    # The gateway writes none of these four characters, but the log may hold records of others.
    if line.count("\t") != _FIELDS - 1 or "\\" in line or "\n" in line or "\r" in line:
        line = "\t".join(field if field == "\\N" else field.translate(_ESCAPES) for field in fields)
    return Incoming(line + "\n", routing.batch)


def collect(
    messages: list[Any], wanted: Callable[[Partition, int], bool]
) -> tuple[list[Incoming], list[Unreadable], dict[Partition, int]]:
    """The records of a poll batch that `wanted(partition, offset)` accepts, and each partition's next
    offset after them. Errors a message carries instead of a record are logged and skipped."""
    records: list[Incoming] = []
    unreadable: list[Unreadable] = []
    ends: dict[Partition, int] = {}
    for message in messages:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume: %s", message.error().str())
            continue
        key = (message.topic(), message.partition())
        if not wanted(key, message.offset()):
            continue
        row = read(message)
        if isinstance(row, Incoming):
            records.append(row)
        else:
            unreadable.append(row)
        ends[key] = message.offset() + 1
    return records, unreadable, ends
