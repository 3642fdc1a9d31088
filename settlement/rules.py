"""Settlement-window rules: read from TOML, checked, and compiled into fastcore's routing tables.

Compilation expands each currency's weekend and holiday calendar into a business-day table over the
configured years and turns its wall-clock times into Unix instants per day, so daylight-saving changes
are resolved once at start-up and the router does integer comparisons only. The same file gives every
settleable currency its own high-value threshold and maximum amount (`[thresholds]`), compiled into
fastcore's Rules and Policy.
"""

import tomllib
from array import array
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import msgspec

import fastcore
from fastcore.currencies import CURRENCIES
from settlement.errors import ConfigurationError

EPOCH = date(1970, 1, 1)
# `weekend` names days as date.weekday() numbers them
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class CurrencyRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One currency's rules as written in the file (every field optional: defaults fill the gaps)."""

    time_zone: str | None = None
    calendar: str | None = None
    closed_days: list[str] | None = None
    rtgs_open: str | None = None
    rtgs_close: str | None = None
    rtgs_opens_previous_day: bool | None = None
    t0_cutoff: str | None = None
    settlement_time: str | None = None
    weekend: list[str] | None = None


class Thresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One currency's amounts, in whole units of it: at or above `high_value` goes to rtgs, above
    `max_amount` is refused."""

    high_value: int
    max_amount: int


class RulesFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole rules file."""

    defaults: CurrencyRules
    currencies: dict[str, CurrencyRules] = {}
    thresholds: dict[str, Thresholds] = {}
    years_back: int = 1
    years_ahead: int = 3


_FIELDS = CurrencyRules.__struct_fields__


def default_rules_path() -> Path:
    """The rules file shipped with the gateway."""
    return Path(str(resources.files("settlement").joinpath("settlement_rules.toml")))


def settleable_currencies() -> dict[str, int]:
    """Active ISO 4217 codes with defined minor units that are not fund codes: code -> minor units."""
    return {code: units for code, (units, fund) in CURRENCIES.items() if units is not None and not fund}


def load_rules_file(path: Path) -> RulesFile:
    """Parse and type-check the file; ConfigurationError names the offending key."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"settlement rules file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"settlement rules file {path}: {exc}") from None
    _refuse_moved_keys(f"settlement rules file {path}", raw)
    try:
        rules = msgspec.convert(raw, RulesFile)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"settlement rules file {path}: {_located(raw, exc)}") from None
    missing = [name for name in _FIELDS if getattr(rules.defaults, name) is None]
    if missing:
        raise ConfigurationError(f"settlement rules file {path}: [defaults] lacks {', '.join(missing)}")
    if not 0 <= rules.years_back <= 10 or not 1 <= rules.years_ahead <= 20:
        raise ConfigurationError(f"settlement rules file {path}: years_back must be 0-10 and years_ahead 1-20")
    check_thresholds(f"settlement rules file {path}", rules.thresholds)
    return rules


def _located(raw: dict[str, Any], exc: msgspec.ValidationError) -> str:
    """msgspec says `$.thresholds[...]` for an entry of a table of tables: name the currency instead."""
    message = str(exc)
    for table, kind in (("currencies", CurrencyRules), ("thresholds", Thresholds)):
        entries = raw.get(table)
        if f"`$.{table}[...]" not in message or not isinstance(entries, dict):
            continue
        for code, entry in entries.items():
            try:
                msgspec.convert(entry, kind)
            except msgspec.ValidationError as inner:
                text, at, path = str(inner).partition(" - at `$")
                return f"{text} - at `$.{table}.{code}{path if at else '`'}"
    return message


def _refuse_moved_keys(source: str, raw: dict[str, Any]) -> None:
    """A file written before issue 22 says high_value in whole units of any currency; say where it went."""
    currencies = raw.get("currencies")
    tables = {"defaults": raw.get("defaults")} | (
        {f"currencies.{code}": table for code, table in currencies.items()} if isinstance(currencies, dict) else {}
    )
    for where, table in tables.items():
        for key in ("high_value", "max_amount"):
            if isinstance(table, dict) and key in table:
                raise ConfigurationError(
                    f"{source}: {where}.{key} belongs in [thresholds] now, where every settleable currency has "
                    "its own high_value and max_amount in its own units (see docs/settlement-rules.md)"
                )


def check_thresholds(source: str, thresholds: dict[str, Thresholds]) -> None:
    """Every settleable currency, and nothing else, has a positive threshold no larger than its maximum,
    and the maximum fits fastcore's 18 digits of minor units. No currency borrows another's units."""
    settleable = settleable_currencies()
    unknown = sorted(code for code in thresholds if code not in settleable)
    if unknown:
        raise ConfigurationError(f"{source}: thresholds.{unknown[0]} is not a settleable ISO 4217 currency")
    missing = sorted(code for code in settleable if code not in thresholds)
    if missing:
        raise ConfigurationError(
            f"{source}: [thresholds] lacks {len(missing)} settleable currencies ({', '.join(missing)}): every one "
            "needs its own high_value and max_amount, in its own units"
        )
    for code, amounts in thresholds.items():
        where = f"{source}: thresholds.{code}"
        if amounts.high_value <= 0 or amounts.max_amount <= 0:
            raise ConfigurationError(f"{where}: high_value and max_amount must be greater than zero")
        if amounts.high_value > amounts.max_amount:
            raise ConfigurationError(
                f"{where}: high_value {amounts.high_value} exceeds max_amount {amounts.max_amount}"
            )
        if amounts.max_amount * 10 ** settleable[code] >= 10**18:
            raise ConfigurationError(
                f"{where}.max_amount: {amounts.max_amount} needs more than 18 digits in minor units"
            )


def resolved(rules: RulesFile, code: str | None) -> dict[str, Any]:
    """One currency's rules, the defaults filling what it leaves out (None: the defaults alone)."""
    own = rules.currencies.get(code) if code else None
    return {
        name: getattr(own, name)
        if own is not None and getattr(own, name) is not None
        else getattr(rules.defaults, name)
        for name in _FIELDS
    }


