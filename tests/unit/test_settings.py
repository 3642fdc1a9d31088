"""Settings come from GATEWAY_* variables and a bad one stops start-up with its name."""

import os
import subprocess
import sys

import pytest

from gateway.settings import Settings
from settlement.errors import ConfigurationError
from tests.certificates import encrypted_copy, self_signed


def test_defaults_point_at_the_local_stack():
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.redis_url == "redis://127.0.0.1:16379/0"
    assert settings.topic("t1") == "settlement.t1"


def test_environment_overrides_and_converts():
    settings = Settings.from_env({"GATEWAY_DELIVERY_TIMEOUT_MS": "2500", "GATEWAY_TOPIC_PREFIX": "x."})
    assert settings.delivery_timeout_ms == 2500
    assert settings.topic("rtgs") == "x.rtgs"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"GATEWAY_TOPIC_PARTITIONS": "three"}, "GATEWAY_TOPIC_PARTITIONS"),
        ({"GATEWAY_DELIVERY_TIMEOUT_MS": "0"}, "GATEWAY_DELIVERY_TIMEOUT_MS"),
        ({"GATEWAY_PENDING_TTL_SECONDS": "2"}, "GATEWAY_PENDING_TTL_SECONDS"),
        ({"GATEWAY_COMPRESSION": "brotli"}, "GATEWAY_COMPRESSION"),
        ({"GATEWAY_REDIS_URL": "localhost:6379"}, "GATEWAY_REDIS_URL"),
        ({"GATEWAY_DATABASE_URL": "127.0.0.1:15432"}, "GATEWAY_DATABASE_URL"),
    ],
)
def test_bad_values_name_the_variable(environ, named):
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(environ)


def test_blocked_pairs_parse_and_reject_garbage():
    assert Settings.from_env({"GATEWAY_BLOCKED_PAIRS": "USD:RUB, EUR:IRR"}).blocked_currency_pairs == [
        ("USD", "RUB"),
        ("EUR", "IRR"),
    ]
    with pytest.raises(ConfigurationError, match="BLOCKED_PAIRS"):
        _ = Settings.from_env({"GATEWAY_BLOCKED_PAIRS": "USDRUB"}).blocked_currency_pairs


def test_the_removed_max_amount_variable_stops_start_up_and_says_where_the_maxima_are():
    """One count of units for every currency meant USD 40,000 of VND and USD 3 billion of KWD; the maxima
    are per currency in the rules file now, and a value left set must not be ignored silently."""
    with pytest.raises(ConfigurationError, match=r"GATEWAY_MAX_AMOUNT is no longer read: .*max_amount"):
        Settings.from_env({"GATEWAY_MAX_AMOUNT": "1000000"})
    assert not hasattr(Settings.from_env({}), "max_amount")


def test_the_operations_listener_is_on_loopback_port_9101_unless_told_and_0_turns_it_off():
    settings = Settings.from_env({})
    assert (settings.ops_host, settings.ops_port) == ("127.0.0.1", 9101)
    assert Settings.from_env({"GATEWAY_OPS_PORT": "0"}).ops_port == 0
    with pytest.raises(ConfigurationError, match="GATEWAY_OPS_PORT"):
        Settings.from_env({"GATEWAY_OPS_PORT": "65536"})
    with pytest.raises(ConfigurationError, match="GATEWAY_OPS_HOST"):
        Settings.from_env({"GATEWAY_OPS_HOST": ""})


def tls(certificate: object = "", key: object = "") -> dict[str, str]:
    return {"GATEWAY_TLS_CERT_FILE": str(certificate), "GATEWAY_TLS_KEY_FILE": str(key)}


def test_tls_takes_a_certificate_and_its_key_both_or_neither(tmp_path):
    certificate, key = self_signed(tmp_path)
    settings = Settings.from_env(tls(certificate, key))
    assert (settings.tls_cert_file, settings.tls_key_file) == (str(certificate), str(key))
    assert Settings.from_env({}).tls_cert_file == ""
    with pytest.raises(ConfigurationError, match="GATEWAY_TLS_CERT_FILE is set but GATEWAY_TLS_KEY_FILE is not"):
        Settings.from_env(tls(certificate))
    with pytest.raises(ConfigurationError, match="GATEWAY_TLS_KEY_FILE is set but GATEWAY_TLS_CERT_FILE is not"):
        Settings.from_env(tls(key=key))


def test_tls_files_that_are_missing_or_wrong_are_named(tmp_path):
    certificate, key = self_signed(tmp_path)
    other, other_key = self_signed(tmp_path, "other")
    missing = tmp_path / "missing.pem"
    cases = [
        (tls(missing, key), f"GATEWAY_TLS_CERT_FILE '{missing}' cannot be read: No such file"),
        (tls(certificate, missing), f"GATEWAY_TLS_KEY_FILE '{missing}' cannot be read: No such file"),
        (tls(key, key), "GATEWAY_TLS_CERT_FILE .* holds no PEM certificate"),
        (tls(certificate, certificate), "GATEWAY_TLS_KEY_FILE .* holds no PEM key"),
        (tls(certificate, encrypted_copy(key)), "GATEWAY_TLS_KEY_FILE .* is encrypted"),
        (tls(certificate, other_key), "are not a certificate and its key"),
    ]
    for environ, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            Settings.from_env(environ)
    assert Settings.from_env(tls(other, other_key)).tls_key_file == str(other_key)


def test_gateway_check_refuses_half_a_tls_configuration(tmp_path):
    certificate, _ = self_signed(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check"],
        env={**environ, "GATEWAY_TLS_CERT_FILE": str(certificate)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2
    assert "GATEWAY_TLS_CERT_FILE is set but GATEWAY_TLS_KEY_FILE is not" in check.stderr, check.stderr
