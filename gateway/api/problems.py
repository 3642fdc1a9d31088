"""RFC 9457 problem responses: the only place where the gateway's errors become HTTP status codes."""

import logging
from http import HTTPStatus

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from gateway.errors import Refused
from gateway.intake.schemas import ENCODER, FieldError, Problem
from gateway.telemetry.observability import request_id_of
from settlement.errors import DependencyUnavailable

PROBLEM_BASE = "https://settlement-gateway.example/problems/"
MEDIA_TYPE = "application/problem+json"

# cause -> (status, title)
CAUSES: dict[str, tuple[int, str]] = {
    "malformed-json": (400, "Malformed JSON"),
    "invalid-parameter": (400, "Invalid parameter"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "request-in-flight": (409, "Request in flight"),
    "transaction-id-conflict": (409, "Transaction id already used"),
    "delivery-pending": (409, "Delivery pending"),
    "body-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "invalid-shape": (422, "Request does not match the schema"),
    "validation-failed": (422, "Validation failed"),
    "idempotency-key-reused": (422, "Idempotency key reused with another payload"),
    "rate-limited": (429, "Too many requests"),
    "dependency-unavailable": (503, "Service unavailable"),
    "not-ready": (503, "Not ready"),
    "shutting-down": (503, "Shutting down"),
    "internal-error": (500, "Internal error"),
}

log = logging.getLogger("gateway.api.problems")


# causes the partner should retry after a pause (the header gives GATEWAY_RETRY_AFTER_SECONDS)
RETRY_LATER = frozenset({"request-in-flight", "dependency-unavailable"})


def problem_body(cause: str, detail: str, errors: list[tuple[str, str, str]] | None = None) -> tuple[int, bytes]:
    """(status, problem+json body) for `cause`."""
    status, title = CAUSES[cause]
    body = Problem(
        type=PROBLEM_BASE + cause,
        title=title,
        status=status,
        detail=detail,
        errors=[FieldError(*e) for e in errors] if errors else None,
    )
    return status, ENCODER.encode(body)


def problem(
    cause: str,
    detail: str,
    errors: list[tuple[str, str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """A problem+json response for `cause`."""
    status, body = problem_body(cause, detail, errors)
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def unavailable_detail(exc: DependencyUnavailable) -> str:
    """What the partner is told when Redis or Kafka cannot take the request (the cause is logged)."""
    log.warning("%s unavailable: %s", exc.dependency, exc.detail)
    return f"{exc.dependency} is unavailable; retry later"


def refused(request: Request, exc: Refused) -> Response[bytes]:
    """Exception handler: a refused request."""
    headers = None
    if exc.cause in RETRY_LATER:
        headers = {"Retry-After": str(request.app.state.settings.retry_after_seconds)}
    return problem(exc.cause, exc.detail, exc.errors, headers)


def unavailable(request: Request, exc: DependencyUnavailable) -> Response[bytes]:
    """Exception handler: Redis or Kafka cannot take the request; never a false 202."""
    return problem(
        "dependency-unavailable",
        unavailable_detail(exc),
        headers={"Retry-After": str(request.app.state.settings.retry_after_seconds)},
    )


_HTTP_CAUSES = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large", 415: "unsupported-media-type"}


def _with_request_id(request: Request, headers: dict[str, str] | None) -> dict[str, str] | None:
    """The headers of an error answer, with X-Request-ID when no route took the request (404, 405): the
    middleware that sets it on every other answer runs only for a matched route."""
    if "request_id" in request.scope.get("state", {}):
        return headers
    return {**(headers or {}), "X-Request-ID": request_id_of(request.scope).decode()}


def http_error(request: Request, exc: HTTPException) -> Response[bytes]:
    """Exception handler: the framework's own HTTP errors, in the same problem format."""
    if isinstance(exc, ValidationException):  # a path or query parameter of the wrong type or range
        errors = [
            (str(item.get("key", "")), "invalid_parameter", str(item.get("message", "is not valid")))
            for item in (exc.extra if isinstance(exc.extra, list) else [])
            if isinstance(item, dict)
        ]
        detail = "a path or query parameter is not valid"
        return problem("invalid-parameter", detail, errors or None, headers=_with_request_id(request, None))
    cause = _HTTP_CAUSES.get(exc.status_code)
    if cause is None:
        if exc.status_code >= 500 or exc.status_code < 400:
            return internal_error(request, exc)
        return _plain_problem(exc.status_code, exc.detail, _with_request_id(request, exc.headers))
    return problem(cause, exc.detail or CAUSES[cause][1], headers=_with_request_id(request, exc.headers))


def _plain_problem(status: int, detail: str, headers: dict[str, str] | None) -> Response[bytes]:
    """A client error the framework raised that has no cause of ours: RFC 9457's `about:blank`, titled
    with the status's phrase, instead of a 500."""
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Client error"
    body = ENCODER.encode(Problem(type="about:blank", title=title, status=status, detail=detail or title))
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def internal_error(request: Request, exc: Exception) -> Response[bytes]:
    """Exception handler of last resort: log the trace, tell the partner nothing internal."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem("internal-error", "the request could not be processed", headers=_with_request_id(request, None))


EXCEPTION_HANDLERS = {
    Refused: refused,
    DependencyUnavailable: unavailable,
    HTTPException: http_error,
    Exception: internal_error,
}
