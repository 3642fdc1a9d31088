"""The processor's settings: shared GATEWAY_* variables and its own PROCESSOR_*, a bad one named."""

from pathlib import Path

import pytest

from processor.settings import ProcessorSettings
from settlement.errors import ConfigurationError


def test_reads_the_gateways_variables_and_its_own():
    settings = ProcessorSettings.from_env(
        {"GATEWAY_TOPIC_PREFIX": "x.", "GATEWAY_DATABASE_SCHEMA": "ledger", "PROCESSOR_CLOSE_GRACE_SECONDS": "5"}
    )
    assert settings.topics == ["x.rtgs", "x.t0", "x.t1"] and settings.batches_topic == "x.batches"
    assert settings.database_schema == "ledger" and settings.close_grace_seconds == 5


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PROCESSOR_POLL_RECORDS": "many"}, "PROCESSOR_POLL_RECORDS"),
        ({"PROCESSOR_POLL_RECORDS": "0"}, "PROCESSOR_POLL_RECORDS"),
        ({"GATEWAY_DATABASE_SCHEMA": "Drop Table"}, "GATEWAY_DATABASE_SCHEMA"),
        ({"GATEWAY_DATABASE_URL": "mysql://x"}, "GATEWAY_DATABASE_URL"),
        ({"GATEWAY_FIXED_TIME": "tomorrow"}, "GATEWAY_FIXED_TIME"),
    ],
)
def test_bad_values_name_the_variable(environ, named):
    with pytest.raises(ConfigurationError, match=named):
        ProcessorSettings.from_env(environ)


def test_a_fixed_time_pins_the_clock():
    clock = ProcessorSettings.from_env({"GATEWAY_FIXED_TIME": "2026-12-01T00:01:01Z"}).clock()
    assert clock() == clock() == 1796083261.0


def test_the_shared_settings_are_the_same_fields_for_both_sides_and_each_is_documented():
    """What the gateway and the processor share comes from one base: the same field, default and variable
    on both sides, and docs/processor.md names every one of them."""
    from gateway.settings import Settings
    from settlement.settings import SharedSettings, shared_variables

    gateway, processor = Settings(), ProcessorSettings()
    for field, variable in shared_variables().items():
        assert getattr(gateway, field) == getattr(processor, field) == getattr(SharedSettings(), field)
        assert variable == "GATEWAY_" + field.upper()
    text = (Path(__file__).resolve().parents[2] / "docs" / "processor.md").read_text()
    assert [v for v in shared_variables().values() if f"`{v}`" not in text] == []
