"""The error root shared by the gateway and the processor. No HTTP status codes here: the gateway maps
errors to answers in `gateway.api.problems`, the processor to its exit codes and logs."""


class SettlementError(Exception):
    """Root of every error the gateway and the processor raise on purpose."""


class ConfigurationError(SettlementError):
    """A setting is missing or invalid; start-up stops with this message."""


class DependencyUnavailable(SettlementError):
    """Redis, Kafka or PostgreSQL cannot take the request now; the caller should retry later."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail
