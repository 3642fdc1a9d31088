"""The partner's wire format: msgspec Structs decoded straight from the raw body, encoded once.

Request fields are typed loosely on purpose (`Any`, and the amount's raw JSON text): msgspec then
stops only at malformed JSON or an unknown field, and fastcore reports every broken rule at once,
where typed fields would stop at the first. REQUEST_SCHEMA documents the real rules for OpenAPI.
"""

from typing import Any

import msgspec

from fastcore.currencies import CURRENCIES
from settlement.events import Routing, instant

_IDENTIFIER = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}
_CURRENCY = {
    "type": "string",
    "enum": sorted(code for code, (units, fund) in CURRENCIES.items() if units is not None and not fund),
    "description": "active ISO 4217 code with minor units (fund codes and XAU, XDR, XTS, XXX ... are refused)",
}
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "pattern": "^[ -~]{1,255}$",
    "description": "1 to 255 printable ASCII characters",
}


class TransactionRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A payment instruction as a partner submits it (documented by REQUEST_SCHEMA)."""

    transaction_id: Any = None
    amount: msgspec.Raw = msgspec.Raw()  # the raw JSON text: fastcore parses it exactly
    source_currency: Any = None
    destination_currency: Any = None
    source_account: Any = None
    destination_account: Any = None
    counterparty_id: Any = None
    idempotency_key: Any = None
    settlement_window: Any = None
    metadata: Any = None


REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "transaction_id",
        "amount",
        "source_currency",
        "destination_currency",
        "source_account",
        "destination_account",
        "counterparty_id",
    ],
    "properties": {
        "transaction_id": {**_IDENTIFIER, "description": "the partner's id of the transaction"},
        "amount": {
            "anyOf": [
                {"type": "number", "minimum": 1e-30, "exclusiveMaximum": 1e31},  # written exponents within ±30
                {
                    "type": "string",
                    "pattern": r"^([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)([eE][+-]?0*([12]?[0-9]|30))?$",
                },
            ],
            "description": "greater than zero, a JSON number or a decimal string, parsed exactly; at most the "
            "source currency's minor units and its own configured maximum (about USD 1,000,000,000 in its units); "
            "exponents within -30 and 30",
            "examples": [250.00, "250.00"],
        },
        "source_currency": {**_CURRENCY, "examples": ["USD"]},
        "destination_currency": {**_CURRENCY, "examples": ["GBP"]},
        "source_account": {**_IDENTIFIER, "description": "account debited; the Kafka record key"},
        "destination_account": {**_IDENTIFIER, "description": "account credited; must differ from source_account"},
        "counterparty_id": _IDENTIFIER,
        "idempotency_key": {
            **IDEMPOTENCY_KEY_SCHEMA,
            "type": ["string", "null"],
            "description": "1 to 255 printable ASCII characters; may come in the Idempotency-Key header instead "
            "(required in one; both present must be equal); null is absent",
        },
        "settlement_window": {"enum": ["rtgs", "t0", "t1", None], "description": "absent or null: the router chooses"},
        "metadata": {
            "type": ["object", "null"],
            "maxProperties": 16,
            "propertyNames": {"minLength": 1, "maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 256},
            "description": "passed through to the Kafka event; null is absent",
        },
    },
}


class AcceptedMetadata(msgspec.Struct, frozen=True):
    """Routing and the Kafka record of an accepted transaction."""

    window: str
    requested_window: str | None
    value_date: str
    batch: str
    reason: str
    topic: str
    partition: int
    offset: int
    accepted_at: str


class Accepted(msgspec.Struct, frozen=True):
    """202: the transaction is durably in Kafka."""

    transaction_id: str
    metadata: AcceptedMetadata
    status: str = "submitted"
    message: str = "Transaction queued for processing"


class DedupedMetadata(msgspec.Struct, frozen=True):
    """Where the original submission went."""

    original_batch: str
    window: str
    value_date: str
    topic: str
    partition: int
    offset: int
    accepted_at: str


class Deduped(msgspec.Struct, frozen=True):
    """200: an exact resubmission; the original is answered again, byte for byte."""

    transaction_id: str
    metadata: DedupedMetadata
    status: str = "deduped"
    message: str = "Transaction already processed"


def replay_answer(
    transaction_id: str, routing: Routing, topic: str, partition: int, offset: int, accepted_at: str
) -> Deduped:
    """The answer every exact resubmission of an accepted transaction gets."""
    return Deduped(
        transaction_id=transaction_id,
        metadata=DedupedMetadata(
            original_batch=routing.batch,
            window=routing.window,
            value_date=routing.value_date,
            topic=topic,
            partition=partition,
            offset=offset,
            accepted_at=accepted_at,
        ),
    )


def compact_answer(batch: str, topic: str, partition: int, offset: int, accepted_ms: int) -> bytes:
    """What Redis and the in-doubt resolver keep of an accepted transaction's answer (about 50 bytes):
    the batch of its 202 (whose id holds its window and value date), its record's coordinates and
    timestamp. `replay_body` makes the 200 every exact resubmission gets from it."""
    return f"{batch}|{topic}|{partition}|{offset}|{accepted_ms}".encode()


def stored_answer(transaction_id: str, stored: bytes) -> Deduped:
    """The answer every exact resubmission gets, from its `compact_answer` (or from the whole answer the
    previous layout kept, which starts with `{`)."""
    if stored[:1] == b"{":
        return msgspec.json.decode(stored, type=Deduped)
    batch, topic, partition, offset, accepted_ms = stored.decode().split("|")
    window, day, _ = batch.split("-")
    routing = Routing(window, None, f"{day[:4]}-{day[4:6]}-{day[6:]}", batch, "")
    accepted_at = instant(int(accepted_ms) / 1000)
    return replay_answer(transaction_id, routing, topic, int(partition), int(offset), accepted_at)


def replay_body(transaction_id: str, stored: bytes) -> bytes:
    """The 200 body of an exact resubmission (the previous layout's stored body as it was kept)."""
    return stored if stored[:1] == b"{" else ENCODER.encode(stored_answer(transaction_id, stored))


class FieldError(msgspec.Struct, frozen=True):
    """One broken rule."""

    field: str
    code: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class BulkItem(msgspec.Struct, frozen=True):
    """One transaction of a bulk request: its place in the array, and the single endpoint's status
    and body for it (the 202 or 200 body, or the problem), embedded byte for byte."""

    index: int
    status: int
    body: msgspec.Raw


class BulkAnswer(msgspec.Struct, frozen=True):
    """200 (every transaction accepted) or 207: one result per transaction, in the request's order."""

    results: list[BulkItem]


REQUEST_DECODER = msgspec.json.Decoder(TransactionRequest)
ENCODER = msgspec.json.Encoder()
