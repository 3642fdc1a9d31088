"""Open mode (no partner registry) says so, and louder when it listens beyond loopback."""

import logging

import msgspec
import pytest

from gateway.api.app import load_partners
from gateway.api.lifespans import warn_if_open
from gateway.settings import Settings
from settlement.errors import ConfigurationError


@pytest.mark.parametrize(("host", "warnings"), [("", 1), ("127.0.0.1", 1), ("::1", 1), ("0.0.0.0", 2), ("10.0.0.5", 2)])
def test_open_mode_warns_and_again_beyond_loopback(caplog, host, warnings):
    settings = msgspec.structs.replace(Settings(), host=host)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        warn_if_open(settings)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == warnings, said
    assert "open mode" in said[0] and "'default'" in said[0]
    if warnings == 2:
        assert host in said[1] and "unauthenticated" in said[1]


def test_no_registry_is_open_mode_and_a_bad_open_partner_id_stops_start_up():
    assert load_partners(Settings()) is None
    with pytest.raises(ConfigurationError, match="GATEWAY_PARTNER"):
        load_partners(msgspec.structs.replace(Settings(), partner="Not Valid"))
