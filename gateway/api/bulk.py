"""POST /api/v1/transactions/bulk: many transactions in one request, each decided as if sent alone.

The fast lane takes a bulk request of declared length within GATEWAY_BULK_MAX_BODY_BYTES; this route
takes the others (a chunked body, a body over the limit) and documents the operation. Both hand it
to the edge (gateway.api.edge.Edge.submit with bulk=True).
"""

from typing import Any, ClassVar

import msgspec
from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler

from gateway.api.edge import submitted
from gateway.api.openapi import (
    PARTNER_RESPONSES,
    PARTNER_SECURITY,
    PartnerOperation,
    documented,
    problem_example,
    problem_responses,
)
from gateway.api.transactions import ACCEPTED_EXAMPLE, DEDUPED_EXAMPLE, RESPONSES, SEED_EXAMPLE, SERVER_TIMING
from gateway.intake.outcomes import INVALID
from gateway.intake.schemas import REQUEST_SCHEMA

PATH = "/api/v1/transactions/bulk"

_INVALID = problem_example(
    "validation-failed",
    INVALID,
    [{"field": "amount", "code": "amount_not_positive", "message": "must be greater than zero"}],
).value
_ANSWER_EXAMPLE = {
    "results": [
        {"index": 0, "status": 202, "body": msgspec.to_builtins(ACCEPTED_EXAMPLE)},
        {"index": 1, "status": 200, "body": msgspec.to_builtins(DEDUPED_EXAMPLE)},
        {"index": 2, "status": 422, "body": _INVALID},
    ]
}
_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["results"],
    "properties": {
        "results": {
            "type": "array",
            "description": "one result per transaction, in the request's order",
            "items": {
                "type": "object",
                "required": ["index", "status", "body"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0, "description": "the transaction's place in the array"},
                    "status": {
                        "type": "integer",
                        "enum": [200, 202, 403, 409, 422, 503],
                        "description": "the status the single endpoint would have answered for this transaction",
                    },
                    "body": {
                        "type": "object",
                        "description": "the single endpoint's body for that status, byte for byte: the 202 or 200 "
                        "body, or the problem (application/problem+json) with its errors",
                    },
                },
            },
        }
    },
}


_REQUEST_EXAMPLE = [SEED_EXAMPLE, {**SEED_EXAMPLE, "transaction_id": "txn_002", "idempotency_key": "idemp_key_102"}]


class BulkOperation(PartnerOperation):
    """The hand-written request and answer schemas: the handler reads and writes raw bytes."""

    max_items: ClassVar[int] = 1000
    response_headers: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        **PartnerOperation.response_headers,
        "200": {"Server-Timing": SERVER_TIMING},
        "207": {
            "Server-Timing": SERVER_TIMING,
            "Retry-After": {
                "description": "when any transaction was answered 409 request-in-flight or 503: seconds to wait "
                "before sending those again (GATEWAY_RETRY_AFTER_SECONDS)",
                "schema": {"type": "integer", "minimum": 0},
            },
        },
    }

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "array", "minItems": 1, "maxItems": self.max_items, "items": REQUEST_SCHEMA},
                    "examples": {"two": {"value": _REQUEST_EXAMPLE}},
                }
            },
        }
        for status in ("200", "207"):
            schema["responses"][status]["content"]["application/json"]["schema"] = _ANSWER_SCHEMA
        return schema


BULK_RESPONSES = {
    200: documented(
        dict[str, Any],
        "Every transaction accepted: each result is 202 with the broker's record",
        "all accepted",
        {"results": _ANSWER_EXAMPLE["results"][:1]},
    ),
    207: documented(
        dict[str, Any],
        "Per transaction, what the single endpoint would have answered (202, 200 replay, 4xx, 503)",
        "mixed",
        _ANSWER_EXAMPLE,
    ),
    400: problem_responses(
        "Malformed JSON, or an Idempotency-Key header (each transaction carries its own key)",
        problem_example("malformed-json", "the body is not valid JSON"),
        problem_example("invalid-parameter", "a bulk request takes no Idempotency-Key header"),
    ),
    413: problem_responses(
        "Body too large", problem_example("body-too-large", "the body is larger than GATEWAY_BULK_MAX_BODY_BYTES")
    ),
    415: RESPONSES[415],
    422: problem_responses(
        "Not a JSON array of 1 to GATEWAY_BULK_MAX_ITEMS transactions (at most the partner's burst when limited)",
        problem_example(
            "invalid-shape",
            "a bulk request holds 1 to 1000 transactions, not 1200",
            [{"field": "", "code": "too_many_items", "message": "must hold 1 to 1000 transactions"}],
        ),
    ),
    **PARTNER_RESPONSES,
    503: problem_responses(
        "Redis unavailable (with Retry-After); nothing was accepted",
        problem_example("dependency-unavailable", "redis is unavailable; retry later"),
    ),
}


def bulk_submission(max_items: int, max_body_bytes: int) -> HTTPRouteHandler:
    """The bulk route, its body limited to `max_body_bytes` and its documentation to `max_items`."""

    class Operation(BulkOperation):
        pass

    Operation.max_items = max_items

    @post(
        PATH,
        summary="Submit many transactions",
        description=(
            "A JSON array of transactions, each validated, de-duplicated, routed and durably written to Kafka "
            "exactly as POST /api/v1/transactions/ would, and decided on its own: one bad or duplicate "
            "transaction never fails the others. The answer comes once the broker has acknowledged every "
            "accepted transaction. A partner's rate limit counts one request per transaction."
        ),
        tags=["transactions"],
        operation_class=Operation,
        security=PARTNER_SECURITY,
        responses=BULK_RESPONSES,
        status_code=200,
        request_max_body_size=max_body_bytes,
    )
    async def submit_bulk(request: Request) -> Response[bytes]:
        """200 when every transaction is new, else 207 with one result per transaction."""
        return await submitted(request, bulk=True)

    return submit_bulk
