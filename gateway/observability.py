"""Per-request observability: X-Request-ID, the request-duration histogram and one access log line."""

import re
import time
import uuid
from typing import Any

import structlog
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import Metrics

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
access_log = structlog.get_logger("gateway.access")


def request_id_of(scope: Scope) -> bytes:
    """The partner's X-Request-ID when it is sane, else a fresh one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _REQUEST_ID.match(value):
                return value
            break
    return uuid.uuid4().hex.encode()


class RequestObservability(ASGIMiddleware):
    """Time every request, label it by route template, echo its request id, log one access line."""

    scopes = ("http",)  # type: ignore[assignment]

    def __init__(self, metrics: Metrics, log_access: bool) -> None:
        self.metrics = metrics
        self.log_access = log_access

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await next_app(scope, receive, send_with_request_id)
        finally:
            duration = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            method = scope["method"]  # type: ignore[typeddict-item]
            self.metrics.http_duration.labels(method, route, str(status)).observe(duration)
            if self.log_access:
                access_log.info(
                    "request",
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=round(duration * 1000, 3),
                    request_id=state["request_id"],
                    transaction_id=state.get("transaction_id"),
                )
