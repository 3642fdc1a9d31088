"""Per-request observability: X-Request-ID, the request-duration histogram and one access log line."""

import re
import time
from typing import Any

from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics, TallyHistogram
from settlement import ids

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> bytes:
    """The partner's X-Request-ID when it is sane, else a fresh one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _REQUEST_ID.match(value):
                return value
            break
    return ids.request_id().encode()


class RequestRecorder:
    """What every finished request leaves behind: its duration in the histogram and an access line."""

    def __init__(self, metrics: Metrics, access_log: AccessLog) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self._durations: dict[tuple[str, str, int], TallyHistogram] = {}

    def finish(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        request_id: str,
        transaction_id: str | None,
        partner: str | None = None,
    ) -> None:
        key = (method, route, status)
        histogram = self._durations.get(key)
        if histogram is None:
            histogram = self._durations[key] = self.metrics.tally_histogram(
                self.metrics.http_duration, method, route, str(status)
            )
        histogram.observe(duration)
        if self.access_log.enabled:
            self.access_log.request(method, route, status, duration, request_id, transaction_id, partner)


class RequestObservability(ASGIMiddleware):
    """Time every request Litestar serves, label it by route template, echo its request id, log it.
    A handler may leave headers every answer to the request carries (its partner's RateLimit) in the
    scope's state as `answer_headers`."""

    scopes = ("http",)  # type: ignore[assignment]

    def __init__(self, recorder: RequestRecorder) -> None:
        self.recorder = recorder

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
                extra = state.get("answer_headers", ())
                message["headers"] = [*message.get("headers", ()), *extra, (b"x-request-id", request_id)]
            await send(message)

        try:
            await next_app(scope, receive, send_with_request_id)
        finally:
            self.recorder.finish(
                scope["method"],  # type: ignore[typeddict-item]
                scope.get("path_template") or "unmatched",
                status,
                time.perf_counter() - started,
                state["request_id"],
                state.get("transaction_id"),
                state.get("partner"),
            )
