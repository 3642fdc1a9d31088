"""One settings object, read once from the environment (prefix GATEWAY_) and validated at start-up."""

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from settlement.errors import ConfigurationError
from settlement.settings import SHARED_PREFIX as PREFIX
from settlement.settings import SharedSettings, read_environment

# Variables no longer read, and where their job went: start-up refuses them rather than ignore a limit.
REMOVED = {
    "GATEWAY_MAX_AMOUNT": (
        "the maximum amount is per currency now, in its own units: max_amount in the [thresholds] table of "
        "the settlement rules file (GATEWAY_RULES_PATH, docs/settlement-rules.md); unset GATEWAY_MAX_AMOUNT"
    ),
}
# how long past the delivery timeout a request may wait for its delivery report before it is in doubt
REPORT_GRACE_MS = 500


class Settings(SharedSettings, frozen=True, kw_only=True):
    """Every setting of the gateway (the shared ones from SharedSettings); each field is the environment
    variable GATEWAY_<FIELD>."""

    redis_url: str = "redis://127.0.0.1:16379/0"
    topic_partitions: int = 3
    delivery_timeout_ms: int = 5000
    linger_ms: float = 0.0
    queue_max_messages: int = 100_000
    compression: str = "lz4"
    redis_timeout_ms: int = 1000
    # /ready warns when Redis's memory passes this share of its maxmemory (full, it refuses writes: 503)
    redis_memory_warning: float = 0.8
    idempotency_ttl_seconds: int = 86_400
    # how long Redis guards a transaction id (about 100 bytes each); past it, the ledger answers
    transaction_id_ttl_seconds: int = 604_800
    pending_ttl_seconds: int = 86_400
    in_doubt_margin_ms: int = 5000
    # how far a gateway's clock may be from Redis's: the in-doubt resolver reads the log from this much
    # before a reservation (Redis's time), since the record carries the producing gateway's time
    max_clock_skew_ms: int = 30_000
    retry_after_seconds: int = 1
    partner: str = "default"  # the single partner of open mode (no GATEWAY_PARTNERS_FILE)
    partners_reload_seconds: float = 2.0  # how often each worker looks for a changed registry; 0: never
    host: str = ""  # the listen address, as deploy/run.sh and the image bind it (empty: not said)
    # the operations listener (/metrics, /health), apart from the partners' port; port 0: none
    ops_host: str = "127.0.0.1"
    ops_port: int = 9101
    # HTTPS on the partners' port, served by Granian (deploy/run.sh and the image pass them): both or neither
    tls_cert_file: str = ""
    tls_key_file: str = ""  # PEM, unencrypted (Granian is given no passphrase)
    max_body_bytes: int = 65_536
    bulk_max_items: int = 1000  # transactions in one bulk request
    bulk_max_body_bytes: int = 2_097_152  # the body of a bulk request
    blocked_pairs: str = ""
    ready_timeout_ms: int = 1000
    ready_cache_ms: int = 1000
    access_log: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = (
            "topic_partitions",
            "delivery_timeout_ms",
            "queue_max_messages",
            "redis_timeout_ms",
            "idempotency_ttl_seconds",
            "transaction_id_ttl_seconds",
            "pending_ttl_seconds",
            "in_doubt_margin_ms",
            "retry_after_seconds",
            "max_body_bytes",
            "bulk_max_items",
            "bulk_max_body_bytes",
            "ready_timeout_ms",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be greater than zero")
        if self.transaction_id_ttl_seconds < max(self.idempotency_ttl_seconds, self.pending_ttl_seconds):
            raise ConfigurationError(
                f"{PREFIX}TRANSACTION_ID_TTL_SECONDS must be at least {PREFIX}IDEMPOTENCY_TTL_SECONDS and "
                f"{PREFIX}PENDING_TTL_SECONDS: an id must be guarded as long as its key answers"
            )
        if not 0 < self.redis_memory_warning <= 1:
            raise ConfigurationError(f"{PREFIX}REDIS_MEMORY_WARNING must be a share in (0, 1]")
        if self.max_clock_skew_ms < 0:
            raise ConfigurationError(f"{PREFIX}MAX_CLOCK_SKEW_MS must not be negative")
        if self.ready_cache_ms < 0:
            raise ConfigurationError(f"{PREFIX}READY_CACHE_MS must not be negative")
        if self.linger_ms < 0:
            raise ConfigurationError(f"{PREFIX}LINGER_MS must not be negative")
        # A reservation must outlive the moment its record's fate can be read from the log, or a
        # retry could race a late delivery.
        if self.pending_ttl_seconds * 1000 <= self.in_doubt_after_ms:
            raise ConfigurationError(
                f"{PREFIX}PENDING_TTL_SECONDS ({self.pending_ttl_seconds}) must exceed "
                f"{PREFIX}DELIVERY_TIMEOUT_MS + {PREFIX}IN_DOUBT_MARGIN_MS ({self.in_doubt_after_ms} ms)"
            )
        if self.compression not in ("none", "gzip", "snappy", "lz4", "zstd"):
            raise ConfigurationError(f"{PREFIX}COMPRESSION must be one of none, gzip, snappy, lz4, zstd")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(f"{PREFIX}REDIS_URL must be a redis://, rediss:// or unix:// URL")
        if not 0 <= self.ops_port <= 65535:
            raise ConfigurationError(f"{PREFIX}OPS_PORT must be a port number (0: no operations listener)")
        if not self.ops_host:
            raise ConfigurationError(f"{PREFIX}OPS_HOST must be an address (0.0.0.0: every IPv4 interface)")
        check_tls(self.tls_cert_file, self.tls_key_file)

    @property
    def in_doubt_after_ms(self) -> int:
        """How long a reservation may stay pending before its record's fate is read from the log: the
        delivery timeout, the producer's report grace and the margin."""
        return self.delivery_timeout_ms + REPORT_GRACE_MS + self.in_doubt_margin_ms

    @property
    def blocked_currency_pairs(self) -> list[tuple[str, str]]:
        """GATEWAY_BLOCKED_PAIRS ("USD:RUB,EUR:IRR") as (source, destination) pairs."""
        pairs = []
        for item in filter(None, (part.strip() for part in self.blocked_pairs.split(","))):
            source, sep, destination = item.partition(":")
            if not sep or not source or not destination:
                raise ConfigurationError(f"{PREFIX}BLOCKED_PAIRS entry {item!r} is not SOURCE:DESTINATION")
            pairs.append((source, destination))
        return pairs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every GATEWAY_* variable; raise ConfigurationError naming the first bad one."""
        environ = os.environ if environ is None else environ
        for name, instead in REMOVED.items():
            if name in environ:
                raise ConfigurationError(f"{name} is no longer read: {instead}")
        variables = {name: PREFIX + name.upper() for name in cls.__struct_fields__}
        return read_environment(cls, variables, environ)


def check_tls(cert_file: str, key_file: str) -> None:
    """GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE: both or neither, each a readable PEM file, the key
    unencrypted and the certificate's. Loaded as Granian loads them (the ssl module), so that a bad pair
    stops start-up with its variable's name rather than a bare OSError in every worker."""
    names = {"cert": f"{PREFIX}TLS_CERT_FILE", "key": f"{PREFIX}TLS_KEY_FILE"}
    if bool(cert_file) != bool(key_file):
        given, missing = ("cert", "key") if cert_file else ("key", "cert")
        raise ConfigurationError(f"{names[given]} is set but {names[missing]} is not: HTTPS needs both")
    if not cert_file:
        return
    # a key's header names its form: PRIVATE KEY (PKCS#8), RSA or EC PRIVATE KEY, ENCRYPTED PRIVATE KEY
    markers = {"cert": "-----BEGIN CERTIFICATE-----", "key": "PRIVATE KEY-----"}
    what = {"cert": "certificate", "key": "key"}
    for kind, path in (("cert", cert_file), ("key", key_file)):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as exc:
            raise ConfigurationError(f"{names[kind]} {path!r} cannot be read: {exc.strerror}") from None
        if markers[kind] not in text:
            raise ConfigurationError(f"{names[kind]} {path!r} holds no PEM {what[kind]}")
        if kind == "key" and "ENCRYPTED" in text:
            raise ConfigurationError(
                f"{names[kind]} {path!r} is encrypted: the gateway has no passphrase to give Granian "
                "(decrypt it with `openssl pkey -in KEY -out PLAIN`, readable by the gateway's user only)"
            )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"{names['cert']} {cert_file!r} and {names['key']} {key_file!r} are not a certificate and its key "
            f"({exc.reason or exc})"
        ) from None
