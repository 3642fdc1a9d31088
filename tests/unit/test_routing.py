"""Window routing at fixed instants, with the shipped rules, through both fastcore implementations."""

import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import fastcore
from fastcore.currencies import CURRENCIES
from gateway.errors import ConfigurationError
from gateway.intake.routing import EPOCH, business_day_test, default_rules_path, load_rules, load_rules_file, resolved

TWIN = fastcore.load_twin()
COMPILED_RULES = load_rules(None, date(2026, 6, 1))
TWIN_RULES = load_rules(None, date(2026, 6, 1), TWIN)
IMPLEMENTATIONS = [
    pytest.param((fastcore, COMPILED_RULES), id="compiled"),
    pytest.param((TWIN, TWIN_RULES), id="twin"),
]


def minor(amount, currency: str) -> int:
    """Whole units (a number or a decimal string) as minor units of the currency, exactly."""
    return int(Decimal(str(amount)).scaleb(CURRENCIES[currency][0]))


@pytest.fixture(params=IMPLEMENTATIONS)
def router(request):
    impl, rules = request.param

    def route(requested, source, destination, amount, at):
        # amounts in whole units of the source currency
        r = impl.route(
            rules, requested, source, destination, minor(amount, source), datetime.fromisoformat(at).timestamp()
        )
        return (r.window, r.value_date, r.reason, r.batch)

    return route


