"""A partner's circuit breaker: after `failures` failed attempts in a row its endpoint is left alone for
`cool_down` seconds (doubling while it keeps failing, up to `longest`), then one delivery tries it
(half-open); a success closes it. Open, the partner's events stay due in the outbox: they wait without
spending attempts, and no other partner's deliveries wait for them."""

import time
from collections.abc import Callable


class Breaker:
    def __init__(
        self, failures: int, cool_down: float, longest: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._failures, self._cool_down, self._longest, self._clock = failures, cool_down, longest, clock
        self._in_a_row = 0
        self._opened = 0  # times opened without a success between
        self._until = 0.0

    @property
    def open(self) -> bool:
        """Open: no attempt now."""
        return self._clock() < self._until

    def allowance(self, concurrency: int) -> int:
        """How many deliveries may be in flight now: none while open, one while half-open (the cool-down
        over after failures), else `concurrency`."""
        if self.open:
            return 0
        return 1 if self._in_a_row >= self._failures else concurrency

    def succeeded(self) -> None:
        self._in_a_row = self._opened = 0
        self._until = 0.0

    def failed(self) -> None:
        self._in_a_row += 1
        if self._in_a_row >= self._failures:
            wait = min(self._cool_down * 2**self._opened, self._longest)
            self._opened += 1
            self._until = self._clock() + wait
