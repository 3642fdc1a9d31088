"""Admission: what Redis checks before a partner's request does anything else, a signed request's nonce
and the partner's rate limit (GCRA).

It costs no round trip of its own: the store runs admit.lua at the head of the script that reserves the
submission (gateway.idempotency), taking the `Admission` as its keys and arguments; only a request
that reserves nothing runs it alone (`IdempotencyStore.admit`). The keys carry the partner's own hash
tag, so on a Redis Cluster the check is one script on the partner's slot."""

import hashlib
from typing import Any, NamedTuple


class Admission(NamedTuple):
    """A partner's request as admit.lua checks it: a signed request's nonce, and the partner's GCRA
    limit. Made once per partner when the registry is loaded (a signed request replaces its nonce)."""

    nonce_key: str
    nonce_ttl_ms: int  # 0: not signed
    rate_key: str
    interval_us: float  # 0: unlimited
    burst: int

    @property
    def args(self) -> list[Any]:
        return [self.nonce_ttl_ms, repr(self.interval_us), self.burst]


def rate_key(partner: str) -> str:
    """The Redis key of a partner's GCRA state (its theoretical arrival time)."""
    return f"rate:{{{partner}}}"


def nonce_key(partner: str, nonce: str) -> str:
    """The Redis key remembering a signed request's nonce (its digest: the nonce is the partner's text)."""
    return f"nonce:{{{partner}}}:{hashlib.sha256(nonce.encode()).hexdigest()[:32]}"


def unlimited(partner: str) -> Admission:
    """The admission of a partner with no limit and no signature: the script checks nothing."""
    return Admission(nonce_key(partner, ""), 0, rate_key(partner), 0.0, 1)
