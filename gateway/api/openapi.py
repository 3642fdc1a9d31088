"""What the OpenAPI document says about every operation beyond its bodies: the response headers.

Litestar documents the headers of a handler's success response only; the gateway's headers come from
its middleware and fast lane (X-Request-ID on every answer, Retry-After on a 409 or 503, Server-Timing
on a submission's 200 and 202), so each operation's class adds them to its documented responses.
"""

from typing import Any, ClassVar

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, Operation, Reference, SecurityScheme

from gateway.api.problems import CAUSES, MEDIA_TYPE, PROBLEM_BASE
from gateway.intake.schemas import Problem

REQUEST_ID: dict[str, Any] = {
    "description": "the partner's X-Request-ID when it is 1-128 of [A-Za-z0-9._:-], else one the gateway made",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}
_RETRY_SCHEMA = {"type": "integer", "minimum": 0}
_RETRY_AFTER = "seconds to wait before retrying (GATEWAY_RETRY_AFTER_SECONDS)"
# draft-ietf-httpapi-ratelimit-headers: on every answer to a partner that has a limit
RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": 'the partner\'s limit: q requests at once, whole again after w seconds ("partner";q=1000;w=2)',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'what is left: r requests now, the burst whole again in t seconds ("partner";r=998;t=1)',
        "schema": {"type": "string"},
    },
}


class DocumentedOperation(Operation):
    """An operation whose responses document the headers the gateway sets on them."""

    partner_operation: ClassVar[bool] = False
    # status -> header name -> header object, added to that response besides X-Request-ID
    response_headers: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "409": {"Retry-After": {"description": "with request-in-flight: " + _RETRY_AFTER, "schema": _RETRY_SCHEMA}},
        "503": {"Retry-After": {"description": _RETRY_AFTER, "required": True, "schema": _RETRY_SCHEMA}},
        "401": {
            "WWW-Authenticate": {"description": "the Bearer challenge (RFC 6750)", "required": True, "schema": {}},
            "Accept-Signature": {"description": "how to sign, for a partner that must (RFC 9421)", "schema": {}},
        },
        "429": {
            "Retry-After": {
                "description": "seconds until the partner's limit allows one more request",
                "required": True,
                "schema": _RETRY_SCHEMA,
            }
        },
    }

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        for status, response in schema.get("responses", {}).items():
            headers = response.setdefault("headers", {})
            headers["X-Request-ID"] = REQUEST_ID
            if self.partner_operation:
                headers.update(RATE_LIMIT_HEADERS)
            headers.update(self.response_headers.get(status, {}))
        return schema


class PartnerOperation(DocumentedOperation):
    """An operation a partner calls through the edge: its answers carry the RateLimit headers."""

    partner_operation = True


def problem_example(cause: str, detail: str, errors: list[dict[str, str]] | None = None) -> Example:
    """An example problem+json body of `cause`."""
    status, title = CAUSES[cause]
    value: dict[str, Any] = {"type": PROBLEM_BASE + cause, "title": title, "status": status, "detail": detail}
    if errors:
        value["errors"] = errors
    return Example(summary=title, value=value)


def problem_responses(description: str, *examples: Example) -> ResponseSpec:
    """A documented error response: problem+json with these examples."""
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=MEDIA_TYPE,
        generate_examples=False,
        examples=list(examples),
    )


def documented(data: Any, description: str, summary: str, example: Any) -> ResponseSpec:
    """A documented success response: its body's type, and one example of it."""
    return ResponseSpec(
        data_container=data,
        description=description,
        generate_examples=False,
        examples=[Example(summary=summary, value=example)],
    )


# the answers of the edge to any partner request (gateway.api.edge)
PARTNER_RESPONSES = {
    401: problem_responses(
        "No valid credential: missing, wrong, revoked or expired key; bad, expired or replayed signature",
        problem_example("unauthorized", "send the partner's API key as Authorization: Bearer <key>"),
    ),
    429: problem_responses(
        "The partner's rate limit is exhausted (Retry-After says for how long)",
        problem_example("rate-limited", "the partner's rate limit is exhausted; retry after the time given"),
    ),
}

# the partner's API key (gateway.partners); in open mode (no registry) no credential is needed
SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "partnerKey": SecurityScheme(
        type="http",
        scheme="bearer",
        description="the partner's API key. A partner configured to sign also sends RFC 9421 Signature-Input, "
        "Signature and Content-Digest (hmac-sha256 over @method, @path, content-digest; created, nonce). "
        "In open mode (no partner registry) no credential is needed.",
    )
}
PARTNER_SECURITY: list[dict[str, list[str]]] = [{"partnerKey": []}]
