"""Kafka records of the window topics as rows to fold: TransactionAccepted v1 decoded with msgspec and
checked completely (processor/checks.py) and written straight into the start of a COPY line; anything
else kept as unreadable with its reason (never folded, never a reason to stop)."""

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError

from processor.calendar import SettlementCalendar
from processor.checks import problem
from settlement.events import EVENT_TYPE, SCHEMA_VERSION, TransactionAccepted, event_time_ms

Partition = tuple[str, int]  # topic, partition
log = logging.getLogger("processor")

_DECODER = msgspec.json.Decoder(TransactionAccepted)
# COPY's text format: these four would end a field or a row, or start an escape
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_FIELDS = 18  # the columns of COPY_COLUMNS an Incoming carries (the store adds the rest)


class Incoming(NamedTuple):
    """One checked TransactionAccepted record: the start of its COPY line, and its routing (the store
    decides on it whether the record is on time or takes the late path)."""

    fields: str  # the first _FIELDS columns of COPY_COLUMNS, tab-separated and escaped
    batch_id: str
    value_date: str
    accepted_ms: int  # the record's timestamp (the 202's accepted_at)
    event_ms: int  # event time: occurred_at, the instant the router decided on


class Unreadable(NamedTuple):
    topic: str
    partition: int
    kafka_offset: int
    reason: str


class PollBatch(NamedTuple):
    """The records of one poll to fold, and where each partition stands after them."""

    records: list[Incoming]
    unreadable: list[Unreadable]
    ends: dict[Partition, int]  # the next offset of each partition after this batch
    newest: dict[Partition, int]  # the newest event time of each partition in it (Unix ms)


# the columns of a folded line, in order: an Incoming's fields, then the batch it joins and its value
# date, the batch and value date it was routed to when it took the late path (else null), late, and
# the record's timestamp (accepted_ms, Unix milliseconds)
COPY_COLUMNS = (
    "topic", "partition", "kafka_offset", "partner", "transaction_id", "idempotency_key", "event_id", "fingerprint",
    "amount", "source_currency", "destination_currency", "source_account", "destination_account",
    "counterparty_id", "settlement_window", "requested_window", "reason", "occurred_at",
    "batch_id", "value_date", "routed_batch_id", "routed_value_date", "late", "accepted_ms",
)  # fmt: skip


def read(message: Any, calendar: SettlementCalendar) -> Incoming | Unreadable:
    """One consumed record as a row of the fold, or as unreadable with the reason (processor/checks.py)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    try:
        event = _DECODER.decode(message.value() or b"")
    except msgspec.DecodeError as exc:  # ValidationError included
        return Unreadable(topic, partition, offset, f"not a TransactionAccepted event: {exc}"[:500])
    if event.event_type != EVENT_TYPE or event.schema_version != SCHEMA_VERSION:
        return Unreadable(topic, partition, offset, f"unknown event {event.event_type} v{event.schema_version}"[:500])
    kind, accepted_ms = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or accepted_ms <= 0:
        return Unreadable(topic, partition, offset, "the record has no timestamp (event time)")
    reason = problem(event, calendar)
    if reason is not None:
        return Unreadable(topic, partition, offset, reason)
    transaction, routing = event.transaction, event.routing
    fields = (
        topic, str(partition), str(offset), event.partner, transaction.transaction_id, event.idempotency_key,
        event.event_id, event.fingerprint, transaction.amount, transaction.source_currency,
        transaction.destination_currency, transaction.source_account, transaction.destination_account,
        transaction.counterparty_id, routing.window, routing.requested_window or "\\N", routing.reason,
        event.occurred_at,
    )  # fmt: skip
    line = "\t".join(fields)
    # The checks leave none of these four characters, but the log may hold records of others.
    if line.count("\t") != _FIELDS - 1 or "\\" in line or "\n" in line or "\r" in line:
        line = "\t".join(field if field == "\\N" else field.translate(_ESCAPES) for field in fields)
    return Incoming(line, routing.batch, routing.value_date, accepted_ms, event_time_ms(event))


def collect(messages: list[Any], wanted: Callable[[Partition, int], bool], calendar: SettlementCalendar) -> PollBatch:
    """The records of a poll batch that `wanted(partition, offset)` accepts, and each partition's next
    offset and newest timestamp after them. Errors a message carries instead of a record are logged
    and skipped."""
    batch = PollBatch([], [], {}, {})
    for message in messages:
        if message.error() is not None:
            if message.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume: %s", message.error().str())
            continue
        key = (message.topic(), message.partition())
        if not wanted(key, message.offset()):
            continue
        row = read(message, calendar)
        if isinstance(row, Incoming):
            batch.records.append(row)
            batch.newest[key] = max(batch.newest.get(key, 0), row.event_ms)
        else:
            batch.unreadable.append(row)
        batch.ends[key] = message.offset() + 1
    return batch
