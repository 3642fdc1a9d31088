"""The gateway's access log: one JSON line per request, written in batches off the request path (the
process's other logs are settlement.logs')."""

import asyncio
import logging
import os
from datetime import UTC, datetime

import msgspec


class AccessLog:
    """One JSON line per request, in the same shape as every other log line, without the cost of
    the logging machinery on the hot path: lines of one event-loop tick go out in one write.

    Each write holds whole lines and stays under PIPE_BUF, so the lines of several workers sharing
    one pipe never interleave mid-line."""

    _CHUNK = 3584  # below PIPE_BUF (4096): a write of this size to a pipe is atomic

    def __init__(self, enabled: bool, fd: int = 1) -> None:
        self.enabled = enabled and logging.getLogger("gateway.access").isEnabledFor(logging.INFO)
        self._fd = fd
        self._lines: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._encode = msgspec.json.Encoder().encode

    def request(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        request_id: str,
        transaction_id: str | None,
        partner: str | None = None,
    ) -> None:
        """Log one finished request (call from the event loop)."""
        line = self._encode(
            {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
                "request_id": request_id,
                "partner": partner,
                "transaction_id": transaction_id,
                "event": "request",
                "logger": "gateway.access",
                "level": "info",
                "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        )
        self._lines.append(line + b"\n")
        self._size += len(line) + 1
        if self._size >= self._CHUNK:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what is buffered, in chunks of whole lines below PIPE_BUF."""
        self._scheduled = False
        chunk: list[bytes] = []
        size = 0
        for line in self._lines:
            if chunk and size + len(line) > self._CHUNK:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))
        self._lines.clear()
        self._size = 0

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # stdout gone (the supervisor closed it): losing access lines must not fail requests
