"""POST /api/v1/transactions/: the partner's edge. HTTP in, Intake does the work, bytes out."""

from typing import Any, ClassVar

from litestar import Request, Response, post
from litestar.exceptions import HTTPException

from gateway.api.openapi import DocumentedOperation, documented, problem_example, problem_responses
from gateway.errors import DependencyUnavailable, Refused
from gateway.intake.flow import Intake, Outcome
from gateway.intake.schemas import (
    IDEMPOTENCY_KEY_SCHEMA,
    REQUEST_SCHEMA,
    Accepted,
    AcceptedMetadata,
    Deduped,
    DedupedMetadata,
    TransactionRequest,
)
from gateway.telemetry.metrics import Metrics

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


class TransactionOperation(DocumentedOperation):
    """Adds the hand-written request body schema: the handler reads raw bytes, so Litestar cannot infer it."""

    response_headers: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        **DocumentedOperation.response_headers,
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


_ACCEPTED_EXAMPLE = Accepted(
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
_DEDUPED_EXAMPLE = Deduped(
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
    202: documented(Accepted, "Accepted: the broker has the record (acks=all)", "submitted", _ACCEPTED_EXAMPLE),
    200: documented(
        Deduped,
        "Exact resubmission: the original answer, with header Idempotent-Replayed: true",
        "deduped",
        _DEDUPED_EXAMPLE,
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
    503: problem_responses(
        "Redis or Kafka unavailable (with Retry-After); nothing was accepted",
        problem_example("dependency-unavailable", "kafka is unavailable; retry later"),
    ),
}


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json"


@post(
    "/api/v1/transactions/",
    summary="Submit a transaction",
    description="Validate, de-duplicate, route and durably write one payment instruction to Kafka.",
    tags=["transactions"],
    operation_class=TransactionOperation,
    responses=RESPONSES,
    status_code=202,
)
async def submit_transaction(request: Request) -> Response[bytes]:
    """Accept one transaction: 202 new, 200 replay, or a problem.

    The fast lane (gateway.api.fast_lane) answers the common case, a JSON body of declared length within
    the limit, before Litestar sees it; this handler takes every other POST (a chunked body, a wrong
    or missing content type, a body over the limit) and documents the operation."""
    headers = request.headers
    metrics = request.app.state.metrics
    try:
        if not is_json(headers.get("content-type")):
            raise Refused("unsupported-media-type", "send the transaction as application/json")
        intake: Intake = request.app.state.intake
        body = await request.body()
        outcome = await intake.submit(body, headers.get("idempotency-key"), headers.get("traceparent"))
    except (Refused, DependencyUnavailable) as exc:
        count_refusal(metrics, exc)
        raise
    except HTTPException as exc:
        if exc.status_code == 413:
            metrics.tally(metrics.intake, "body_too_large").inc()
        raise
    request.scope.setdefault("state", {})["transaction_id"] = outcome.transaction_id  # for the access log
    status, extra = answer(metrics, outcome)
    extra_headers = {name.decode(): value.decode() for name, value in extra}
    return Response(outcome.body, status_code=status, media_type="application/json", headers=extra_headers)


def count_refusal(metrics: Metrics, exc: Refused | DependencyUnavailable) -> None:
    """Count a refused submission by cause, and each broken validation rule."""
    if isinstance(exc, DependencyUnavailable):
        metrics.tally(metrics.intake, "dependency_unavailable").inc()
        return
    metrics.tally(metrics.intake, exc.cause.replace("-", "_")).inc()
    for field, code, _ in exc.errors or ():
        metrics.tally(metrics.validation_errors, field_label(field), code).inc()


# The `field` label of the metrics takes only these values: a partner chooses unknown field names and
# metadata keys, and one request must not be able to create a new time series per name.
FIELD_LABELS = frozenset(TransactionRequest.__struct_fields__) | {""}


def field_label(field: str) -> str:
    """`field` as a bounded metric label: a request field, the whole body (""), or `other`."""
    if field in FIELD_LABELS:
        return field
    head = field.split(".", 1)[0].split("[", 1)[0]
    return head if head != field and head in FIELD_LABELS else "other"


def answer(metrics: Metrics, outcome: Outcome) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Count a submission that succeeded; its status and its headers beyond the content type, as the
    ASGI messages of the fast lane carry them."""
    metrics.tally(metrics.intake, "replayed" if outcome.replayed else "accepted").inc()
    timing = (b"server-timing", outcome.timing.header().encode())
    if outcome.replayed:
        return 200, [(b"idempotent-replayed", b"true"), timing]
    return 202, [timing]
