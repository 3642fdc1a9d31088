"""The settings base: what the gateway and the processor both read, validated once at start-up.

Both processes of one deployment share these variables under the names they have always had
(GATEWAY_KAFKA_BOOTSTRAP, GATEWAY_TOPIC_PREFIX, ...): one name per fact, whichever process reads it.
Each side's settings Struct inherits `SharedSettings` and adds its own fields and variables.
"""

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from settlement.errors import ConfigurationError

SHARED_PREFIX = "GATEWAY_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SharedSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The settings both sides read; each field is the environment variable GATEWAY_<FIELD>."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = "settlement."
    topic_replication: int = 1
    # the processor's PostgreSQL: it writes the ledger there, the status API reads it (the local
    # stack's adds its password)
    database_url: str = "postgresql://settlement@127.0.0.1:15432/settlement"
    database_schema: str = "settlement"
    rules_path: str = ""
    fixed_time: str = ""
    log_level: str = "INFO"
    # the partner registry (TOML): the gateway admits its partners, the processor writes the webhook
    # events they subscribed to, the deliverer sends them; empty: open mode, nobody subscribed
    partners_file: str = ""

    def __post_init__(self) -> None:
        p = SHARED_PREFIX
        if self.topic_replication <= 0:
            raise ConfigurationError(f"{p}TOPIC_REPLICATION must be greater than zero")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(f"{p}DATABASE_URL must be a postgresql:// URL")
        if not self.database_schema.isidentifier() or self.database_schema.lower() != self.database_schema:
            raise ConfigurationError(f"{p}DATABASE_SCHEMA must be a lower-case SQL identifier")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigurationError(f"{p}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        self.fixed_epoch()  # validates GATEWAY_FIXED_TIME

    def fixed_epoch(self) -> float | None:
        """GATEWAY_FIXED_TIME (an ISO-8601 instant with its offset) as Unix seconds; None when unset."""
        if not self.fixed_time:
            return None
        try:
            instant = datetime.fromisoformat(self.fixed_time)
        except ValueError:
            raise ConfigurationError(
                f"{SHARED_PREFIX}FIXED_TIME {self.fixed_time!r} is not an ISO-8601 instant"
            ) from None
        if instant.tzinfo is None:
            raise ConfigurationError(f"{SHARED_PREFIX}FIXED_TIME must carry its UTC offset (e.g. 2026-06-19T15:00:00Z)")
        return instant.timestamp()

    def clock(self) -> Callable[[], float]:
        """The clock of routing and of the batch lifecycle: pinned to GATEWAY_FIXED_TIME when set (tests
        drive a batch through its life), else the real one."""
        fixed = self.fixed_epoch()
        return time.time if fixed is None else (lambda: fixed)

    def rules_file(self) -> Path | None:
        """GATEWAY_RULES_PATH, or None for the shipped default rules."""
        return Path(self.rules_path) if self.rules_path else None

    def topic(self, window: str) -> str:
        """The Kafka topic of a settlement window."""
        return f"{self.topic_prefix}{window}"


def shared_variables() -> dict[str, str]:
    """Field -> environment variable of every shared setting."""
    return {name: SHARED_PREFIX + name.upper() for name in SharedSettings.__struct_fields__}


T = TypeVar("T", bound=msgspec.Struct)


def read_environment(cls: type[T], variables: Mapping[str, str], environ: Mapping[str, str] | None = None) -> T:
    """A settings Struct from the environment: `variables` maps each field to its variable. A bad value
    raises ConfigurationError naming the variable (msgspec's `$.field`, said in the operator's words)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {field: environ[name] for field, name in variables.items() if name in environ}
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for field in values:
            message = message.replace(f"`$.{field}`", variables[field])
        raise ConfigurationError(message) from None
