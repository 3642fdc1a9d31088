"""Settings come from GATEWAY_* variables and a bad one stops start-up with its name."""

import pytest

from gateway.errors import ConfigurationError
from gateway.settings import Settings


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
