"""The transport's failures, and the one place they become the gateway's error.

RedisUnavailable means a command may have run (the connection dropped after it was sent, or its reply
was late), so the transport retries nothing and its caller decides; a ReplyError is Redis's own answer.
The store settles what a failure leaves behind while it still holds the transport's error (a
completion sent again, a reservation handed to the in-doubt resolver), then raises `unavailable()`:
its callers never see these classes."""

from settlement.errors import DependencyUnavailable


class RedisError(Exception):
    """Root of the transport's failures."""


class RedisUnavailable(RedisError):
    """The connection is down, could not be made, or a reply did not come in time."""


class ReplyError(RedisError):
    """Redis answered a command with an error (`-ERR ...`)."""


def unavailable(error: RedisError) -> DependencyUnavailable:
    """The gateway's error for a transport failure, as callers above the store see it."""
    return DependencyUnavailable("redis", str(error) or type(error).__name__)
