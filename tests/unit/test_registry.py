"""The partner registry file: what it accepts, and a message naming the line for what it refuses."""

import os
import time
from pathlib import Path

import pytest

from gateway.errors import ConfigurationError
from gateway.partners.authentication import Authenticator
from gateway.partners.registry import Registry, key_digest, new_key
from gateway.partners.reload import RegistryWatcher

KEY, DIGEST = new_key()


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Registry:
    path = tmp_path / "partners.toml"
    path.write_text(text)
    return Registry.load(path, environ or {})


def test_keys_are_random_and_stored_only_as_their_digest():
    key, digest = new_key()
    assert key.startswith("sk_") and len(key) > 40 and key != KEY
    assert digest == key_digest(key) and key not in digest and len(digest) == 64


def test_a_good_registry(tmp_path):
    registry = _load(
        tmp_path,
        f"""
[partners.acme]
rate = 500
burst = 1000
windows = ["t0", "t1"]
currencies = ["USD", "GBP"]
signing_secret_env = "ACME_SECRET"
keys = [{{ id = "k1", sha256 = "{DIGEST}" }}, {{ id = "k0", sha256 = "{"0" * 64}", revoked = true }}]
""",
        {"ACME_SECRET": "s" * 32},
    )
    partner = registry.partners["acme"]
    assert (partner.rate, partner.burst, partner.signing_secret) == (500.0, 1000, b"s" * 32)
    assert partner.forbids(("t1",), ("USD", "GBP")) is None
    assert partner.forbids(("rtgs",), ("USD", "GBP")) == "settlement window rtgs is not enabled for partner acme"
    assert partner.forbids(("t1",), ("USD", "EUR")) == "currency EUR is not enabled for partner acme"
    assert registry.authenticate(KEY, time.time()).partner == partner
    assert registry.authenticate(KEY + "x", time.time()).problem == "the API key is not valid"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ('[partners.acme]\nkeys = [{ id = "k1", sha256 = "nope" }]\n', 2, "sha256 must be the 64"),
        ('\n\n[partners.acme]\nrate = -1\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 4, "rate of acme"),
        ('[partners.acme]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\ncolour = "blue"\n', 3, "unknown setting"),
        ('[partners.acme]\nkeys = [{ id = "k1", sha256 = "DIGEST", revoked = true }]\n', 1, "no active key"),
        ('[partners.Acme]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 1, "partner id 'Acme'"),
        ('[partners.acme]\nwindows = ["t2"]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 2, "windows of acme"),
        (
            '[partners.acme]\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n[partners.beta]\nkeys = [\n'
            '  { id = "k1", sha256 = "DIGEST" },\n]\n',
            5,
            "listed twice",
        ),
        ('[partners.acme]\nsigning_secret_env = "NONE"\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 2, "not set"),
        ('[partners.acme]\nsigning_secret = "short"\nkeys = [{ id = "k1", sha256 = "DIGEST" }]\n', 2, "32 bytes"),
        ("[partners.acme]\nrate = \n", 2, "Invalid value"),  # TOML itself: tomllib names line and column
    ],
)
def test_a_bad_registry_stops_with_the_line(tmp_path, text, line, says):
    with pytest.raises(ConfigurationError) as caught:
        _load(tmp_path, text.replace("DIGEST", DIGEST))
    message = str(caught.value)
    assert says in message, message
    assert f"line {line}" in message, message
    assert "partners.toml" in message


def test_no_partners_at_all_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="no partners"):
        _load(tmp_path, "# nothing\n")


def test_a_changed_file_is_served_and_a_bad_one_keeps_the_previous(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_text(f'[partners.acme]\nkeys = [{{ id = "k1", sha256 = "{DIGEST}" }}]\n')
    authenticator = Authenticator(Registry.load(path), "default", time.time)
    watcher = RegistryWatcher(path, authenticator, 0)
    assert not watcher.check()  # unchanged
    other_key, other_digest = new_key()
    path.write_text(f'[partners.beta]\nkeys = [{{ id = "k1", sha256 = "{other_digest}" }}]\n')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert watcher.check()
    assert authenticator.identify("GET", "/", f"Bearer {other_key}", lambda _: None, b"").partner.id == "beta"
    path.write_text("[partners.beta\n")  # broken: the previous registry stays
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert not watcher.check()
    assert authenticator.identify("GET", "/", f"Bearer {other_key}", lambda _: None, b"").partner.id == "beta"
