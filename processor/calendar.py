"""When a batch closes and settles, from the same rules file as the router (settlement/settlement_rules.toml).

Days and times are the batch currency's (the destination currency, as in the batch id). A batch stops
receiving at the moment after which the router can no longer assign a transaction to it:
- t0 of day D: the T0 cut-off on D (the router uses the earlier of both currencies' cut-offs, so this
  is never too early);
- t1 of day D: midnight starting D (t1 is the next business day after today);
- rtgs of day D: the RTGS close on D.
It closes that moment plus the grace period, by event time: once the watermark (the oldest of the
partitions' progress in event time, the events' occurred_at) passes it, so a processor that was down
or lagging changes when a batch closes, never what it holds; the grace covers records routed before
the cut-off that reach the log after later ones (the gateways' clocks disagree, a delivery retried). A t0
or t1 batch settles on D at the currency's `settlement_time`, or at its close when that is later. An
rtgs batch's transactions settle one by one (gross): each at its own routing time, or at the RTGS
opening of D when it came in before it; the batch is settled once it is closed and all of them are.
"""

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from processor.settings import ProcessorSettings
from settlement.events import parse_batch_id
from settlement.rules import (
    RulesFile,
    business_day_test,
    clock_time,
    default_rules_path,
    load_rules_file,
    resolved,
)


class BatchTimes(NamedTuple):
    closes_at: datetime  # the moment it closes (cut-off plus grace)
    settles_at: datetime  # t0/t1: when it settles; rtgs: the opening from which its members settle


class SettlementCalendar:
    """Batch times per (window, value date, currency), from the rules file."""

    def __init__(self, rules: RulesFile, grace: timedelta) -> None:
        self._rules = rules
        self._grace = grace
        self._cache: dict[str, BatchTimes] = {}
        self._business: dict[tuple[str, int], Callable[[date], bool]] = {}  # (currency, year) -> its test

    @classmethod
    def from_settings(cls, settings: ProcessorSettings) -> "SettlementCalendar":
        rules = load_rules_file(settings.rules_file() or default_rules_path())
        return cls(rules, timedelta(seconds=settings.close_grace_seconds))

    def batch_times(self, batch_id: str) -> BatchTimes:
        """When the batch `batch_id` closes and settles."""
        times = self._cache.get(batch_id)
        if times is None:
            times = self._cache[batch_id] = self._compute(*parse_batch_id(batch_id))
        return times

    def _compute(self, window: str, value_date: date, currency: str) -> BatchTimes:
        where = f"settlement rules: currencies.{currency}"
        rules = resolved(self._rules, currency if currency in self._rules.currencies else None)
        zone = ZoneInfo(rules["time_zone"])

        def at(day: date, key: str) -> datetime:
            return datetime.combine(day, clock_time(where, key, rules[key]), zone)

        if window == "rtgs":
            opening_day = value_date - timedelta(days=1) if rules["rtgs_opens_previous_day"] else value_date
            return BatchTimes(at(value_date, "rtgs_close") + self._grace, at(opening_day, "rtgs_open"))
        if window == "t0":
            closes = at(value_date, "t0_cutoff") + self._grace
        else:
            closes = datetime.combine(value_date, time(0, 0), zone) + self._grace
        return BatchTimes(closes, max(at(value_date, "settlement_time"), closes))

    def late_batch(self, batch_id: str, closed_through: datetime) -> tuple[str, date]:
        """The late path: the batch a transaction of `batch_id` joins when it is read after that batch
        closed: the next one of its window and currency, on the currency's next business day, that
        the watermark `closed_through` has not closed yet. Returns its id and value date."""
        window, day, currency = parse_batch_id(batch_id)
        for _ in range(3660):  # ten years of days: a calendar with no business day in it is a broken file
            day = self._next_business_day(currency, day)
            candidate = f"{window}-{day:%Y%m%d}-{currency}"
            if self.batch_times(candidate).closes_at > closed_through:
                return candidate, day
        raise ValueError(f"no business day of {currency} within ten years after {batch_id}")

    def _next_business_day(self, currency: str, day: date) -> date:
        """The router's business days (its weekend and holidays of the currency), one year at a time."""
        while True:
            day += timedelta(days=1)
            is_business_day = self._business.get((currency, day.year))
            if is_business_day is None:
                rules = resolved(self._rules, currency if currency in self._rules.currencies else None)
                where = f"settlement rules: currencies.{currency}"
                is_business_day = business_day_test(where, rules, range(day.year, day.year + 1))
                self._business[(currency, day.year)] = is_business_day
            if is_business_day(day):
                return day
