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
    "webhook_retry_schedule": "PROCESSOR_WEBHOOK_RETRY_SCHEDULE",
    "webhook_connect_timeout_seconds": "PROCESSOR_WEBHOOK_CONNECT_TIMEOUT_SECONDS",
    "webhook_response_timeout_seconds": "PROCESSOR_WEBHOOK_RESPONSE_TIMEOUT_SECONDS",
    "webhook_concurrency": "PROCESSOR_WEBHOOK_CONCURRENCY",
    "webhook_breaker_failures": "PROCESSOR_WEBHOOK_BREAKER_FAILURES",
    "webhook_breaker_seconds": "PROCESSOR_WEBHOOK_BREAKER_SECONDS",
    "webhook_poll_seconds": "PROCESSOR_WEBHOOK_POLL_SECONDS",
    "webhook_retention_days": "PROCESSOR_WEBHOOK_RETENTION_DAYS",
    "deliver_metrics_port": "PROCESSOR_DELIVER_METRICS_PORT",
}


class ProcessorSettings(SharedSettings, frozen=True, kw_only=True):
    """Every setting of the processor (see VARIABLES for the environment variable of each)."""

    group: str = "settlement-processor"
    close_grace_seconds: int = 60
    poll_records: int = 5000
    tick_seconds: float = 1.0
    metrics_port: int = 9102
    metrics_host: str = "127.0.0.1"
    # the deliverer (python -m processor deliver): the waits after each failed attempt, in seconds (then
    # the delivery fails: 8 attempts over about 27 hours), each drawn within 20% either side (jitter)
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_connect_timeout_seconds: float = 3.0  # resolving the host and connecting to it
    webhook_response_timeout_seconds: float = 10.0  # from the request sent to the response's status line
    webhook_concurrency: int = 4  # deliveries in flight at once to one partner
    webhook_breaker_failures: int = 5  # failed attempts in a row that open a partner's breaker
    webhook_breaker_seconds: float = 30.0  # how long an open breaker waits before it tries one delivery
    webhook_retention_days: float = 30.0  # deliveries that ended are kept this long, attempts with them (0: ever)
    webhook_poll_seconds: float = 0.5  # how often the outbox is read for retries come due (new events wake it)
    deliver_metrics_port: int = 9103  # the deliverer's metrics, /health and /ready (on PROCESSOR_METRICS_HOST)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.close_grace_seconds < 0:
            raise ConfigurationError("PROCESSOR_CLOSE_GRACE_SECONDS must not be negative")
        if not 1 <= self.poll_records <= 100_000:
            raise ConfigurationError("PROCESSOR_POLL_RECORDS must be between 1 and 100000")
        if self.tick_seconds <= 0:
            raise ConfigurationError("PROCESSOR_TICK_SECONDS must be greater than zero")
        _ = self.retry_delays  # validates PROCESSOR_WEBHOOK_RETRY_SCHEDULE
        positive = ("webhook_connect_timeout_seconds", "webhook_response_timeout_seconds", "webhook_breaker_seconds",
                    "webhook_poll_seconds", "webhook_concurrency", "webhook_breaker_failures")  # fmt: skip
        for field in positive:
            if getattr(self, field) <= 0:
                raise ConfigurationError(f"{VARIABLES[field]} must be greater than zero")
        if self.webhook_retention_days < 0:
            raise ConfigurationError("PROCESSOR_WEBHOOK_RETENTION_DAYS must not be negative (0 keeps every delivery)")

    @property
    def retry_delays(self) -> tuple[float, ...]:
        """The wait after each failed attempt of a webhook delivery (seconds), in order."""
        try:
            delays = tuple(float(part) for part in self.webhook_retry_schedule.split(","))
        except ValueError:
            delays = ()
        if not delays or not all(0 <= delay <= 7 * 86_400 for delay in delays):
            raise ConfigurationError(
                "PROCESSOR_WEBHOOK_RETRY_SCHEDULE must be seconds between 0 and a week, separated by commas"
            )
        return delays

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
