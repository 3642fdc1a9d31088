"""The partner registry: who may submit, with which keys, how fast, to which windows and currencies.

A TOML file (GATEWAY_PARTNERS_FILE) with one table per partner:

    [partners.acme]
    rate = 500                       # sustained requests per second (GCRA); 0 = unlimited
    burst = 1000                     # requests allowed at once above the sustained rate
    windows = ["t0", "t1"]           # optional: the settlement windows it may use
    currencies = ["USD", "GBP"]      # optional: the currencies it may send or receive
    signing_secret_env = "ACME_HMAC" # optional: requests must carry an RFC 9421 HMAC signature
    webhook = { url = "https://hooks.acme.example/settlement", secret_env = "ACME_WEBHOOK" }
                                     # optional: where it hears what became of its payments
                                     # (settlement.webhooks: https, no private addresses)
    keys = [
      { id = "2026-11", sha256 = "9f86d0…" },                # active
      { id = "2026-05", sha256 = "60303a…", revoked = true }, # rotated out
    ]

API keys are random (`python -m gateway new-key` makes one); the file holds only their SHA-256, which
for a 256-bit random secret is as good as a slow hash and costs a microsecond per request. A bad file
stops start-up (or a reload keeps the previous registry) with a message that names the line.

A partner may have no active key (every key revoked or expired, `keys = []`, or no `keys` at all): it
is loaded and locked out (every request 401), and the load says so in `Registry.warnings`. Revoking a
partner's last key therefore works like any other revocation, at the next reload; refusing such a file
would keep the previous registry, and the revoked key with it.
"""

import hashlib
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Self

import rtoml

from settlement.errors import ConfigurationError
from settlement.stamps import FileStamp, file_stamp
from settlement.webhooks import InvalidSubscription, Subscription, parse_subscription

PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
WINDOWS = frozenset({"rtgs", "t0", "t1"})
KEY_PREFIX = "sk_"  # what every key made by `new_key` starts with (a secret scanner can look for it)


class Partner(NamedTuple):
    """One partner as the edge needs it: its limits and permissions, resolved once at load."""

    id: str
    rate: float  # requests per second; 0 = unlimited
    burst: int
    windows: frozenset[str] | None  # None = every window
    currencies: frozenset[str] | None  # None = every currency
    signing_secret: bytes | None
    webhook: Subscription | None = None

    def forbids(self, windows: tuple[str, ...], currencies: tuple[str, str]) -> str | None:
        """Why this partner may not send a transaction routed through `windows` in `currencies`, or None."""
        if self.windows is not None:
            for window in windows:
                if window not in self.windows:
                    return f"settlement window {window} is not enabled for partner {self.id}"
        if self.currencies is not None:
            for currency in currencies:
                if currency not in self.currencies:
                    return f"currency {currency} is not enabled for partner {self.id}"
        return None


class Key(NamedTuple):
    partner: Partner
    key_id: str
    digest: str  # SHA-256 of the key, hex
    revoked: bool
    expires_at: float | None  # Unix seconds


class Found(NamedTuple):
    """What a presented API key turned out to be."""

    partner: Partner | None
    problem: str | None  # why it does not authenticate, said to the caller


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh API key and the SHA-256 the registry stores."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key_digest(key)


