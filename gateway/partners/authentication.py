"""Who is calling: the partner named by the credential, and what Redis must check before it is served.

With a registry, every request carries `Authorization: Bearer <key>`; a partner configured with a
signing secret also signs it (gateway.partners.signatures). Without one (open mode) every request is
the single open partner's, and a credential, if sent, is ignored.
"""

import logging
from collections.abc import Callable
from typing import NamedTuple

from gateway.errors import Unauthorized
from gateway.partners.admission import Admission, nonce_key, unlimited
from gateway.partners.message import Message
from gateway.partners.registry import Partner, Registry
from gateway.partners.signatures import SignatureRejected, verify

log = logging.getLogger("gateway.partners")
MAX_AUTHORIZATION = 1024  # bytes: `Bearer ` and a key of a few dozen characters; anything longer is refused unread


class Caller(NamedTuple):
    """An identified request: its partner, the admission Redis checks first (nonce, rate), and the
    partner's window and currency check (None when it may use every one)."""

    partner: Partner
    admission: Admission
    forbids: Callable[[tuple[str, ...], tuple[str, str]], str | None] | None  # gateway.intake.flow.Forbids


def caller_of(partner: Partner) -> Caller:
    """A partner's unsigned request, made once per partner when the registry is loaded."""
    admission = unlimited(partner.id)
    if partner.rate:
        admission = admission._replace(interval_us=1_000_000 / partner.rate, burst=partner.burst)
    restricted = partner.windows is not None or partner.currencies is not None
    return Caller(partner, admission, partner.forbids if restricted else None)


def open_partner(partner_id: str) -> Partner:
    """The single partner of open mode: no key, no limit, every window and currency."""
    return Partner(partner_id, 0.0, 1, None, None, None)


class Authenticator:
    """Identifies the caller of each request from the registry (None: open mode)."""

    def __init__(self, registry: Registry | None, open_partner_id: str, clock: Callable[[], float]) -> None:
        self.registry = registry
        self._clock = clock
        self._open = caller_of(open_partner(open_partner_id))
        self._callers: dict[str, Caller] = {}
        if registry is not None:
            self.replace(registry)

    def replace(self, registry: Registry) -> None:
        """Serve a (re)loaded registry from the next request on."""
        self._callers = {p.id: caller_of(p) for p in registry.partners.values()}
        self.registry = registry

    def identify(self, message: Message, body: bytes) -> Caller:
        """The caller of a request, or Unauthorized."""
        registry = self.registry
        if registry is None:
            return self._open
        authorization = message.fields.get("authorization")
        if authorization is None:
            raise Unauthorized("send the partner's API key as Authorization: Bearer <key>", error=None)
        if len(authorization) > MAX_AUTHORIZATION:
            detail = f"the Authorization header is longer than {MAX_AUTHORIZATION} bytes"
            raise Unauthorized(detail, error="invalid_request")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if not key or scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must be Bearer <key>", error="invalid_request")
        now = self._clock()
        partner, problem = registry.authenticate(key, now)
        if partner is None:
            raise Unauthorized(problem or "the API key is not valid")
        caller = self._callers[partner.id]
        if partner.signing_secret is None:
            return caller
        try:
            signed = verify(partner.signing_secret, message, body, now, partner.id)
        except SignatureRejected as exc:
            raise Unauthorized(str(exc), signature=True) from None
        admission = caller.admission._replace(nonce_key=nonce_key(partner.id, signed.nonce), nonce_ttl_ms=signed.ttl_ms)
        return caller._replace(admission=admission)