CASES = [
    # (what, requested, source, destination, amount, instant) -> (window, value date, reason)
    ("Friday after the USD T0 cut-off rolls to Monday",
     ("t0", "USD", "USD", 100, "2026-06-12T18:30:00-04:00"), ("t1", "2026-06-15", "after_cutoff")),
    ("Friday before the cut-off stays same day",
     ("t0", "USD", "USD", 100, "2026-06-12T17:59:00-04:00"), ("t0", "2026-06-12", "requested")),
    ("t1 on the Thursday before Juneteenth skips the holiday",
     ("t1", "USD", "USD", 100, "2026-06-18T10:00:00-04:00"), ("t1", "2026-06-22", "requested")),
    ("t0 on Juneteenth is not a business day",
     ("t0", "USD", "USD", 100, "2026-06-19T10:00:00-04:00"), ("t1", "2026-06-22", "non_business_day")),
    ("rtgs on Juneteenth keeps rtgs for the next opening",
     ("rtgs", "USD", "USD", 100, "2026-06-19T10:00:00-04:00"), ("rtgs", "2026-06-22", "non_business_day")),
    ("EUR t0 after the cut-off on Maundy Thursday skips Good Friday and Easter Monday",
     ("t0", "EUR", "EUR", 100, "2026-04-02T17:30:00+02:00"), ("t1", "2026-04-07", "after_cutoff")),
    ("EUR with no window on Good Friday",
     (None, "EUR", "EUR", 100, "2026-04-03T10:00:00+02:00"), ("t1", "2026-04-07", "auto")),
    ("EUR rtgs on Easter Monday",
     ("rtgs", "EUR", "EUR", 100, "2026-04-06T10:00:00+02:00"), ("rtgs", "2026-04-07", "non_business_day")),
    ("GBP t1 on the Friday before the summer bank holiday",
     ("t1", "GBP", "GBP", 100, "2026-08-28T11:00:00+01:00"), ("t1", "2026-09-01", "requested")),
    ("GBP t0 on the summer bank holiday",
     ("t0", "GBP", "GBP", 100, "2026-08-31T11:00:00+01:00"), ("t1", "2026-09-01", "non_business_day")),
    # US daylight saving begins Sunday 8 March 2026: the 18:00 cut-off moves from 23:00 to 22:00 UTC
    ("USD 22:30 UTC on the Friday before the spring switch is before the cut-off (EST)",
     ("t0", "USD", "USD", 100, "2026-03-06T22:30:00+00:00"), ("t0", "2026-03-06", "requested")),
    ("USD 22:30 UTC on the Monday after the spring switch is after the cut-off (EDT)",
     ("t0", "USD", "USD", 100, "2026-03-09T22:30:00+00:00"), ("t1", "2026-03-10", "after_cutoff")),
    ("USD rtgs on the spring switch Sunday evening: Fedwire is open for Monday from 21:00 EDT",
     ("rtgs", "USD", "USD", 100, "2026-03-08T21:30:00-04:00"), ("rtgs", "2026-03-09", "requested")),
    ("USD rtgs on the spring switch Sunday before Fedwire opens",
     ("rtgs", "USD", "USD", 100, "2026-03-08T20:30:00-04:00"), ("rtgs", "2026-03-09", "non_business_day")),
    # US daylight saving ends Sunday 1 November 2026: the day is 25 hours long
    ("USD late on the autumn switch Sunday is still Sunday locally",
     ("t0", "USD", "USD", 100, "2026-11-02T04:30:00+00:00"), ("t1", "2026-11-02", "non_business_day")),
    ("USD 22:30 UTC on the Monday after the autumn switch is before the cut-off again (EST)",
     ("t0", "USD", "USD", 100, "2026-11-02T22:30:00+00:00"), ("t0", "2026-11-02", "requested")),
    # UK summer time begins Sunday 29 March and ends Sunday 25 October 2026: cut-off 17:40 local
    ("GBP 17:30 UTC on the Friday before the spring switch is before the cut-off (GMT)",
     ("t0", "GBP", "GBP", 100, "2026-03-27T17:30:00+00:00"), ("t0", "2026-03-27", "requested")),
    ("GBP 17:30 UTC on the Monday after the spring switch is after the cut-off (BST)",
     ("t0", "GBP", "GBP", 100, "2026-03-30T17:30:00+00:00"), ("t1", "2026-03-31", "after_cutoff")),
    ("GBP 17:00 UTC on the Friday before the autumn switch is after the cut-off (BST)",
     ("t0", "GBP", "GBP", 100, "2026-10-23T17:00:00+00:00"), ("t1", "2026-10-26", "after_cutoff")),
    ("GBP 17:00 UTC on the Monday after the autumn switch is before the cut-off (GMT)",
     ("t0", "GBP", "GBP", 100, "2026-10-26T17:00:00+00:00"), ("t0", "2026-10-26", "requested")),
    ("USD to GBP on Juneteenth: GBP is open, USD is not",
     ("t0", "USD", "GBP", 100, "2026-06-19T10:00:00+01:00"), ("t1", "2026-06-22", "non_business_day")),
    ("GBP to USD over the UK summer bank holiday: USD is open, GBP is not",
     ("t1", "GBP", "USD", 100, "2026-08-28T12:00:00-04:00"), ("t1", "2026-09-01", "requested")),
    ("EUR to USD on Good Friday: the Fed is open, TARGET is not",
     (None, "EUR", "USD", 100, "2026-04-03T10:00:00-04:00"), ("t1", "2026-04-07", "auto")),
    ("cross-currency t0 needs the earlier cut-off: 16:00 New York is after London's 17:40",
     ("t0", "GBP", "USD", 100, "2026-06-16T12:45:00-04:00"), ("t1", "2026-06-17", "after_cutoff")),
    ("cross-currency t0 before both cut-offs",
     ("t0", "GBP", "USD", 100, "2026-06-16T11:00:00-04:00"), ("t0", "2026-06-16", "requested")),
    ("high value overrides a requested t1 during Fedwire hours",
     ("t1", "USD", "USD", 2_000_000, "2026-06-16T10:00:00-04:00"), ("rtgs", "2026-06-16", "high_value")),
    ("high value with no window is rtgs",
     (None, "USD", "USD", 1_000_000, "2026-06-16T10:00:00-04:00"), ("rtgs", "2026-06-16", "high_value")),
    ("high value after Fedwire's close goes to the next opening",
     (None, "USD", "USD", 5_000_000, "2026-06-16T19:30:00-04:00"), ("rtgs", "2026-06-17", "after_cutoff")),
    ("below the threshold with no window before the cut-off is t0",
     (None, "USD", "USD", 999_999.99, "2026-06-16T10:00:00-04:00"), ("t0", "2026-06-16", "auto")),
    ("after the cut-off with no window is t1",
     (None, "USD", "USD", 100, "2026-06-16T18:30:00-04:00"), ("t1", "2026-06-17", "auto")),
    ("New Year's Eve t1 skips New Year's Day and the weekend",
     ("t1", "USD", "USD", 100, "2026-12-31T10:00:00-05:00"), ("t1", "2027-01-04", "requested")),
    ("JPY t1 on 30 December: BOJ-NET is closed 31 December to 3 January",
     ("t1", "JPY", "JPY", 100_000, "2026-12-30T10:00:00+09:00"), ("t1", "2027-01-04", "requested")),
    ("a currency without rules of its own uses the defaults (UTC, weekends)",
     ("t0", "BRL", "ZAR", 100, "2026-06-19T13:00:00+00:00"), ("t0", "2026-06-19", "requested")),
    # Kuwait settles Sunday to Thursday: Friday and Saturday are its weekend (Asia/Kuwait, UTC+3)
    ("KWD t0 on a Friday is not a business day: t1 on Sunday",
     ("t0", "KWD", "KWD", 100, "2026-10-09T10:00:00+03:00"), ("t1", "2026-10-11", "non_business_day")),
    ("KWD t0 on a Saturday is not a business day either",
     ("t0", "KWD", "KWD", 100, "2026-10-10T10:00:00+03:00"), ("t1", "2026-10-11", "non_business_day")),
    ("KWD t0 on a Sunday is a business day",
     ("t0", "KWD", "KWD", 100, "2026-10-11T10:00:00+03:00"), ("t0", "2026-10-11", "requested")),
    ("KWD t1 on a Thursday settles on Sunday",
     ("t1", "KWD", "KWD", 100, "2026-10-08T10:00:00+03:00"), ("t1", "2026-10-11", "requested")),
    ("KWD rtgs on a Friday keeps rtgs for Sunday's opening",
     ("rtgs", "KWD", "KWD", 100, "2026-10-09T10:00:00+03:00"), ("rtgs", "2026-10-11", "non_business_day")),
    ("SAR with no window on a Sunday is same day",
     (None, "SAR", "SAR", 100, "2026-10-11T10:00:00+03:00"), ("t0", "2026-10-11", "auto")),
    ("USD to KWD on a Friday: the Fed is open, Kuwait is not",
     ("t0", "USD", "KWD", 100, "2026-10-09T10:00:00+03:00"), ("t1", "2026-10-13", "non_business_day")),
    ("USD to KWD t1 from Thursday: Friday and Saturday are Kuwait's weekend, Sunday the Fed's, Monday Columbus Day",
     ("t1", "USD", "KWD", 100, "2026-10-08T10:00:00+03:00"), ("t1", "2026-10-13", "requested")),
]  # fmt: skip


