"""Structured logs of both processes: one JSON object per line (structlog over the standard library's
logging).

Every logger of the process, ours, librdkafka's and the frameworks', goes through the same JSON
formatter. Values of keys that name an account are masked, so identifiers never appear in full.
"""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

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
