"""Settlement-window rules: read from TOML, checked, and compiled into fastcore's routing tables.

Compilation expands each currency's weekend and holiday calendar into a business-day table over the configured
years and turns its wall-clock times into Unix instants per day, so daylight-saving changes are
resolved once at start-up and the router does integer comparisons only.
"""

import tomllib
from array import array
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import msgspec

import fastcore
from fastcore.currencies import CURRENCIES
from gateway.errors import ConfigurationError

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
    high_value: str | None = None
    settlement_time: str | None = None
    weekend: list[str] | None = None


class RulesFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole rules file."""

    defaults: CurrencyRules
    currencies: dict[str, CurrencyRules] = {}
    years_back: int = 1
    years_ahead: int = 3


_FIELDS = CurrencyRules.__struct_fields__


def default_rules_path() -> Path:
    """The rules file shipped with the gateway."""
    return Path(str(resources.files("gateway.intake").joinpath("settlement_rules.toml")))


def load_rules_file(path: Path) -> RulesFile:
    """Parse and type-check the file; ConfigurationError names the offending key."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"settlement rules file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"settlement rules file {path}: {exc}") from None
    try:
        rules = msgspec.convert(raw, RulesFile)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"settlement rules file {path}: {exc}") from None
    missing = [name for name in _FIELDS if getattr(rules.defaults, name) is None]
    if missing:
        raise ConfigurationError(f"settlement rules file {path}: [defaults] lacks {', '.join(missing)}")
    if not 0 <= rules.years_back <= 10 or not 1 <= rules.years_ahead <= 20:
        raise ConfigurationError(f"settlement rules file {path}: years_back must be 0-10 and years_ahead 1-20")
    return rules


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


def high_value_minor(where: str, text: str, minor_units: int) -> int:
    """A high-value threshold in whole units as an integer of minor units."""
    try:
        threshold = Decimal(text)
    except InvalidOperation:
        raise ConfigurationError(f"{where}.high_value: {text!r} is not a number") from None
    if not threshold.is_finite() or threshold <= 0:
        raise ConfigurationError(f"{where}.high_value must be greater than zero")
    return int(threshold.scaleb(minor_units))


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
    settleable = {code: units for code, (units, fund) in CURRENCIES.items() if units is not None and not fund}
    calendars = {}
    for code in rules.currencies:
        if code not in settleable:
            raise ConfigurationError(f"{source}: currencies.{code} is not a settleable ISO 4217 currency")
        calendars[code] = compile_calendar(f"{source}: currencies.{code}", resolved(rules, code), first, last, impl)
    default = compile_calendar(f"{source}: defaults", resolved(rules, None), first, last, impl)
    # every settleable currency gets a threshold, scaled by its own minor units
    high_value = {
        code: high_value_minor(
            f"{source}: currencies.{code}" if code in rules.currencies else f"{source}: defaults",
            resolved(rules, code)["high_value"],
            units,
        )
        for code, units in settleable.items()
    }
    return impl.Rules((first - EPOCH).days, calendars, default, high_value)


def load_rules(path: Path | None, today: date, impl: ModuleType = fastcore) -> Any:
    """Read, check and compile the rules file (the shipped default when `path` is None)."""
    path = path or default_rules_path()
    return compile_rules(load_rules_file(path), today, f"settlement rules file {path}", impl)
