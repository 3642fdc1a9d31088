"""The processor's settings: what it shares with the gateway comes from the gateway's variables
(GATEWAY_KAFKA_BOOTSTRAP, GATEWAY_TOPIC_PREFIX, GATEWAY_DATABASE_URL, GATEWAY_DATABASE_SCHEMA,
GATEWAY_RULES_PATH, GATEWAY_FIXED_TIME, GATEWAY_LOG_LEVEL), its own from PROCESSOR_*. Read once,
validated at start-up."""

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import msgspec

from gateway.errors import ConfigurationError
from gateway.settings import read_environment

WINDOWS = ("rtgs", "t0", "t1")

# field -> environment variable
VARIABLES = {
    "kafka_bootstrap": "GATEWAY_KAFKA_BOOTSTRAP",
    "topic_prefix": "GATEWAY_TOPIC_PREFIX",
    "topic_replication": "GATEWAY_TOPIC_REPLICATION",
    "database_url": "GATEWAY_DATABASE_URL",
    "rules_path": "GATEWAY_RULES_PATH",
    "fixed_time": "GATEWAY_FIXED_TIME",
    "log_level": "GATEWAY_LOG_LEVEL",
    "group": "PROCESSOR_GROUP",
    "schema": "GATEWAY_DATABASE_SCHEMA",
    "close_grace_seconds": "PROCESSOR_CLOSE_GRACE_SECONDS",
    "poll_records": "PROCESSOR_POLL_RECORDS",
    "tick_seconds": "PROCESSOR_TICK_SECONDS",
    "metrics_port": "PROCESSOR_METRICS_PORT",
    "metrics_host": "PROCESSOR_METRICS_HOST",
}


class ProcessorSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the processor (see VARIABLES for the environment variable of each)."""

    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = "settlement."
    topic_replication: int = 1
    database_url: str = "postgresql://settlement@127.0.0.1:15432/settlement"
    rules_path: str = ""
    fixed_time: str = ""
    log_level: str = "INFO"
    group: str = "settlement-processor"
    schema: str = "settlement"
    close_grace_seconds: int = 60
    poll_records: int = 5000
    tick_seconds: float = 1.0
    metrics_port: int = 9102
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.close_grace_seconds < 0:
            raise ConfigurationError("PROCESSOR_CLOSE_GRACE_SECONDS must not be negative")
        if not 1 <= self.poll_records <= 100_000:
            raise ConfigurationError("PROCESSOR_POLL_RECORDS must be between 1 and 100000")
        if self.topic_replication <= 0:
            raise ConfigurationError("GATEWAY_TOPIC_REPLICATION must be greater than zero")
        if self.tick_seconds <= 0:
            raise ConfigurationError("PROCESSOR_TICK_SECONDS must be greater than zero")
        if not self.schema.isidentifier() or self.schema.lower() != self.schema:
            raise ConfigurationError("GATEWAY_DATABASE_SCHEMA must be a lower-case SQL identifier")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("GATEWAY_DATABASE_URL must be a postgresql:// URL")
        self.clock()  # validates GATEWAY_FIXED_TIME

    @property
    def topics(self) -> list[str]:
        """The window topics the processor folds."""
        return [f"{self.topic_prefix}{window}" for window in WINDOWS]

    @property
    def batches_topic(self) -> str:
        """Where BatchClosed and BatchSettled go."""
        return f"{self.topic_prefix}batches"

    def clock(self) -> Callable[[], float]:
        """The processor's clock: GATEWAY_FIXED_TIME when set (tests drive a batch through its life),
        else the real one."""
        if not self.fixed_time:
            return time.time
        try:
            instant = datetime.fromisoformat(self.fixed_time)
        except ValueError:
            raise ConfigurationError(f"GATEWAY_FIXED_TIME {self.fixed_time!r} is not an ISO-8601 instant") from None
        if instant.tzinfo is None:
            raise ConfigurationError("GATEWAY_FIXED_TIME must carry its UTC offset")
        fixed = instant.timestamp()
        return lambda: fixed

    def rules_file(self) -> Path | None:
        return Path(self.rules_path) if self.rules_path else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ProcessorSettings":
        """Read the variables; ConfigurationError names the first bad one."""
        return read_environment(cls, VARIABLES, environ)
