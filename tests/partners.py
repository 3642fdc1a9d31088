"""A partner registry for tests: partners with fresh ids and keys, written as the TOML an operator writes."""

import uuid
from pathlib import Path
from typing import NamedTuple

from gateway.partners.registry import new_key

SECRET = "a-signing-secret-of-at-least-32-bytes!"


class Registered(NamedTuple):
    path: Path
    ids: dict[str, str]  # role -> partner id
    keys: dict[str, str]  # role -> API key

    def bearer(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[role]}"}


def write_registry(directory: Path, slow_rate: float = 0.5, slow_burst: int = 2) -> Registered:
    """acme (rotating keys: new, old, revoked, expired), globex (another partner), signed (RFC 9421),
    slow (a tight rate limit) and narrow (t1 only, USD and GBP only)."""
    suffix = uuid.uuid4().hex[:8]
    ids = {role: f"{role}-{suffix}" for role in ("acme", "globex", "signed", "slow", "narrow")}
    keys: dict[str, str] = {}
    digests: dict[str, str] = {}
    for role in ("acme", "acme_old", "acme_revoked", "acme_expired", "globex", "signed", "slow", "narrow"):
        keys[role], digests[role] = new_key()
    text = f"""# partners of one test run
[partners.{ids["acme"]}]
rate = 10000
burst = 10000
keys = [
  {{ id = "2026-11", sha256 = "{digests["acme"]}" }},
  {{ id = "2026-05", sha256 = "{digests["acme_old"]}" }},
  {{ id = "2025-11", sha256 = "{digests["acme_revoked"]}", revoked = true }},
  {{ id = "2025-05", sha256 = "{digests["acme_expired"]}", expires = 2026-01-01T00:00:00Z }},
]

[partners.{ids["globex"]}]
keys = [{{ id = "k1", sha256 = "{digests["globex"]}" }}]

[partners.{ids["signed"]}]
signing_secret = "{SECRET}"
keys = [{{ id = "k1", sha256 = "{digests["signed"]}" }}]

[partners.{ids["slow"]}]
rate = {slow_rate}
burst = {slow_burst}
keys = [{{ id = "k1", sha256 = "{digests["slow"]}" }}]

[partners.{ids["narrow"]}]
windows = ["t1"]
currencies = ["USD", "GBP"]
keys = [{{ id = "k1", sha256 = "{digests["narrow"]}" }}]
"""
    path = directory / "partners.toml"
    path.write_text(text)
    return Registered(path, ids, keys)
