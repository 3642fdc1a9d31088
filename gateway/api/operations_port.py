"""The operations listener: Prometheus metrics and liveness on a port of their own, never the partners'.

`/metrics` names every partner and its volumes, so it is served apart from the partner API, on
GATEWAY_OPS_HOST:GATEWAY_OPS_PORT (loopback by default). Every Granian worker runs one listener on its
own event loop, all bound to the same address with SO_REUSEPORT, so whichever worker the kernel hands a
scrape to answers it: the exposition sums every worker's samples, and the worker first publishes its
own tallies, which only its own loop may touch (gateway.telemetry.metrics).

HTTP/1.1 is parsed by h11. A request (line, headers and any body) is at most MAX_REQUEST_BYTES and must
arrive within TIMEOUT seconds, an answer must be taken within as long, and a worker serves at most
MAX_CONNECTIONS at once: a slow or greedy client cannot hold the port.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus

import h11

MAX_REQUEST_BYTES = 8192
TIMEOUT = 5.0  # seconds for a request to arrive (and for a kept-alive connection to send its next one)
MAX_CONNECTIONS = 32  # per worker; one more is closed at once
READ_SIZE = 4096

log = logging.getLogger("gateway")

# A page: its content type and body, made when asked.
Page = Callable[[], tuple[str, bytes]]


class TooLarge(Exception):
    """The request passed MAX_REQUEST_BYTES."""


class OperationsPort:
    """An HTTP/1.1 listener answering GET (and HEAD) of a few fixed paths; 404 for any other path."""

    def __init__(self, pages: Mapping[str, Page], host: str, port: int) -> None:
        self.pages = dict(pages)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The address bound (host, port): the port the kernel chose when GATEWAY_OPS_PORT asked for any."""
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        """Bind (with SO_REUSEPORT: every worker binds the same address) and start serving on this loop."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_port=True)

    async def close(self) -> None:
        """Stop listening and end the connections still open."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections.add(task)
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while True:
                try:
                    async with asyncio.timeout(TIMEOUT):
                        request = await _next_request(reader, connection)
                except TooLarge:
                    # h11 has no answer to give while the request is unparsed: a fixed one, then close
                    status = 431 if connection.their_state is h11.IDLE else 413
                    writer.write(_too_large(status))
                    async with asyncio.timeout(TIMEOUT):
                        await writer.drain()
                    return
                except h11.RemoteProtocolError as exc:
                    await _send(writer, connection, exc.error_status_hint, "text/plain", b"bad request\n", close=True)
                    return
                if request is None:  # the client closed
                    return
                status, content_type, body = self._answer(request)
                close = connection.their_state is h11.MUST_CLOSE
                await _send(writer, connection, status, content_type, body, close, head=request.method == b"HEAD")
                if close or connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (TimeoutError, ConnectionError, h11.ProtocolError):
            pass  # a client too slow, gone, or past answering: nothing to say to it
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, request: h11.Request) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request."""
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        page = self.pages.get(path)
        if page is None:
            return 404, "text/plain", b"not found\n"
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        try:
            content_type, body = page()
        except Exception:
            log.exception("operations: %s failed", path)
            return 500, "text/plain", b"internal error\n"
        return 200, content_type, body


async def _next_request(reader: asyncio.StreamReader, connection: h11.Connection) -> h11.Request | None:
    """The next whole request (its body, if any, read and dropped); None when the client closed."""
    received = 0
    request: h11.Request | None = None
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_SIZE)
            received += len(data)
            if received > MAX_REQUEST_BYTES:
                raise TooLarge
            connection.receive_data(data)  # b"": the client closed
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        # h11.Data: a body no page reads; counted above, dropped here


async def _send(
    writer: asyncio.StreamWriter,
    connection: h11.Connection,
    status: int,
    content_type: str,
    body: bytes,
    close: bool,
    head: bool = False,
) -> None:
    """One answer; `close`: say so, and the connection ends after it; `head`: the headers alone."""
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    if status == 405:
        headers.append(("allow", "GET, HEAD"))
    if close:
        headers.append(("connection", "close"))
    reason = HTTPStatus(status).phrase.encode()
    writer.write(connection.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b"")
    if not head:
        writer.write(connection.send(h11.Data(data=body)) or b"")
    writer.write(connection.send(h11.EndOfMessage()) or b"")
    async with asyncio.timeout(TIMEOUT):
        await writer.drain()


def _too_large(status: int) -> bytes:
    phrase = HTTPStatus(status).phrase
    return f"HTTP/1.1 {status} {phrase}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
