"""The shipped per-currency thresholds and maxima are what tools/generate_thresholds.py makes from its rates."""

import importlib.util
from decimal import Decimal
from pathlib import Path

from settlement.rules import default_rules_path, load_rules_file, settleable_currencies

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("generate_thresholds", ROOT / "tools" / "generate_thresholds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()


def test_the_rules_file_table_matches_regeneration():
    current = default_rules_path().read_text()
    assert GENERATOR.rendered_rules(current) == current, "run tools/generate_thresholds.py"


def test_the_documented_table_matches_regeneration():
    current = (ROOT / "docs" / "settlement-rules.md").read_text()
    assert GENERATOR.rendered_docs(current) == current, "run tools/generate_thresholds.py"


def test_every_settleable_currency_has_its_own_values_in_the_shipped_file():
    thresholds = load_rules_file(default_rules_path()).thresholds
    assert set(thresholds) == set(settleable_currencies())
    assert (thresholds["USD"].high_value, thresholds["USD"].max_amount) == (1_000_000, 1_000_000_000)  # as before


def test_each_value_is_within_a_factor_of_root_two_of_its_usd_equivalent_and_readable():
    thresholds = load_rules_file(default_rules_path()).thresholds
    for code, (per_usd, _) in GENERATOR.rates().items():
        amounts = thresholds[code]
        for value, usd in ((amounts.high_value, 10**6), (amounts.max_amount, 10**9)):
            ratio = Decimal(value) / (per_usd * usd)
            assert Decimal("0.7071") < ratio < Decimal("1.4143"), (code, value)
            digits = str(value).rstrip("0")
            assert digits in ("1", "2", "25", "5"), (code, value)


def test_rounding_picks_the_nearest_readable_number_on_a_log_scale():
    readable = GENERATOR.readable
    assert readable(Decimal(1_000_000)) == 1_000_000
    assert readable(Decimal(1_414_000)) == 1_000_000  # just below √2
    assert readable(Decimal(1_415_000)) == 2_000_000
    assert readable(Decimal(2_300_000)) == 2_500_000
    assert readable(Decimal(3_600_000)) == 5_000_000  # above √12.5 ≈ 3.536
    assert readable(Decimal(7_000_000)) == 5_000_000  # below √50 ≈ 7.071
    assert readable(Decimal(7_100_000)) == 10_000_000
    assert readable(Decimal(308_300)) == 250_000  # KWD
