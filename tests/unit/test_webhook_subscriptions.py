"""Webhook subscriptions in the partner registry (issue 27, part 1): a URL, a Standard Webhooks secret and
the event types; https except on loopback; no private, link-local or otherwise internal destination
unless the registry allows it, whether written as an address or as a name that resolves to one."""

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.partners.registry import Registry, new_key
from settlement.errors import ConfigurationError
from settlement.webhooks import (
    EVENT_TYPES,
    InvalidSubscription,
    check_destination,
    new_secret,
    parse_subscription,
    signing_secret,
)

_, DIGEST = new_key()
SECRET = new_secret()


def _registry(tmp_path: Path, webhook: str, environ: dict[str, str] | None = None) -> Registry:
    path = tmp_path / "partners.toml"
    path.write_text(
        f'[partners.acme]\nkeys = [{{ id = "k1", sha256 = "{DIGEST}" }}]\n\n[partners.acme.webhook]\n{webhook}\n'
    )
    return Registry.load(path, environ=environ or {})


def test_a_subscription_is_loaded_with_its_secret_and_events(tmp_path):
    registry = _registry(
        tmp_path,
        f'url = "https://127.0.0.1:8443/hooks"\nsecret = "{SECRET}"\nevents = ["transaction.settled"]',
    )
    webhook = registry.partners["acme"].webhook
    assert webhook is not None and webhook.url == "https://127.0.0.1:8443/hooks"
    assert webhook.secret == base64.b64decode(SECRET.removeprefix("whsec_")) and len(webhook.secret) == 32
    assert "transaction.settled" in webhook.events and "transaction.batched" not in webhook.events


def test_the_secret_may_come_from_the_environment_and_every_event_is_the_default(tmp_path):
    registry = _registry(tmp_path, 'url = "http://localhost:9000/h"\nsecret_env = "ACME_HOOK"', {"ACME_HOOK": SECRET})
    webhook = registry.partners["acme"].webhook
    assert webhook is not None and webhook.events == EVENT_TYPES


def test_a_partner_without_a_webhook_has_none(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_text(f'[partners.acme]\nkeys = [{{ id = "k1", sha256 = "{DIGEST}" }}]\n')
    assert Registry.load(path, environ={}).partners["acme"].webhook is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://hooks.example.com/h", "must be https"),
        ("ftp://127.0.0.1/h", "https:// URL with a host"),
        ("https:///h", "https:// URL with a host"),
        ("https://user:pw@127.0.0.1/h", "credentials"),
        ("https://10.1.2.3/h", "a private address"),
        ("https://192.168.0.10/h", "a private address"),
        ("https://172.16.5.5/h", "a private address"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fe80::1]/h", "link-local"),
        ("https://[fd00::1]/h", "a private address"),
        ("https://[::ffff:10.0.0.1]/h", "a private address"),
        ("https://100.64.0.1/h", "shared"),
        ("https://0.0.0.0/h", "unspecified"),
        ("https://224.0.0.1/h", "multicast"),
        ("https://240.0.0.1/h", "reserved"),
    ],
)
def test_a_destination_that_is_not_https_or_reaches_the_internal_network_is_refused(url, says):
    with pytest.raises(InvalidSubscription, match=says):
        check_destination(url, allow_private_network=False, resolve=lambda host, port: [])


@pytest.mark.parametrize(
    ("url", "resolves_to", "says"),
    [
        ("https://hooks.example.com/h", ["10.0.0.7"], "reaches 10.0.0.7, a private address"),
        ("https://hooks.example.com/h", ["93.184.215.14", "169.254.169.254"], "link-local"),  # any address counts
    ],
)
def test_a_name_is_judged_by_every_address_it_resolves_to(url, resolves_to, says):
    with pytest.raises(InvalidSubscription, match=says):
        check_destination(url, allow_private_network=False, resolve=lambda host, port: resolves_to)


