"""The processor's settings: the shared ones (settlement.settings: GATEWAY_KAFKA_BOOTSTRAP,
GATEWAY_TOPIC_PREFIX, GATEWAY_TOPIC_REPLICATION, GATEWAY_DATABASE_URL, GATEWAY_DATABASE_SCHEMA,
GATEWAY_RULES_PATH, GATEWAY_FIXED_TIME, GATEWAY_LOG_LEVEL), its own from PROCESSOR_*. Read once,
validated at start-up."""

from collections.abc import Mapping

from settlement.errors import ConfigurationError
from settlement.settings import SharedSettings, read_environment, shared_variables

WINDOWS = ("rtgs", "t0", "t1")

# field -> environment variable
VARIABLES = {
    **shared_variables(),
    "group": "PROCESSOR_GROUP",
    "close_grace_seconds": "PROCESSOR_CLOSE_GRACE_SECONDS",
    "poll_records": "PROCESSOR_POLL_RECORDS",
    "tick_seconds": "PROCESSOR_TICK_SECONDS",
    "metrics_port": "PROCESSOR_METRICS_PORT",
    "metrics_host": "PROCESSOR_METRICS_HOST",
}


class ProcessorSettings(SharedSettings, frozen=True, kw_only=True):
    """Every setting of the processor (see VARIABLES for the environment variable of each)."""

    group: str = "settlement-processor"
    close_grace_seconds: int = 60
    poll_records: int = 5000
    tick_seconds: float = 1.0
    metrics_port: int = 9102
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.close_grace_seconds < 0:
            raise ConfigurationError("PROCESSOR_CLOSE_GRACE_SECONDS must not be negative")
        if not 1 <= self.poll_records <= 100_000:
            raise ConfigurationError("PROCESSOR_POLL_RECORDS must be between 1 and 100000")
        if self.tick_seconds <= 0:
            raise ConfigurationError("PROCESSOR_TICK_SECONDS must be greater than zero")

    @property
    def topics(self) -> list[str]:
        """The window topics the processor folds."""
        return [self.topic(window) for window in WINDOWS]

    @property
    def batches_topic(self) -> str:
        """Where BatchClosed and BatchSettled go."""
        return self.topic("batches")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ProcessorSettings":
        """Read the variables; ConfigurationError names the first bad one."""
        return read_environment(cls, VARIABLES, environ)
