"""The transport's failures, and the one place they become the gateway's error.

Inside the store the two kinds differ: a command that met RedisUnavailable may have run (the
connection dropped after it was sent, or its reply was late), so what it reserved may be held; a
ReplyError is Redis's own answer, so the command ran and said no. The store acts on that difference
(completions sent again, reservations handed to the in-doubt resolver) and then raises `unavailable()`
to its callers, which never see the transport's classes."""

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
