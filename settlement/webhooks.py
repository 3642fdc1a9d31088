"""Webhook subscriptions: where a partner wants to hear what became of its payments, read from the partner
registry's `[partners.<id>.webhook]` table and checked once, at load.

    [partners.acme.webhook]
    url = "https://hooks.acme.example/settlement"
    secret_env = "ACME_WEBHOOK_SECRET"     # or secret = "whsec_..." (Standard Webhooks: base64 of 24-64 bytes)
    events = ["transaction.batched", "transaction.settled"]   # optional: every event type when absent
    allow_private_network = false          # optional: true lets the URL name a private or link-local address

The destination is where a delivery would send the partner's payments, so a registry entry must not turn
the deliverer into a client of the internal network (server-side request forgery): `https` is required
except on loopback (an address or `localhost`), and a URL whose host is, or resolves to, a private,
link-local, shared, reserved, multicast or unspecified address is refused unless the subscription says
`allow_private_network = true`. The gateway resolves names at load (a name that does not resolve then
is accepted: a partner's DNS outage must not stop it); the deliverer resolves and checks them again at
every connection it makes (an answer of the DNS may change).

The gateway's registry (gateway.partners.registry) parses the table with these functions; what delivers
reads the same file. Both sides of the deployment share it, so it lives in the core.
"""

import base64
import binascii
import ipaddress
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import rtoml

from settlement.errors import ConfigurationError

EVENT_TYPES = frozenset(
    {
        "transaction.batched",  # folded into its batch
        "transaction.settled",
        "transaction.moved",  # read after its batch closed: it settles in the next batch (the late path)
        "transaction.conflict",  # another instruction under the same transaction id, refused after its 202
        "batch.closed",  # the partner's share of a batch frozen at its cut-off
        "batch.settled",
    }
)
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # Standard Webhooks: a secret of 24 to 64 random bytes, base64 after the prefix
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})

# host, port -> the addresses it resolves to (socket.getaddrinfo's shape, reduced to the address text)
Resolver = Callable[[str, int], list[str]]


class InvalidSubscription(ValueError):
    """A webhook table that cannot be used; `setting` names the entry at fault (for the file's line)."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class Subscription(NamedTuple):
    """One partner's webhook: where, signed with what, for which event types."""

    partner: str
    url: str
    secret: bytes  # the raw signing key (the bytes after `whsec_`, decoded)
    events: frozenset[str]
    allow_private_network: bool


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to now; none when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a delivery must not connect to `address` (unless the subscription allows private networks),
    or None. Loopback is allowed: a receiver on the same machine is the operator's own."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.IPv4Network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a reserved address"
    return None


