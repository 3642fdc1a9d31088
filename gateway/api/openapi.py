"""What the OpenAPI document says about every operation beyond its bodies: the response headers.

Litestar documents the headers of a handler's success response only; the gateway's headers come from
its middleware and fast lane (X-Request-ID on every answer, Retry-After on a 409 or 503, Server-Timing
on a submission's 200 and 202), so each operation's class adds them to its documented responses.
"""

from typing import Any, ClassVar

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, Operation

from gateway.api.problems import CAUSES, MEDIA_TYPE, PROBLEM_BASE
from gateway.intake.schemas import Problem

REQUEST_ID: dict[str, Any] = {
    "description": "the partner's X-Request-ID when it is 1-128 of [A-Za-z0-9._:-], else one the gateway made",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}
_RETRY_SCHEMA = {"type": "integer", "minimum": 0}
_RETRY_AFTER = "seconds to wait before retrying (GATEWAY_RETRY_AFTER_SECONDS)"


class DocumentedOperation(Operation):
    """An operation whose responses document the headers the gateway sets on them."""

    # status -> header name -> header object, added to that response besides X-Request-ID
    response_headers: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "409": {"Retry-After": {"description": "with request-in-flight: " + _RETRY_AFTER, "schema": _RETRY_SCHEMA}},
        "503": {"Retry-After": {"description": _RETRY_AFTER, "required": True, "schema": _RETRY_SCHEMA}},
    }

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        for status, response in schema.get("responses", {}).items():
            headers = response.setdefault("headers", {})
            headers["X-Request-ID"] = REQUEST_ID
            headers.update(self.response_headers.get(status, {}))
        return schema


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