@pytest.mark.parametrize(("what", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_routing_at_fixed_instants(router, what, args, expected):
    window, value_date, reason, batch = router(*args)
    assert (window, value_date, reason) == expected, what
    assert batch == f"{window}-{value_date.replace('-', '')}-{args[2]}"


def test_outside_the_compiled_years_refuses_to_route(router):
    with pytest.raises(fastcore.RoutingUnavailable):
        router("t1", "USD", "USD", 100, "2035-01-02T10:00:00+00:00")


def test_compiled_router_and_twin_agree_on_100000_random_cases():
    rng = random.Random(20260619)
    currencies = [*COMPILED_RULES.calendars, "BRL", "ZAR", "KWD", "INR"]
    first = (COMPILED_RULES.first_day + 1) * 86400
    last = (COMPILED_RULES.first_day + COMPILED_RULES.days - 10) * 86400
    windows = [None, "rtgs", "t0", "t1"]
    disagreements = []
    for _ in range(100_000):
        args = (
            rng.choice(windows),
            rng.choice(currencies),
            rng.choice(currencies),
            rng.choice([1, 10_000, 99_999_999, 100_000_000, 10**12]) + rng.randrange(1000),
            rng.uniform(first, last),
        )
        compiled = fastcore.route(COMPILED_RULES, *args)
        twin = TWIN.route(TWIN_RULES, *args)
        a = (compiled.window, compiled.value_date, compiled.batch, compiled.reason, compiled.requested_window)
        b = (twin.window, twin.value_date, twin.batch, twin.reason, twin.requested_window)
        if a != b:
            disagreements.append((args, a, b))
    assert disagreements == []


def test_calendar_tables_cover_the_configured_years():
    assert date.fromordinal(EPOCH.toordinal() + COMPILED_RULES.first_day) == date(2025, 1, 1)
    assert COMPILED_RULES.days == (date(2029, 12, 31) - date(2025, 1, 1)).days + 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('[currencies.USD]\ntime_zone = "Mars/Olympus"', "currencies.USD.time_zone"),
        ('[currencies.USD]\nt0_cutoff = "25:99"', "currencies.USD.t0_cutoff"),
        ('[currencies.USD]\ncalendar = "lunar"', "currencies.USD.calendar"),
        ('[currencies.USD]\ncalendar = "country:XX"', "currencies.USD.calendar"),
        ('[currencies.USD]\nhigh_value = "-5"', "currencies.USD.high_value"),
        ('[currencies.USD]\nclosed_days = ["13-45"]', "currencies.USD.closed_days"),
        ('[currencies.USD]\nweekend = ["Fri", "Sabbath"]', "currencies.USD.weekend: 'Sabbath'"),
        ('[currencies.USD]\nweekend = ["Sat", "Sat"]', "currencies.USD.weekend names a day twice"),
        (
            '[currencies.USD]\nweekend = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]',
            "currencies.USD.weekend leaves no business day",
        ),
        ('[currencies.XAU]\ntime_zone = "UTC"', "currencies.XAU"),
        ('[currencies.USD]\ncut_off = "17:00"', "cut_off"),
        ('[currencies.EUR]\nrtgs_open = "18:00"\nrtgs_close = "07:00"', "currencies.EUR"),
    ],
)
def test_a_bad_rules_file_names_the_key(tmp_path: Path, change: str, message: str):
    defaults = default_rules_path().read_text().split("[currencies.")[0]  # years and [defaults] only
    path = tmp_path / "rules.toml"
    path.write_text(defaults + "\n" + change + "\n")
    with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
        load_rules(path, date(2026, 6, 1))