def clock_time(where: str, key: str, text: str) -> time:
    """A wall-clock time "HH:MM" of the file; ConfigurationError naming the key otherwise."""
    try:
        hours, minutes = text.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigurationError(f"{where}.{key}: {text!r} is not a time HH:MM") from None


def closed_dates(where: str, calendar: str, closed_days: list[str], years: range) -> set[date]:
    """Holidays (weekdays or not) of a calendar spec over `years`, plus the yearly extra closures."""
    kind, _, spec = calendar.partition(":")
    try:
        if kind == "weekends" and not spec:
            days: set[date] = set()
        elif kind == "financial" and spec:
            days = set(holidays.financial_holidays(spec, years=years).keys())
        elif kind == "country" and spec:
            country, _, subdivision = spec.partition(":")
            days = set(holidays.country_holidays(country, subdiv=subdivision or None, years=years).keys())
        else:
            raise ConfigurationError(
                f"{where}.calendar: {calendar!r} is not weekends, financial:<MIC> or country:<code>[:<subdivision>]"
            )
    except NotImplementedError:
        raise ConfigurationError(f"{where}.calendar: {calendar!r} is not known to the holidays package") from None
    for day in closed_days:
        try:
            month, day_of_month = (int(part) for part in day.split("-"))
            days.update(date(year, month, day_of_month) for year in years)
        except ValueError:
            raise ConfigurationError(f"{where}.closed_days: {day!r} is not MM-DD") from None
    return days


def weekend_days(where: str, names: Iterable[str]) -> frozenset[int]:
    """The `weekend` key ("Sat", "Sun") as date.weekday() numbers; ConfigurationError naming the key."""
    days = []
    for name in names:
        if name not in WEEKDAYS:
            raise ConfigurationError(f"{where}.weekend: {name!r} is not one of {', '.join(WEEKDAYS)}")
        days.append(WEEKDAYS.index(name))
    if len(set(days)) != len(days):
        raise ConfigurationError(f"{where}.weekend names a day twice")
    if len(days) >= len(WEEKDAYS):
        raise ConfigurationError(f"{where}.weekend leaves no business day in the week")
    return frozenset(days)


def business_day_test(where: str, values: dict[str, Any], years: range) -> Callable[[date], bool]:
    """Whether a day is a business day of one currency: not in its `weekend` and not a closed date of its
    calendar over `years`. `values` is `resolved(rules, code)`; `where` names it in errors."""
    weekend = weekend_days(where, values["weekend"])
    closed = closed_dates(where, values["calendar"], values["closed_days"], years)

    def is_business_day(day: date) -> bool:
        return day.weekday() not in weekend and day not in closed

    return is_business_day