def check_destination(url: str, allow_private_network: bool, resolve: Resolver | None = system_resolver) -> None:
    """Refuse a webhook URL that is not https (loopback aside), has no host, carries credentials, or
    reaches an address `refused_address` refuses (a name: every address it resolves to now; none with
    `resolve` None, whose caller checks at connection time); InvalidSubscription says why."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidSubscription(f"url {url!r} is not a URL ({exc})", "url") from None
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidSubscription(f"url {url!r} must be an https:// URL with a host", "url")
    if parts.username is not None or parts.password is not None:
        raise InvalidSubscription("url must not carry credentials: the signature authenticates", "url")
    if parts.fragment:
        raise InvalidSubscription("url must not carry a fragment", "url")
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    loopback = host in LOOPBACK_NAMES or (literal is not None and literal.is_loopback)
    if parts.scheme != "https" and not loopback:
        raise InvalidSubscription(f"url {url!r} must be https (plain http is for loopback receivers only)", "url")
    # A name that does not resolve now is no reason to refuse the registry (a partner's DNS outage must
    # not stop the gateway): the deliverer resolves and checks every connection it makes.
    if literal is not None:
        addresses = [literal]
    else:
        addresses = [] if resolve is None else [ipaddress.ip_address(a) for a in resolve(host, port)]
    if allow_private_network:
        return
    for address in addresses:
        reason = refused_address(address)
        if reason is not None:
            raise InvalidSubscription(
                f"url {url!r} reaches {address}, {reason}: set allow_private_network = true to allow it", "url"
            )


def signing_secret(text: Any) -> bytes:
    """The raw key of a Standard Webhooks secret (`whsec_` and the base64 of 24 to 64 bytes)."""
    if not isinstance(text, str) or not text.startswith(SECRET_PREFIX):
        raise InvalidSubscription(
            f"the webhook secret must be {SECRET_PREFIX} and base64 (python -m gateway new-webhook-secret makes one)",
            "secret",
        )
    try:
        raw = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSubscription("the webhook secret after whsec_ is not base64", "secret") from None
    low, high = SECRET_BYTES
    if not low <= len(raw) <= high:
        raise InvalidSubscription(f"the webhook secret must hold {low} to {high} bytes, not {len(raw)}", "secret")
    return raw


def new_secret() -> str:
    """A fresh Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_subscription(
    partner: str, table: Any, environ: Mapping[str, str], resolve: Resolver | None = system_resolver
) -> Subscription:
    """A partner's `webhook` table as a Subscription; InvalidSubscription names the setting at fault."""
    if not isinstance(table, dict):
        raise InvalidSubscription(f"webhook of {partner} must be a table", "webhook")
    unknown = set(table) - {"url", "secret", "secret_env", "events", "allow_private_network"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidSubscription(f"unknown setting {name!r} of the webhook of {partner}", name)
    url = table.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidSubscription(f"the webhook of {partner} needs a url", "url")
    allow = table.get("allow_private_network", False)
    if not isinstance(allow, bool):
        raise InvalidSubscription("allow_private_network must be true or false", "allow_private_network")
    check_destination(url, allow, resolve)
    if ("secret" in table) == ("secret_env" in table):
        raise InvalidSubscription(f"give the webhook of {partner} secret or secret_env (one of them)", "secret")
    if "secret_env" in table:
        variable = table["secret_env"]
        text = environ.get(variable) if isinstance(variable, str) else None
        if not text:
            raise InvalidSubscription(f"secret_env names {variable!r}, which is not set", "secret_env")
    else:
        text = table["secret"]
    events = table.get("events", sorted(EVENT_TYPES))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidSubscription("events must be a non-empty list of event types", "events")
    unknown_events = sorted(set(events) - EVENT_TYPES)
    if unknown_events:
        raise InvalidSubscription(
            f"unknown event type {unknown_events[0]!r} (known: {', '.join(sorted(EVENT_TYPES))})", "events"
        )
    return Subscription(partner, url, signing_secret(text), frozenset(events), allow)


def _webhook_tables(path: str) -> dict[str, Any]:
    """Partner id -> its webhook table, from the registry file at `path`; ConfigurationError when the
    file cannot be read. The gateway's registry checks the rest of the file (and says on which line)."""
    try:
        with open(path, encoding="utf-8") as file:
            document = rtoml.load(file)
    except (OSError, UnicodeDecodeError, rtoml.TomlParsingError) as exc:
        raise ConfigurationError(f"the partner registry {path} cannot be read: {exc}") from None
    partners = document.get("partners") if isinstance(document, dict) else None
    if not isinstance(partners, dict):
        return {}
    return {
        partner: table["webhook"]
        for partner, table in partners.items()
        if isinstance(table, dict) and "webhook" in table
    }


def load_subscriptions(
    path: str, environ: Mapping[str, str], resolve: Resolver | None = None
) -> tuple[dict[str, Subscription], dict[str, str]]:
    """Every partner's subscription in the registry at `path` (none when `path` is empty), checked as the
    gateway checks them but each on its own, and the partners refused with why: one partner's fault
    (a secret_env not set) leaves the others delivered. ConfigurationError when the file cannot be read."""
    subscriptions, refused = {}, {}
    for partner, table in (_webhook_tables(path) if path else {}).items():
        try:
            subscriptions[partner] = parse_subscription(partner, table, environ, resolve)
        except InvalidSubscription as exc:
            refused[partner] = f"webhook of {partner} in {path} ({exc.setting}): {exc}"
    return subscriptions, refused


def subscribed_events(path: str) -> dict[str, frozenset[str]]:
    """Partner id -> the event types it subscribed to, from the registry at `path`: what the processor
    writes to the outbox. It needs neither the secrets nor the addresses (the deliverer checks those)."""
    subscribed = {}
    for partner, table in (_webhook_tables(path) if path else {}).items():
        events = table.get("events", sorted(EVENT_TYPES)) if isinstance(table, dict) else []
        if not isinstance(events, list) or not set(events) <= EVENT_TYPES:
            raise ConfigurationError(f"webhook of {partner} in {path}: events must list known event types")
        subscribed[partner] = frozenset(events)
    return subscribed
