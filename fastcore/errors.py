"""fastcore's errors. One root; no HTTP here, the gateway maps them at its edge."""


class FastcoreError(Exception):
    """Root of every error fastcore raises."""


class PolicyError(FastcoreError, ValueError):
    """The validation or routing configuration is unusable (raised at start-up, never per request)."""


class ValidationFailed(FastcoreError, ValueError):
    """A transaction broke one or more rules; `errors` lists every one as (field, code, message)."""

    def __init__(self, errors: list[tuple[str, str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, _, message in errors))
        self.errors = errors


class RoutingUnavailable(FastcoreError):
    """The router cannot decide: the instant or the value date lies beyond the compiled calendars."""