class Registry:
    """The partners of one registry file, looked up by the digest of a presented key.

    `warnings`: what the load wants an operator to know without refusing the file (a partner locked
    out). `source`: the stamp of the file taken before it was read (None when built in memory), so a
    change during or after the read is seen as a change. `loaded_at`: when it was read, Unix seconds."""

    def __init__(
        self,
        partners: dict[str, Partner],
        keys: dict[str, Key],
        warnings: tuple[str, ...] = (),
        source: FileStamp | None = None,
        loaded_at: float = 0.0,
    ) -> None:
        self.partners = partners
        self._keys = keys
        self.warnings = warnings
        self.source = source
        self.loaded_at = loaded_at

    def key_names(self) -> dict[str, str]:
        """Every key's digest -> `partner/key id`, the name a log may show (never the digest)."""
        return {digest: f"{key.partner.id}/{key.key_id}" for digest, key in self._keys.items()}

    def removed_since(self, served: "Registry") -> tuple[list[str], list[str]]:
        """The partners and keys (`partner/key id`) of `served` that this registry no longer has; a key
        counts as gone when its digest is gone, whatever its id."""
        partners = sorted(set(served.partners) - set(self.partners))
        keys = sorted(name for digest, name in served.key_names().items() if digest not in self._keys)
        return partners, keys

    def revoked_since(self, served: "Registry", now: float) -> list[str]:
        """The keys (`partner/key id`) that authenticated in `served` and are revoked or expired here."""
        return sorted(
            f"{key.partner.id}/{key.key_id}"
            for digest, key in self._keys.items()
            if not _active(key, now) and digest in served._keys and _active(served._keys[digest], now)
        )

    def authenticate(self, key: str, now: float) -> Found:
        """The partner owning `key`, in time that does not depend on how close a guess is to a real key:
        SHA-256 of the presented key, then a dict lookup of that digest, which hashes it with the
        process's secret SipHash key, so neither which slot is probed nor the string comparison that
        follows only on a full 64-bit hash match tells a caller anything about the registered digests."""
        entry = self._keys.get(key_digest(key))
        if entry is None:
            return Found(None, "the API key is not valid")
        if entry.revoked:
            return Found(None, "the API key was revoked")
        if entry.expires_at is not None and now >= entry.expires_at:
            return Found(None, "the API key has expired")
        return Found(entry.partner, None)

    @classmethod
    def load(cls, path: Path, environ: dict[str, str] | None = None, now: float | None = None) -> Self:
        """Read and check a registry file; ConfigurationError names the file and line of the first fault."""
        environ = dict(os.environ) if environ is None else environ
        now = time.time() if now is None else now
        source = file_stamp(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"partner registry {path}: {exc.strerror}") from None
        try:
            text = data.decode()  # TOML is UTF-8, whatever the locale says
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigurationError(f"partner registry {path}, line {line}: not UTF-8 ({exc.reason})") from None
        try:
            # rtoml (the Rust `toml` crate) rather than tomllib: tomllib, pure Python, took 1-2 µs a byte
            # and time quadratic in a key's dotted parts (150 ms for an 8 KiB key); rtoml parses an 8 KiB
            # registry in 0.13 ms and refuses nesting past its recursion limit at once
            document = rtoml.loads(text)
        except rtoml.TomlParsingError as exc:
            raise ConfigurationError(f"partner registry {path}: {exc}") from None
        partners, keys = _Parser(path, text, environ).registry(document)
        locked_out = sorted(set(partners) - {key.partner.id for key in keys.values() if _active(key, now)})
        warnings = tuple(f"partner {p} has no active key: it is locked out" for p in locked_out)
        return cls(partners, keys, warnings, source, now)


def _active(key: Key, now: float) -> bool:
    return not key.revoked and (key.expires_at is None or now < key.expires_at)


