"""One attempt to deliver one event: sign the body as Standard Webhooks says and POST it to the
partner's URL over a connection to an address checked when the connection was made.

    webhook-id         the event's id, the same on every attempt (the partner's deduplication key)
    webhook-timestamp  this attempt's Unix seconds (the receiver refuses one too old or too new)
    webhook-signature  v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>" under the partner's secret>

The registry's URLs were checked at load, but a DNS answer may change since (DNS rebinding): each
partner's connections are made by a connector whose resolver resolves the host anew, with no cache,
and refuses it when any address it resolves to is one the subscription does not allow; the connection
goes to an address that resolver returned, never to a second lookup's. An address in the URL itself is
checked before the request.

A 2xx answer delivers it; anything else, a timeout or no connection is a failed attempt that says why.
The answer's body is read and dropped, up to 64 KiB (so the connection is kept for the next attempt);
a longer one closes the connection instead (a receiver cannot make the deliverer read its megabytes).

aiohttp rather than httpx: 92 against 1,284 µs of CPU per request to a loopback receiver (4,000 POSTs,
16 at a time; the measurement is in issue 27's note), and the deliverer spends most of its time there.
"""

import ipaddress
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook

from settlement.webhooks import Subscription, refused_address

USER_AGENT = "settlement-gateway-webhooks/1"
BODY_LIMIT = 64 * 1024  # of an answer's body read (and dropped) to keep its connection


class Attempt(NamedTuple):
    """How one attempt ended: `outcome` is delivered, status (the receiver's non-2xx answer), timeout,
    unreachable, refused-address, or error (a fault of the deliverer's own, logged)."""

    outcome: str
    status_code: int | None
    detail: str
    started_at: datetime
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(milliseconds=self.duration_ms)


class AddressRefused(OSError):
    """The host resolves to an address the subscription does not allow (or to none)."""


def signed_headers(subscription: Subscription, event_id: str, body: str, at: float) -> dict[str, str]:
    """The Standard Webhooks headers of `body` sent at Unix time `at`."""
    signature = Webhook(subscription.secret).sign(event_id, datetime.fromtimestamp(int(at), UTC), body)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at)),
        "webhook-signature": signature,
    }


def _refusal(host: str, addresses: list[str], allow_private_network: bool) -> str | None:
    """Why a connection to `host` at `addresses` must not be made, or None."""
    if not addresses:
        return f"{host} resolves to no address"
    if allow_private_network:
        return None
    for text in addresses:
        reason = refused_address(ipaddress.ip_address(text.split("%")[0]))
        if reason is not None:
            return f"{host} resolves to {text}, {reason}"
    return None


class CheckingResolver(AbstractResolver):
    """The system's resolver, refusing a host any of whose addresses the subscription does not allow."""

    def __init__(self, allow_private_network: bool) -> None:
        self._allow = allow_private_network
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await self._resolver.resolve(host, port, family)
        except OSError as exc:
            raise AddressRefused(f"{host} does not resolve: {exc}") from None
        reason = _refusal(host.rstrip(".").lower(), [r["host"] for r in found], self._allow)
        if reason is not None:
            raise AddressRefused(reason)
        return found

    async def close(self) -> None:
        await self._resolver.close()


def literal_refusal(subscription: Subscription) -> str | None:
    """Why the address written in the subscription's URL must not be connected to (None when the URL
    names a host, which the resolver checks, or an address allowed)."""
    host = (urlsplit(subscription.url).hostname or "").rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return _refusal(host, [host], subscription.allow_private_network)


class Sender:
    """Sends one partner's attempts over a pool of its own (at most `concurrency` connections), made by a
    CheckingResolver; `connect` bounds resolving and connecting, `response` the wait for the answer."""

    def __init__(self, subscription: Subscription, concurrency: int, connect: float, response: float) -> None:
        self.subscription = subscription
        self.in_flight = 0  # attempts under way
        self._timeout = aiohttp.ClientTimeout(total=connect + response, sock_connect=connect, sock_read=response)
        connector = aiohttp.TCPConnector(
            limit=concurrency, use_dns_cache=False, resolver=CheckingResolver(subscription.allow_private_network)
        )
        # no proxy from the environment (the default): the connection goes to the address checked
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        await self._session.close()

    async def attempt(self, event_id: str, body: str) -> Attempt:
        """POST `body` to the partner, signed; how it went (never raises for the receiver's faults)."""
        self.in_flight += 1
        try:
            return await self._attempt(event_id, body)
        finally:
            self.in_flight -= 1

    async def _attempt(self, event_id: str, body: str) -> Attempt:
        started, clock = datetime.now(UTC), time.monotonic()

        def ended(outcome: str, detail: str, status: int | None = None) -> Attempt:
            text = detail.replace("\x00", "")[:500]  # PostgreSQL's text holds no NUL
            return Attempt(outcome, status, text, started, round((time.monotonic() - clock) * 1000))

        refusal = literal_refusal(self.subscription)
        if refusal is not None:
            return ended("refused-address", refusal)
        headers = signed_headers(self.subscription, event_id, body, time.time())
        try:
            async with self._session.post(
                self.subscription.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                await _discard(response)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return ended("timeout", f"no answer in time ({type(exc).__name__})")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                return ended("refused-address", str(exc.os_error))
            return ended("unreachable", f"{type(exc).__name__}: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return ended("unreachable", f"{type(exc).__name__}: {exc}")
        if 200 <= response.status < 300:
            return ended("delivered", f"HTTP {response.status}", response.status)
        return ended("status", f"HTTP {response.status}", response.status)


async def _discard(response: aiohttp.ClientResponse) -> None:
    """Read the answer's body to its end (so the connection serves the next attempt), unless it is longer
    than BODY_LIMIT: then it is left unread, and the connection is closed with the response."""
    read = 0
    while read <= BODY_LIMIT:
        chunk = await response.content.read(BODY_LIMIT)
        if not chunk:
            return
        read += len(chunk)
    response.close()