def compile_calendar(where: str, values: dict[str, Any], first: date, last: date, impl: ModuleType = fastcore) -> Any:
    """One currency's fastcore calendar over [first, last]."""
    try:
        zone = ZoneInfo(values["time_zone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"{where}.time_zone: {values['time_zone']!r} is not an IANA time zone") from None
    opening = clock_time(where, "rtgs_open", values["rtgs_open"])
    closing = clock_time(where, "rtgs_close", values["rtgs_close"])
    cutoff = clock_time(where, "t0_cutoff", values["t0_cutoff"])
    clock_time(where, "settlement_time", values["settlement_time"])  # the processor's; checked here too
    previous_evening = values["rtgs_opens_previous_day"]
    if not previous_evening and opening >= closing:
        raise ConfigurationError(f"{where}: rtgs_open must be before rtgs_close (or set rtgs_opens_previous_day)")
    is_business_day = business_day_test(where, values, range(first.year, last.year + 1))

    def instant(day: date, at: time) -> int:
        return int(datetime.combine(day, at, zone).timestamp())

    business, day_start, rtgs_open, rtgs_close, t0_cutoff = array("B"), array("q"), array("q"), array("q"), array("q")
    day = first
    while day <= last:
        business.append(is_business_day(day))
        day_start.append(instant(day, time(0, 0)))
        rtgs_open.append(instant(day - timedelta(days=1) if previous_evening else day, opening))
        rtgs_close.append(instant(day, closing))
        t0_cutoff.append(instant(day, cutoff))
        day += timedelta(days=1)
    return impl.CurrencyCalendar(business, day_start, rtgs_open, rtgs_close, t0_cutoff)


def compile_rules(rules: RulesFile, today: date, source: str = "settlement rules", impl: ModuleType = fastcore) -> Any:
    """Every currency's calendar, and the default one, over the configured years around `today`.

    `impl` is the fastcore implementation to build for (the twin, in tests and benchmarks)."""
    first = date(today.year - rules.years_back, 1, 1)
    last = date(today.year + rules.years_ahead, 12, 31)
    settleable = settleable_currencies()
    calendars = {}
    for code in rules.currencies:
        if code not in settleable:
            raise ConfigurationError(f"{source}: currencies.{code} is not a settleable ISO 4217 currency")
        calendars[code] = compile_calendar(f"{source}: currencies.{code}", resolved(rules, code), first, last, impl)
    default = compile_calendar(f"{source}: defaults", resolved(rules, None), first, last, impl)
    check_thresholds(source, rules.thresholds)
    # each currency's own threshold, scaled by its own minor units
    high_value = {code: rules.thresholds[code].high_value * 10**units for code, units in settleable.items()}
    try:
        return impl.Rules((first - EPOCH).days, calendars, default, high_value)
    except fastcore.PolicyError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None


def compile_policy(
    rules: RulesFile,
    blocked_pairs: Sequence[tuple[str, str]] = (),
    source: str = "settlement rules",
    impl: ModuleType = fastcore,
) -> Any:
    """fastcore's validation Policy: each currency's own maximum amount, and the blocked pairs."""
    check_thresholds(source, rules.thresholds)  # the maxima are sound, so fastcore can only object to a pair
    try:
        return impl.Policy({code: amounts.max_amount for code, amounts in rules.thresholds.items()}, blocked_pairs)
    except fastcore.PolicyError as exc:
        raise ConfigurationError(str(exc)) from None


def load_rules(path: Path | None, today: date, impl: ModuleType = fastcore) -> Any:
    """Read, check and compile the rules file's routing rules (the shipped default when `path` is None)."""
    path = path or default_rules_path()
    return compile_rules(load_rules_file(path), today, f"settlement rules file {path}", impl)


def load_policy(path: Path | None, blocked_pairs: Sequence[tuple[str, str]] = (), impl: ModuleType = fastcore) -> Any:
    """Read, check and compile the rules file's maxima, with the blocked pairs, into a Policy."""
    path = path or default_rules_path()
    return compile_policy(load_rules_file(path), blocked_pairs, f"settlement rules file {path}", impl)