class _Parser:
    """Turns the parsed TOML into a Registry, naming the line of whatever is wrong."""

    def __init__(self, path: Path, text: str, environ: dict[str, str]) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.environ = environ

    def line_of(self, *needles: str) -> int:
        """The first line holding every needle in turn (a table header, then a value), 1-based; 0 if none."""
        start = 0
        found = 0
        for needle in needles:
            for number in range(start, len(self.lines)):
                if needle in self.lines[number]:
                    found, start = number + 1, number
                    break
        return found

    def fail(self, message: str, *needles: str) -> ConfigurationError:
        line = self.line_of(*needles) if needles else 0
        where = f"{self.path}, line {line}" if line else str(self.path)
        return ConfigurationError(f"partner registry {where}: {message}")

    def registry(self, document: dict[str, Any]) -> tuple[dict[str, Partner], dict[str, Key]]:
        unknown = set(document) - {"partners"}
        if unknown:
            name = sorted(unknown)[0]
            raise self.fail(f"unknown top-level entry {name!r} (expected [partners.<id>] tables)", name)
        tables = document.get("partners")
        if not isinstance(tables, dict) or not tables:
            raise self.fail("no partners: add at least one [partners.<id>] table")
        partners: dict[str, Partner] = {}
        keys: dict[str, Key] = {}
        for partner_id, table in tables.items():
            header = f"[partners.{partner_id}]"
            if not PARTNER_ID.match(partner_id):
                raise self.fail(
                    f"partner id {partner_id!r} must be 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit",
                    partner_id,
                )
            if not isinstance(table, dict):
                raise self.fail(f"partners.{partner_id} must be a table", partner_id)
            partner = self.partner(partner_id, table, header)
            partners[partner_id] = partner
            for key in self.keys(partner, table.get("keys"), header):
                if key.digest in keys:
                    raise self.fail(f"the same API key is listed twice ({partner_id})", header, key.key_id)
                keys[key.digest] = key
        return partners, keys

    def partner(self, partner_id: str, table: dict[str, Any], header: str) -> Partner:
        allowed = {"rate", "burst", "windows", "currencies", "signing_secret", "signing_secret_env", "keys", "webhook"}
        for name in table:
            if name not in allowed:
                raise self.fail(f"unknown setting {name!r} of partner {partner_id}", header, name)
        rate = table.get("rate", 0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise self.fail(f"rate of {partner_id} must be a number of requests per second, 0 or more", header, "rate")
        burst = table.get("burst", max(1, int(rate)))
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise self.fail(f"burst of {partner_id} must be a whole number, 1 or more", header, "burst")
        windows = self.names(table, "windows", header, partner_id)
        if windows is not None and not windows <= WINDOWS:
            raise self.fail(f"windows of {partner_id} must be among rtgs, t0, t1", header, "windows")
        currencies = self.names(table, "currencies", header, partner_id)
        if currencies is not None and not all(re.fullmatch("[A-Z]{3}", c) for c in currencies):
            raise self.fail(f"currencies of {partner_id} must be ISO 4217 codes", header, "currencies")
        secret: str | None = None
        if "signing_secret" in table and "signing_secret_env" in table:
            raise self.fail(f"give {partner_id} signing_secret or signing_secret_env, not both", header)
        if "signing_secret_env" in table:
            variable = table["signing_secret_env"]
            secret = self.environ.get(variable) if isinstance(variable, str) else None
            if not secret:
                raise self.fail(
                    f"signing_secret_env of {partner_id} names {variable!r}, which is not set", header, "signing_secret"
                )
        elif "signing_secret" in table:
            secret = table["signing_secret"]
        if secret is not None and (not isinstance(secret, str) or len(secret.encode()) < 32):
            raise self.fail(f"the signing secret of {partner_id} must be at least 32 bytes", header, "signing_secret")
        webhook = None
        if "webhook" in table:
            try:
                webhook = parse_subscription(partner_id, table["webhook"], self.environ)
            except InvalidSubscription as exc:
                raise self.fail(f"webhook of {partner_id}: {exc}", header, "webhook", exc.setting) from None
        signing = secret.encode() if secret else None
        return Partner(partner_id, float(rate), burst, windows, currencies, signing, webhook)

    def names(self, table: dict[str, Any], field: str, header: str, partner_id: str) -> frozenset[str] | None:
        value = table.get(field)
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{field} of {partner_id} must be a non-empty list of strings", header, field)
        return frozenset(value)

    def keys(self, partner: Partner, entries: Any, header: str) -> list[Key]:
        if entries is None:  # no keys: locked out, like keys = [] (Registry.load warns)
            return []
        if not isinstance(entries, list):
            raise self.fail(
                f"keys of {partner.id} must be a list: keys = [{{ id = ..., sha256 = ... }}]", header, "keys"
            )
        found = []
        ids: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict):
                raise self.fail(f"each key of {partner.id} must be an inline table", header, "keys")
            key_id, digest = entry.get("id"), entry.get("sha256")
            unknown = set(entry) - {"id", "sha256", "revoked", "expires"}
            if unknown:
                raise self.fail(f"unknown setting {sorted(unknown)[0]!r} of a key of {partner.id}", header, "keys")
            if not isinstance(key_id, str) or not key_id or key_id in ids:
                raise self.fail(f"each key of {partner.id} needs its own id", header, str(key_id))
            ids.add(key_id)
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise self.fail(
                    f"key {key_id} of {partner.id}: sha256 must be the 64 lower-case hex digits of the key's "
                    "SHA-256 (python -m gateway new-key makes a key and its digest)",
                    header,
                    key_id,
                )
            revoked = entry.get("revoked", False)
            if not isinstance(revoked, bool):
                raise self.fail(f"key {key_id} of {partner.id}: revoked must be true or false", header, key_id)
            expires = entry.get("expires")
            if expires is not None and not (isinstance(expires, datetime) and expires.tzinfo is not None):
                raise self.fail(
                    f"key {key_id} of {partner.id}: expires must be a date-time with its offset, "
                    "like 2027-01-01T00:00:00Z",
                    header,
                    key_id,
                )
            found.append(
                Key(partner, key_id, digest, revoked, expires.astimezone(UTC).timestamp() if expires else None)
            )
        return found
