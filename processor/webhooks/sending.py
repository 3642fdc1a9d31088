"""One attempt to deliver one event: resolve the partner's host and check every address again (the
registry was checked at load, but a DNS answer may change since: DNS rebinding), connect to the address
checked (never to a second lookup's), sign the body as Standard Webhooks says and POST it.

    webhook-id         the event's id, the same on every attempt (the partner's deduplication key)
    webhook-timestamp  this attempt's Unix seconds (the receiver refuses one too old or too new)
    webhook-signature  v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>" under the partner's secret>

A 2xx answer delivers it; anything else, a timeout or no connection is a failed attempt that says why.
The response's body is never read (a receiver cannot make the deliverer hold its megabytes).
"""

import asyncio
import ipaddress
import socket
import time
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from settlement.webhooks import LOOPBACK_NAMES, Subscription, refused_address

USER_AGENT = "settlement-gateway-webhooks/1"


class Attempt(NamedTuple):
    """How one attempt ended: `outcome` is delivered, status (the receiver's non-2xx answer), timeout,
    unreachable or refused-address."""

    outcome: str
    status_code: int | None
    detail: str
    started_at: datetime
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


class AddressRefused(Exception):
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


async def checked_address(subscription: Subscription, timeout: float) -> str:
    """The address to connect to for the subscription's URL, resolved now; AddressRefused when the host
    does not resolve or any address it resolves to is one the subscription does not allow."""
    parts = urlsplit(subscription.url)
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        loop = asyncio.get_running_loop()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise AddressRefused(f"{host} does not resolve: {exc or 'timed out'}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise AddressRefused(f"{host} resolves to no address")
    if not subscription.allow_private_network and host not in LOOPBACK_NAMES:
        for address in addresses:
            reason = refused_address(address)
            if reason is not None:
                raise AddressRefused(f"{host} resolves to {address}, {reason}")
    return str(addresses[0])


def _pinned(url: str, address: str) -> str:
    """`url` with its host replaced by `address` (the Host header and TLS keep the name)."""
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


class Sender:
    """Sends attempts over one pool of connections; `connect` bounds resolving and connecting, `response`
    the wait from the request sent to the answer's status line."""

    def __init__(self, connect: float, response: float) -> None:
        self._connect, self._response = connect, response
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(response, connect=connect),
            follow_redirects=False,  # a redirect is a failed attempt: it would lead past the address check
            trust_env=False,  # no proxy from the environment: the connection goes to the address checked
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def attempt(self, subscription: Subscription, event_id: str, body: str) -> Attempt:
        """POST `body` to the partner, signed; how it went (never raises for the receiver's faults)."""
        started, clock = datetime.now(UTC), time.monotonic()

        def ended(outcome: str, detail: str, status: int | None = None) -> Attempt:
            return Attempt(outcome, status, detail[:500], started, round((time.monotonic() - clock) * 1000))

        try:
            address = await checked_address(subscription, self._connect)
        except AddressRefused as exc:
            return ended("refused-address", str(exc))
        parts = urlsplit(subscription.url)
        headers = signed_headers(subscription, event_id, body, time.time())
        headers["host"] = parts.netloc.rpartition("@")[2]
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        request = self._client.build_request(
            "POST", _pinned(subscription.url, address), content=body.encode(), headers=headers, extensions=extensions
        )
        try:
            async with asyncio.timeout(self._connect + self._response):
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            return ended("timeout", f"no answer in time ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return ended("unreachable", f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return ended("delivered", f"HTTP {response.status_code}", response.status_code)
        return ended("status", f"HTTP {response.status_code}", response.status_code)
