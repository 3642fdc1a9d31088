"""Structured logs: one JSON object per line (structlog over the standard library's logging).

Every logger of the process, ours, librdkafka's and the frameworks', goes through the same JSON
formatter. Values of keys that name an account are masked, so identifiers never appear in full.
"""

import asyncio
import logging
import os
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from structlog.typing import Processor

_ACCOUNT_VISIBLE = 4


def mask(identifier: str) -> str:
    """All but the last four characters replaced: `acct_usa_88` becomes `*******a_88`."""
    if len(identifier) <= _ACCOUNT_VISIBLE:
        return "*" * len(identifier)
    return "*" * (len(identifier) - _ACCOUNT_VISIBLE) + identifier[-_ACCOUNT_VISIBLE:]


def mask_accounts(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask every value whose key mentions an account."""
    for key, value in event.items():
        if "account" in key and isinstance(value, str):
            event[key] = mask(value)
    return event


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    mask_accounts,
]


def configure_logging(level: str) -> None:
    """Route all logging of the process to stdout as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


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
