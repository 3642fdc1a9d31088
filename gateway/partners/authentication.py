"""Who is calling: the partner named by the credential, and what Redis must check before it is served.

With a registry, every request carries `Authorization: Bearer <key>`; a partner configured with a
signing secret also signs it (gateway.partners.signatures). Without one (open mode) every request is
the single open partner's, and a credential, if sent, is ignored.
"""

import logging
from collections.abc import Callable
from typing import NamedTuple

from gateway.errors import Refused
from gateway.idempotency.store import Admission, nonce_key, rate_key
from gateway.partners.registry import Partner, Registry
from gateway.partners.signatures import SignatureRejected, verify

log = logging.getLogger("gateway.partners")


class Unauthorized(Refused):
    """No valid credential: 401 with WWW-Authenticate. `error` is RFC 6750's code for the challenge."""

    def __init__(self, detail: str, error: str | None = "invalid_token", signature: bool = False) -> None:
        super().__init__("unauthorized", detail)
        self.error = error  # None: no credential was sent at all
        self.signature = signature  # the partner must sign: the answer says how (Accept-Signature)


class Caller(NamedTuple):
    """An identified request: its partner and the admission Redis checks first (nonce, rate)."""

    partner: Partner
    admission: Admission


def admission_of(partner: Partner) -> Admission:
    """A partner's admission for an unsigned request."""
    interval_us = 1_000_000 / partner.rate if partner.rate else 0.0
    return Admission(nonce_key(partner.id, ""), 0, rate_key(partner.id), interval_us, partner.burst)


def open_partner(partner_id: str) -> Partner:
    """The single partner of open mode: no key, no limit, every window and currency."""
    return Partner(partner_id, 0.0, 1, None, None, None)


class Authenticator:
    """Identifies the caller of each request from the registry (None: open mode)."""

    def __init__(self, registry: Registry | None, open_partner_id: str, clock: Callable[[], float]) -> None:
        self.registry = registry
        self._clock = clock
        self._open = Caller(open_partner(open_partner_id), admission_of(open_partner(open_partner_id)))
        self._admissions: dict[str, Admission] = {}
        if registry is not None:
            self._admissions = {p.id: admission_of(p) for p in registry.partners.values()}

    @property
    def open(self) -> bool:
        return self.registry is None

    def replace(self, registry: Registry) -> None:
        """Serve a reloaded registry from the next request on."""
        self._admissions = {p.id: admission_of(p) for p in registry.partners.values()}
        self.registry = registry

    def identify(
        self,
        method: str,
        path: str,
        authorization: str | None,
        header: Callable[[str], str | None],
        body: bytes,
    ) -> Caller:
        """The caller of a request, or Unauthorized."""
        registry = self.registry
        if registry is None:
            return self._open
        if authorization is None:
            raise Unauthorized("send the partner's API key as Authorization: Bearer <key>", error=None)
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if not key or scheme.lower() != "bearer":
            raise Unauthorized("the Authorization header must be Bearer <key>", error="invalid_request")
        now = self._clock()
        partner, problem = registry.authenticate(key, now)
        if partner is None:
            raise Unauthorized(problem or "the API key is not valid")
        admission = self._admissions[partner.id]
        if partner.signing_secret is None:
            return Caller(partner, admission)
        try:
            signed = verify(partner.signing_secret, method, path, header, body, now, partner.id)
        except SignatureRejected as exc:
            raise Unauthorized(str(exc), signature=True) from None
        return Caller(
            partner, admission._replace(nonce_key=nonce_key(partner.id, signed.nonce), nonce_ttl_ms=signed.ttl_ms)
        )