def test_a_name_that_does_not_resolve_now_is_accepted_since_every_connection_is_checked():
    """A partner's DNS outage must not make the gateway refuse its registry; the deliverer's resolver
    checks the addresses of every connection it makes (tests/unit/test_webhook_delivery.py)."""
    check_destination("https://nowhere.invalid/h", False, resolve=lambda host, port: [])
    check_destination("https://hooks.example.com/h", False, resolve=None)  # the deliverer's load: no DNS
    with pytest.raises(InvalidSubscription, match="private"):
        check_destination("https://10.0.0.7/h", False, resolve=None)  # an address written is judged at load


def test_public_and_loopback_destinations_pass_and_private_ones_only_when_allowed():
    check_destination("https://hooks.example.com/h", False, resolve=lambda host, port: ["93.184.215.14"])
    check_destination("http://127.0.0.1:9000/h", False)
    check_destination("http://[::1]:9000/h", False)
    check_destination("http://localhost:9000/h", False, resolve=lambda host, port: ["127.0.0.1"])
    check_destination("https://10.1.2.3/h", allow_private_network=True)
    with pytest.raises(InvalidSubscription, match="must be https"):  # allowed private, still not plain http
        check_destination("http://10.1.2.3/h", allow_private_network=True)
    with pytest.raises(InvalidSubscription, match="must be https"):  # plain http: loopback by address or localhost
        check_destination("http://loopback.example/h", True, resolve=lambda host, port: ["127.0.0.1"])


@pytest.mark.parametrize(
    ("webhook", "setting", "says"),
    [
        ('url = "https://10.0.0.9/h"\nsecret = "SECRET"', "url", "private address: set allow_private_network"),
        ('url = "https://127.0.0.1/h"\nsecret = "plain-text-secret"', "secret", "must be whsec_"),
        ('url = "https://127.0.0.1/h"\nsecret = "whsec_!!!"', "secret", "not base64"),
        ('url = "https://127.0.0.1/h"\nsecret = "whsec_c2hvcnQ="', "secret", "24 to 64 bytes, not 5"),
        ('url = "https://127.0.0.1/h"', "url", "secret or secret_env"),
        ('url = "https://127.0.0.1/h"\nsecret_env = "MISSING"', "secret_env", "'MISSING', which is not set"),
        ('url = "https://127.0.0.1/h"\nsecret = "SECRET"\nevents = ["payment.done"]', "events", "unknown event"),
        ('url = "https://127.0.0.1/h"\nsecret = "SECRET"\nevents = []', "events", "non-empty list"),
        ('url = "https://127.0.0.1/h"\nsecret = "SECRET"\nretries = 3', "retries", "unknown setting 'retries'"),
        ('secret = "SECRET"', "secret", "needs a url"),
    ],
)
def test_a_bad_webhook_table_stops_the_load_naming_its_line(tmp_path, webhook, setting, says):
    with pytest.raises(ConfigurationError, match=says) as caught:
        _registry(tmp_path, webhook.replace("SECRET", SECRET))
    text = (tmp_path / "partners.toml").read_text().splitlines()
    line = int(str(caught.value).split(", line ")[1].split(":")[0])
    assert "[partners.acme.webhook]" in text[line - 1] or setting.split("_")[0] in text[line - 1]


def test_an_allowed_private_destination_loads(tmp_path):
    registry = _registry(tmp_path, f'url = "https://10.0.0.9/h"\nsecret = "{SECRET}"\nallow_private_network = true')
    webhook = registry.partners["acme"].webhook
    assert webhook is not None and webhook.allow_private_network


def test_new_webhook_secret_makes_a_secret_the_registry_takes():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "new-webhook-secret"], capture_output=True, text=True, check=True
    ).stdout
    secret = out.rsplit(": ", 1)[1].strip()
    assert len(signing_secret(secret)) == 32 and secret != SECRET


def test_the_table_may_be_written_inline(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_text(
        f'[partners.acme]\nkeys = [{{ id = "k1", sha256 = "{DIGEST}" }}]\n'
        f'webhook = {{ url = "https://127.0.0.1/h", secret = "{SECRET}" }}\n'
    )
    assert Registry.load(path, environ={}).partners["acme"].webhook is not None
    with pytest.raises(InvalidSubscription, match="must be a table"):
        parse_subscription("acme", "https://127.0.0.1/h", {})
