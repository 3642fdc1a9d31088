"""How full Redis is, from INFO memory: the readiness probe's reading and its warning."""

from typing import NamedTuple


class Memory(NamedTuple):
    """Redis's memory as INFO reports it: bytes used, the maxmemory limit (0: none) and its policy."""

    used: int
    limit: int
    policy: str

    @classmethod
    def parse(cls, info: bytes) -> "Memory":
        fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
        return cls(int(fields["used_memory"]), int(fields["maxmemory"]), fields["maxmemory_policy"])

    @property
    def used_ratio(self) -> float:
        """Used over maxmemory; 0 when there is no limit."""
        return self.used / self.limit if self.limit else 0.0

    def warning(self, share: float) -> str | None:
        """Why Redis's memory needs an operator before it refuses submissions, or None.

        Redis holds every idempotency key and transaction id the gateway answers from: full, with the
        noeviction policy, it refuses writes and submissions fail closed (503); with an eviction policy
        it would drop them silently, and a payment could be accepted twice."""
        if self.limit == 0:
            return "Redis has no maxmemory: it grows until the host kills it; set maxmemory and noeviction"
        if self.policy != "noeviction":
            return f"Redis evicts keys (maxmemory-policy {self.policy}): it may drop idempotency state; set noeviction"
        if self.used_ratio >= share:
            return f"Redis memory at {self.used_ratio:.0%} of maxmemory: when full, submissions are refused (503)"
        return None
