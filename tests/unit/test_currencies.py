"""The committed ISO 4217 table is exactly what the generator makes from the authoritative list."""

import importlib.util
from pathlib import Path

from fastcore.currencies import CURRENCIES

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("generate_currencies", ROOT / "tools" / "generate_currencies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_matches_regeneration():
    assert _generator().render() == (ROOT / "fastcore" / "currencies.py").read_text()


def test_table_knows_minor_units_and_fund_codes():
    assert CURRENCIES["USD"] == (2, False)
    assert CURRENCIES["JPY"] == (0, False)
    assert CURRENCIES["KWD"] == (3, False)
    assert CURRENCIES["BOV"] == (2, True)  # a fund code
    assert CURRENCIES["XAU"] == (None, False)  # gold: no minor units
    assert CURRENCIES["XXX"] == (None, False)
