"""A request as the partner edge reads it: method, the target as received, and its header fields.

Both ways in (the fast lane and Litestar's routes) build the same `Message` from the ASGI scope, so a
credential, a signature and the intake see one value per field whichever way the request took:

- the target is the raw one (`raw_path` and `query_string`, percent-encoding intact), which is what an
  RFC 9421 signer covers with `@path` and `@query`, not the decoded path routing uses;
- a field sent on several lines is combined as RFC 9110 section 5.3 says: each line's value stripped
  of surrounding whitespace, in order, joined by a comma and a space. (Taking the first or the last
  line, as the two ways in used to, let a signature cover one value while the gateway used another.)
"""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple


@functools.lru_cache(maxsize=64)
def _encoded(name: str) -> bytes:
    """A field name as ASGI gives it; the edge asks for a handful of names, each encoded once."""
    return name.encode("latin-1")


class Fields:
    """A request's header fields by lower-case name (ASGI gives the names lower-cased)."""

    __slots__ = ("_combined", "_repeated")

    def __init__(self, lines: Sequence[tuple[bytes, bytes]]) -> None:
        combined = dict(lines)  # each name once: the common case, at C speed
        repeated: dict[bytes, list[bytes]] | None = None
        if len(combined) < len(lines):  # a name on several lines: each line's value, in order
            repeated = {}
            for name, value in lines:
                repeated.setdefault(name, []).append(value.strip(b" \t"))
            repeated = {name: values for name, values in repeated.items() if len(values) > 1}
            for name, values in repeated.items():
                combined[name] = b", ".join(values)
        self._combined = combined
        self._repeated = repeated

    def get(self, name: str) -> str | None:
        """The field's value, its lines combined; None when the request does not carry it. (An HTTP/1.1
        parser hands a line's value without its surrounding whitespace; combined lines were stripped.)"""
        value = self._combined.get(_encoded(name))
        return None if value is None else value.decode("latin-1")

    def lines(self, name: str) -> list[str]:
        """Each line's value of the field, stripped, in order (empty when absent)."""
        key = _encoded(name)
        if self._repeated is not None and key in self._repeated:
            return [value.decode("latin-1") for value in self._repeated[key]]
        value = self._combined.get(key)
        return [] if value is None else [value.decode("latin-1")]

    def size(self, name: str) -> int:
        """The combined value's length in bytes (0 when absent), to bound it before parsing."""
        value = self._combined.get(_encoded(name))
        return 0 if value is None else len(value)


class Message(NamedTuple):
    """What a signature can cover of a request (RFC 9421 section 2), and what the edge reads of it."""

    method: str
    scheme: str  # http or https, as the server saw it
    path: str  # the raw path, percent-encoding intact; "/" for an empty one
    query: str  # the raw query string, without the "?"; "" when there is none
    fields: Fields

    @property
    def target(self) -> str:
        """The request target as sent: path, then "?" and the query when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path


def message_of(scope: Any) -> Message:
    """The Message of an ASGI HTTP scope. Granian gives raw_path without the query, as ASGI says; some
    test transports append it, so anything from a "?" on is cut."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path and b"?" in raw_path:
        raw_path = raw_path.partition(b"?")[0]
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    return Message(
        scope["method"],
        scope.get("scheme", "http"),
        path or "/",
        scope.get("query_string", b"").decode("latin-1"),
        Fields(scope["headers"]),
    )
