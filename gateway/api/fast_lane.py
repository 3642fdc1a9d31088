"""The fast lane: well-formed transaction submissions answered at the ASGI edge, before Litestar.

A JSON POST to /api/v1/transactions/ with a declared Content-Length within the limit is nearly every
request the gateway gets. Litestar's routing, request and response objects and middleware cost about
as much as validating, routing and de-duplicating the transaction, so that request goes from the
ASGI scope straight to the Intake and back as two ASGI messages, with the same observability as the
rest (request id, duration histogram, access line) and the same answers.

Everything else continues to Litestar unchanged: other paths and methods, and the submissions the
lane does not take (a chunked body, a wrong or missing content type, a body over the limit), which
the route in gateway.api.transactions handles; that route also documents the operation in OpenAPI.
"""

import logging
import time
from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.api.problems import MEDIA_TYPE, RETRY_LATER, problem_body, unavailable_detail
from gateway.api.transactions import answer, count_refusal, is_json
from gateway.errors import DependencyUnavailable, Refused
from gateway.intake.flow import Intake
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.observability import RequestRecorder, request_id_of

PATHS = frozenset({"/api/v1/transactions/", "/api/v1/transactions"})
ROUTE = "/api/v1/transactions"  # the route template, as Litestar labels the same route
_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", MEDIA_TYPE.encode())

log = logging.getLogger("gateway.api.fast_lane")


class FastLane:
    """An ASGI handler in front of Litestar's own (installed by gateway.api.app)."""

    def __init__(
        self, litestar: ASGIApp, metrics: Metrics, recorder: RequestRecorder, max_body: int, retry_after: int
    ) -> None:
        self._litestar = litestar
        self._metrics = metrics
        self._recorder = recorder
        self._max_body = max_body
        self._retry_after = (b"retry-after", str(retry_after).encode())
        self.intake: Intake | None = None  # set when the app has started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"  # type: ignore[typeddict-item]
            or scope["path"] not in PATHS
            or self.intake is None
        ):
            await self._litestar(scope, receive, send)
            return
        content_type = length = key = traceparent = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"idempotency-key":
                key = value
            elif name == b"traceparent":
                traceparent = value
        if (
            length is None
            or not length.isdigit()
            or int(length) > self._max_body
            or content_type is None
            or not is_json(content_type.decode("latin-1"))
        ):
            await self._litestar(scope, receive, send)
            return
        await self._submit(scope, receive, send, key, traceparent)

    async def _submit(
        self, scope: Scope, receive: Receive, send: Send, key: bytes | None, traceparent: bytes | None
    ) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        body = await self._body(receive)
        if body is None:
            return  # the client went away before sending the whole body: nobody to answer
        transaction_id = None
        headers: list[tuple[bytes, bytes]]
        assert self.intake is not None
        try:
            outcome = await self.intake.submit(
                body,
                key.decode("latin-1") if key is not None else None,
                traceparent.decode("latin-1") if traceparent is not None else None,
            )
        except (Refused, DependencyUnavailable) as exc:
            count_refusal(self._metrics, exc)
            if isinstance(exc, Refused):
                status, payload = problem_body(exc.cause, exc.detail, exc.errors)
                retry = exc.cause in RETRY_LATER
            else:
                status, payload = problem_body("dependency-unavailable", unavailable_detail(exc))
                retry = True
            headers = [_PROBLEM, self._retry_after] if retry else [_PROBLEM]
        except Exception:
            log.exception("unhandled error on POST %s", ROUTE)
            status, payload = problem_body("internal-error", "the request could not be processed")
            headers = [_PROBLEM]
        else:
            status, extra = answer(self._metrics, outcome)
            payload, transaction_id = outcome.body, outcome.transaction_id
            headers = [_JSON, *extra]
        headers.append((b"content-length", str(len(payload)).encode()))
        headers.append((b"x-request-id", request_id))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})  # type: ignore[arg-type]
        self._recorder.finish("POST", ROUTE, status, time.perf_counter() - started, request_id.decode(), transaction_id)

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole request body (its declared length is within the limit); None on disconnect."""
        chunks: list[bytes] = []
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
