"""POST /api/v1/transactions/: the partner's edge. HTTP in, Intake does the work, bytes out."""

from typing import Any, ClassVar

from litestar import Request, Response, post

from gateway.api.edge import submitted
from gateway.api.openapi import (
    PARTNER_RESPONSES,
    PARTNER_SECURITY,
    PartnerOperation,
    documented,
    problem_example,
    problem_responses,
)
from gateway.intake.schemas import (
    IDEMPOTENCY_KEY_SCHEMA,
    REQUEST_SCHEMA,
    Accepted,
    AcceptedMetadata,
    Deduped,
    DedupedMetadata,
)

SEED_EXAMPLE = {
    "transaction_id": "txn_001",
    "amount": 250.00,
    "source_currency": "USD",
    "destination_currency": "GBP",
    "source_account": "acct_usa_88",
    "destination_account": "acct_uk_99",
    "counterparty_id": "cparty_london",
    "idempotency_key": "idemp_key_101",
    "settlement_window": "t1",
}


SERVER_TIMING = {
    "description": "the server's time per stage in milliseconds (a replay's kafka is 0)",
    "required": True,
    "schema": {
        "type": "string",
        "pattern": r"^decode;dur=\d+\.\d{3}, validate;dur=\d+\.\d{3}, redis;dur=\d+\.\d{3}, kafka;dur=\d+\.\d{3}$",
    },
}


class TransactionOperation(PartnerOperation):
    """Adds the hand-written request body schema: the handler reads raw bytes, so Litestar cannot infer it."""

    response_headers: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        **PartnerOperation.response_headers,
        "202": {"Server-Timing": SERVER_TIMING},
        "200": {
            "Server-Timing": SERVER_TIMING,
            "Idempotent-Replayed": {"required": True, "schema": {"type": "string", "const": "true"}},
        },
    }

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": REQUEST_SCHEMA, "examples": {"seed": {"value": SEED_EXAMPLE}}}},
        }
        schema["parameters"] = [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                # HTTP strips the spaces around a header value, so a key sent here neither starts nor ends with one
                "schema": {**IDEMPOTENCY_KEY_SCHEMA, "pattern": "^[!-~]([ -~]{0,253}[!-~])?$"},
                "description": "the idempotency key, instead of the body field; both present must be equal",
            },
            {
                "name": "traceparent",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "W3C trace context, carried into the Kafka record's headers",
            },
        ]
        return schema


ACCEPTED_EXAMPLE = Accepted(
    transaction_id="txn_001",
    metadata=AcceptedMetadata(
        window="t1",
        requested_window="t1",
        value_date="2026-11-27",
        batch="t1-20261127-GBP",
        reason="requested",
        topic="settlement.t1",
        partition=2,
        offset=41,
        accepted_at="2026-11-26T09:30:00.123Z",
    ),
)
DEDUPED_EXAMPLE = Deduped(
    transaction_id="txn_001",
    metadata=DedupedMetadata(
        original_batch="t1-20261127-GBP",
        window="t1",
        value_date="2026-11-27",
        topic="settlement.t1",
        partition=2,
        offset=41,
        accepted_at="2026-11-26T09:30:00.123Z",
    ),
)

RESPONSES = {
    202: documented(Accepted, "Accepted: the broker has the record (acks=all)", "submitted", ACCEPTED_EXAMPLE),
    200: documented(
        Deduped,
        "Exact resubmission: the original answer, with header Idempotent-Replayed: true",
        "deduped",
        DEDUPED_EXAMPLE,
    ),
    400: problem_responses("Malformed JSON", problem_example("malformed-json", "the body is not valid JSON")),
    409: problem_responses(
        "The key is still in flight (with Retry-After), or the transaction_id was taken by another key",
        problem_example("request-in-flight", "a request with this idempotency key is still being processed"),
        problem_example("transaction-id-conflict", "this transaction_id was already submitted under another key"),
    ),
    413: problem_responses("Body too large", problem_example("body-too-large", "Request Entity Too Large")),
    415: problem_responses("Not application/json", problem_example("unsupported-media-type", "send application/json")),
    422: problem_responses(
        "Invalid transaction, wrong shape, or idempotency key reused with another payload",
        problem_example(
            "validation-failed",
            "the transaction breaks one or more rules",
            [
                {"field": "amount", "code": "amount_not_positive", "message": "must be greater than zero"},
                {"field": "source_currency", "code": "currency_unknown", "message": "must be an active ISO 4217 code"},
            ],
        ),
        problem_example(
            "invalid-shape",
            "Object contains unknown field `amt`",
            [{"field": "amt", "code": "unknown_field", "message": "is not a field of a transaction"}],
        ),
        problem_example("idempotency-key-reused", "this idempotency key was already used for a different transaction"),
    ),
    **PARTNER_RESPONSES,
    403: problem_responses(
        "The partner may not use this settlement window or currency",
        problem_example("forbidden", "settlement window rtgs is not enabled for partner acme"),
    ),
    503: problem_responses(
        "Redis or Kafka unavailable (with Retry-After); nothing was accepted",
        problem_example("dependency-unavailable", "kafka is unavailable; retry later"),
    ),
}


@post(
    "/api/v1/transactions/",
    summary="Submit a transaction",
    description="Validate, de-duplicate, route and durably write one payment instruction to Kafka.",
    tags=["transactions"],
    operation_class=TransactionOperation,
    security=PARTNER_SECURITY,
    responses=RESPONSES,
    status_code=202,
)
async def submit_transaction(request: Request) -> Response[bytes]:
    """Accept one transaction: 202 new, 200 replay, or a problem.

    The fast lane (gateway.api.fast_lane) takes the common case, a body of declared length within the
    limit, before Litestar sees it; this handler takes every other POST (a chunked body, a body over
    the limit) and documents the operation. Both hand it to the same edge."""
    return await submitted(request, bulk=False)
