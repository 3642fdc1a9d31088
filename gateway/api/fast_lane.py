"""The fast lane: well-formed transaction submissions answered at the ASGI edge, before Litestar.

A JSON POST to /api/v1/transactions/ (or /bulk) with a declared Content-Length within the limit is
nearly every request the gateway gets. Litestar's routing, request and response objects and
middleware cost about as much as validating, routing and de-duplicating the transaction, so that request goes from the
ASGI scope straight to the Intake and back as two ASGI messages, with the same observability as the
rest (request id, duration histogram, access line) and the same answers.

Both this lane and the route in gateway.api.transactions hand the submission to the same edge
(gateway.api.edge: identify, limit, intake, answer), so every answer is decided once. Everything else
continues to Litestar unchanged: other paths and methods, and the submissions the lane does not take
(a chunked body, a body over the limit), which the route handles; it also documents the operation.
"""

import time
from typing import Any

from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.api.edge import Edge
from gateway.partners.message import message_of
from gateway.telemetry.observability import RequestRecorder, request_id_of

# path -> (the route template, as Litestar labels the same route; bulk or not)
LANES = {
    "/api/v1/transactions/": ("/api/v1/transactions", False),
    "/api/v1/transactions": ("/api/v1/transactions", False),
    "/api/v1/transactions/bulk": ("/api/v1/transactions/bulk", True),
}


class FastLane:
    """An ASGI handler in front of Litestar's own (installed by gateway.api.app)."""

    def __init__(self, litestar: ASGIApp, recorder: RequestRecorder, max_body: int, bulk_max_body: int) -> None:
        self._litestar = litestar
        self._recorder = recorder
        self._max_body = (max_body, bulk_max_body)
        self.edge: Edge | None = None  # set when the app has started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = LANES.get(scope["path"]) if scope["type"] == "http" else None
        if lane is None or scope["method"] != "POST" or self.edge is None:  # type: ignore[typeddict-item]
            await self._litestar(scope, receive, send)
            return
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
                break
        if length is None or not length.isdigit() or int(length) > self._max_body[lane[1]]:
            await self._litestar(scope, receive, send)
            return
        await self._submit(scope, receive, send, *lane)

    async def _submit(self, scope: Scope, receive: Receive, send: Send, route: str, bulk: bool) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        body = await self._body(receive)
        if body is None:
            return  # the client went away before sending the whole body: nobody to answer
        assert self.edge is not None
        answer = await self.edge.submit(message_of(scope), body, bulk)
        response_headers = answer.headers.copy()
        response_headers.append((b"content-length", str(len(answer.body)).encode()))
        response_headers.append((b"x-request-id", request_id))
        await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": answer.body})  # type: ignore[arg-type]
        self._recorder.finish(
            "POST",
            route,
            answer.status,
            time.perf_counter() - started,
            request_id.decode(),
            answer.transaction_id,
            answer.partner,
        )

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
