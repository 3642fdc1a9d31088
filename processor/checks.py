"""Every record is checked completely before it reaches SQL, by the rules the gateway enforces.

What fails is quarantined (`unreadable`, with the reason) and the fold goes on: one bad record in the
log (a foreign producer, a bug, a hand-written test record) must never stop settlement for everyone.
The transaction itself goes through the gateway's own validation (fastcore); the routing must agree
with itself (the batch id is `{window}-{value date}-{destination currency}`) and with the calendar.
"""

import functools
import re
from datetime import date, datetime

import fastcore
from fastcore.currencies import CURRENCIES
from processor.calendar import SettlementCalendar
from settlement.events import TransactionAccepted

WINDOWS = frozenset(("rtgs", "t0", "t1"))
REASONS = frozenset(("requested", "high_value", "after_cutoff", "non_business_day", "auto"))
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Any amount the gateway ever accepted passes, whatever its maximum was then: the largest that
# fastcore can hold for each currency (below 10^18 in minor units).
_POLICY = fastcore.Policy(
    {code: 10 ** (18 - units) - 1 for code, (units, fund) in CURRENCIES.items() if units is not None and not fund}
)


def problem(event: TransactionAccepted, calendar: SettlementCalendar) -> str | None:
    """Why the event cannot be folded, or None when it can."""
    if not _IDENTIFIER.fullmatch(event.partner):
        return "partner: not an identifier"
    if not _IDENTIFIER.fullmatch(event.event_id):
        return "event_id: not an identifier"
    if not _FINGERPRINT.fullmatch(event.fingerprint):
        return "fingerprint: not a SHA-256 in lower-case hex"
    txn = event.transaction
    amount = txn.amount.encode()
    if not amount or not amount.replace(b".", b"", 1).isdigit():  # a plain decimal: no sign, exponent, NaN
        return f"transaction.amount: {txn.amount[:40]!r} is not a decimal string"
    try:
        fastcore.validate(
            _POLICY, txn.transaction_id, b'"' + amount + b'"', txn.source_currency, txn.destination_currency,
            txn.source_account, txn.destination_account, txn.counterparty_id, event.idempotency_key, None,
            txn.settlement_window, txn.metadata,
        )  # fmt: skip
    except fastcore.ValidationFailed as exc:
        return "; ".join(f"transaction.{field}: {code} ({message})" for field, code, message in exc.errors)[:500]
    routing = event.routing
    reason = _routing_problem(
        routing.window, routing.requested_window, routing.reason, routing.value_date, routing.batch,
        txn.destination_currency, calendar,
    )  # fmt: skip
    if reason is not None:
        return reason
    try:
        occurred = datetime.fromisoformat(event.occurred_at)
    except ValueError:
        return f"occurred_at: {event.occurred_at[:40]!r} is not an ISO 8601 instant"
    if occurred.tzinfo is None:
        return "occurred_at: no UTC offset"
    return None


@functools.lru_cache(maxsize=4096)  # a log holds few distinct routings: each is checked once
def _routing_problem(
    window: str,
    requested_window: str | None,
    reason: str,
    value_date: str,
    batch: str,
    destination_currency: str,
    calendar: SettlementCalendar,
) -> str | None:
    """Why a routing cannot be folded: a window or reason unknown, a value date that is not one, a batch
    id that disagrees with the rest, or one the calendar cannot time. None when it can."""
    if window not in WINDOWS:
        return f"routing.window: {window[:20]!r} is not rtgs, t0 or t1"
    if requested_window is not None and requested_window not in WINDOWS:
        return f"routing.requested_window: {requested_window[:20]!r} is not rtgs, t0 or t1"
    if reason not in REASONS:
        return f"routing.reason: {reason[:40]!r} is not a routing reason"
    try:
        if not _DATE.fullmatch(value_date):
            raise ValueError
        day = date.fromisoformat(value_date)
    except ValueError:
        return f"routing.value_date: {value_date[:40]!r} is not a date YYYY-MM-DD"
    expected = f"{window}-{day:%Y%m%d}-{destination_currency}"
    if batch != expected:
        return f"routing.batch: {batch[:80]!r} does not agree with the routing ({expected})"
    try:
        calendar.batch_times(batch)
    except (ValueError, OverflowError) as exc:
        return f"routing.batch: {batch} has no settlement times ({exc})"
    return None
