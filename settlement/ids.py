"""Identifiers made on the request path: UUIDv7 (RFC 9562) for events and request ids.

Time-ordered, so Kafka consumers and log readers see them sort by creation, and cheap: the 74
random bits come from a per-process generator seeded from the operating system (reseeded in a
forked child), not from a system call per identifier as `uuid.uuid4()` does. They need to be
unique, not secret.
"""

import os
import random
import time

_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))

_VERSION = 0x7 << 76  # in the 128-bit integer: the version nibble after the 48-bit timestamp
_VARIANT = 0b10 << 62


def uuid7_int() -> int:
    """A UUIDv7 as a 128-bit integer: 48 bits of Unix milliseconds, version, variant, 74 random bits."""
    bits = _random.getrandbits(74)
    return (time.time_ns() // 1_000_000) << 80 | _VERSION | (bits >> 62) << 64 | _VARIANT | (bits & (1 << 62) - 1)


def uuid7() -> str:
    """A UUIDv7 in its canonical text form."""
    h = f"{uuid7_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def request_id() -> str:
    """A fresh request id: a UUIDv7 as 32 hex digits."""
    return f"{uuid7_int():032x}"
