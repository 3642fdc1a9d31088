"""The webhooks partners receive, described in the OpenAPI document's `webhooks` (OpenAPI 3.1): one POST
per event type, its Standard Webhooks headers and its body, whose `data` is the status API's answer at
the change (the TransactionStatus or BatchView schema of the same document). The processor builds the
bodies in SQL (migration 0006); tests/integration/test_webhook_outbox.py validates what it writes
against these schemas, so the document and the outbox cannot drift apart.
"""

from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from settlement.webhooks import EVENT_TYPES

# event type -> (what it says, the status API schema its data is)
EVENTS = {
    "transaction.batched": ("A transaction was folded into its batch (status batched).", "TransactionStatus"),
    "transaction.moved": (
        "A transaction was read after the batch its 202 named had closed: it settles in the next batch of its "
        "window and currency (late true; routed_batch and routed_value_date are its 202's).",
        "TransactionStatus",
    ),
    "transaction.settled": ("A transaction settled (status settled, steps.settled_at).", "TransactionStatus"),
    "transaction.conflict": (
        "Another instruction (another amount, accounts, currencies or window) reached the log under a "
        "transaction id already folded: it is refused after its 202, never settled. `data` is the transaction "
        "that stands, and `data.conflict` the instruction refused.",
        "TransactionStatus",
    ),
    "batch.closed": ("A batch the partner has transactions in closed: its part of it, frozen.", "BatchView"),
    "batch.settled": ("A batch the partner has transactions in settled: its part of it.", "BatchView"),
}
assert set(EVENTS) == EVENT_TYPES

_HEADERS = [
    Parameter(
        name="webhook-id",
        param_in="header",
        required=True,
        schema=Schema(type=OpenAPIType.STRING),
        description="The event's id, the same on every attempt: deduplicate on it (delivery is at least once).",
    ),
    Parameter(
        name="webhook-timestamp",
        param_in="header",
        required=True,
        schema=Schema(type=OpenAPIType.INTEGER),
        description="This attempt's Unix seconds: refuse one far from your clock (standardwebhooks: 5 minutes).",
    ),
    Parameter(
        name="webhook-signature",
        param_in="header",
        required=True,
        schema=Schema(type=OpenAPIType.STRING),
        description="v1,<base64 of HMAC-SHA256 of '<webhook-id>.<webhook-timestamp>.<body>' under the partner's "
        "secret (the bytes after whsec_, base64-decoded)>: verify it before trusting the body.",
    ),
]

_CONFLICT = Schema(
    type=OpenAPIType.OBJECT,
    description="The instruction refused (transaction.conflict only).",
    required=["amount", "currency", "batch", "fingerprint", "folded_fingerprint", "accepted_at", "kafka"],
    properties={
        "amount": Schema(type=OpenAPIType.STRING, description="exact decimal"),
        "currency": Schema(type=OpenAPIType.STRING),
        "batch": Schema(type=OpenAPIType.STRING, description="the batch it would have joined"),
        "fingerprint": Schema(type=OpenAPIType.STRING),
        "folded_fingerprint": Schema(type=OpenAPIType.STRING, description="the instruction that stands"),
        "accepted_at": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME),
        "kafka": Reference(ref="#/components/schemas/KafkaRecord"),
    },
)


def _body(event_type: str, data_schema: str) -> Schema:
    data: Schema | Reference = Reference(ref=f"#/components/schemas/{data_schema}")
    if event_type == "transaction.conflict":
        data = Schema(
            all_of=[data, Schema(type=OpenAPIType.OBJECT, required=["conflict"], properties={"conflict": _CONFLICT})]
        )
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["type", "timestamp", "data"],
        properties={
            "type": Schema(type=OpenAPIType.STRING, const=event_type),
            "timestamp": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME, description="the change"),
            "data": data,
        },
    )


def _webhook(event_type: str) -> PathItem:
    what, data_schema = EVENTS[event_type]
    return PathItem(
        post=Operation(
            summary=event_type,
            description=f"{what} Sent to the partner's webhook URL (its registry entry), signed as Standard "
            "Webhooks says, at least once, after every earlier event of the same transaction (or batch).",
            tags=["webhooks"],
            operation_id=f"webhook_{event_type.replace('.', '_')}",
            parameters=list(_HEADERS),
            request_body=RequestBody(
                required=True, content={"application/json": OpenAPIMediaType(schema=_body(event_type, data_schema))}
            ),
            responses={
                "2XX": OpenAPIResponse(description="Received: any 2xx ends the delivery (the body is not read)."),
                "default": OpenAPIResponse(
                    description="Anything else, a redirect, a timeout or no connection: the attempt failed and "
                    "is retried (PROCESSOR_WEBHOOK_RETRY_SCHEDULE) until every retry is spent."
                ),
            },
        )
    )


WEBHOOKS: dict[str, PathItem | Reference] = {event_type: _webhook(event_type) for event_type in sorted(EVENTS)}