def test_a_minimal_rules_file_loads(tmp_path: Path):
    path = tmp_path / "rules.toml"
    path.write_text(default_rules_path().read_text().split("[currencies.")[0])
    rules = load_rules(path, date(2026, 6, 1))
    assert rules.calendars == {}


def test_missing_rules_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="rules file"):
        load_rules(tmp_path / "absent.toml", date(2026, 6, 1))


# --- business days: the weekend of each currency, and the holidays of its calendar --------------------------


def test_business_day_test_follows_each_currency_weekend():
    rules = load_rules_file(default_rules_path())
    kuwait = business_day_test("currencies.KWD", resolved(rules, "KWD"), range(2026, 2027))
    default = business_day_test("defaults", resolved(rules, None), range(2026, 2027))
    thursday, friday, saturday, sunday = (date(2026, 10, d) for d in (8, 9, 10, 11))
    assert [kuwait(d) for d in (thursday, friday, saturday, sunday)] == [True, False, False, True]
    assert [default(d) for d in (thursday, friday, saturday, sunday)] == [True, True, False, False]
    assert not kuwait(date(2026, 8, 25))  # a Tuesday, the Prophet's Birthday (the package's estimate)
    usd = business_day_test("currencies.USD", resolved(rules, "USD"), range(2026, 2027))
    assert not usd(date(2026, 6, 19)) and usd(date(2026, 6, 18))  # Juneteenth


@pytest.mark.parametrize(
    ("impl", "compiled"), [(fastcore, COMPILED_RULES), (TWIN, TWIN_RULES)], ids=["compiled", "twin"]
)
def test_the_compiled_calendar_is_the_business_day_test(impl, compiled):
    """A t1 instruction made at noon local time settles on the currency's next business day, as
    business_day_test (which the settlement processor also uses) counts them."""
    rules = load_rules_file(default_rules_path())
    first = date.fromordinal(EPOCH.toordinal() + compiled.first_day)
    for code in ("KWD", "SAR", "EGP", "USD", "JPY", "BRL"):
        values = resolved(rules, code if code in rules.currencies else None)
        is_business_day = business_day_test(code, values, range(first.year, first.year + 5))
        zone = ZoneInfo(values["time_zone"])
        for day in (date(2026, 10, 1) + timedelta(days=n) for n in range(45)):
            expected = day + timedelta(days=1)
            while not is_business_day(expected):
                expected += timedelta(days=1)
            noon = datetime(day.year, day.month, day.day, 12, tzinfo=zone).timestamp()
            assert impl.route(compiled, "t1", code, code, 100, noon).value_date == expected.isoformat(), (code, day)
