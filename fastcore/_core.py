"""Validation and settlement-window routing of one transaction: the compiled hot path.

Written in Cython's pure-Python mode. `setup.py` compiles this file into the extension
`fastcore._core`; the very same source loaded as plain Python is the twin (`fastcore._core_py`).
The tests run every case through both and compare. Plain values in, plain values out, and only
fastcore's own errors raised.
"""

import json

import cython

from fastcore.currencies import CURRENCIES
from fastcore.errors import PolicyError, RoutingUnavailable, ValidationFailed

COMPILED = cython.compiled

# C constants when compiled (a Python global would cost a dictionary lookup on every use).
IDENTIFIER_MAX = cython.declare(cython.Py_ssize_t, 64)
IDEMPOTENCY_KEY_MAX = cython.declare(cython.Py_ssize_t, 255)
METADATA_MAX_ENTRIES = cython.declare(cython.Py_ssize_t, 16)
METADATA_KEY_MAX = cython.declare(cython.Py_ssize_t, 64)
METADATA_VALUE_MAX = cython.declare(cython.Py_ssize_t, 256)
EXPONENT_MAX = cython.declare(cython.int, 30)
# Amounts are held as int64 minor units; 18 significant digits always fit.
DIGITS_MAX = cython.declare(cython.int, 18)
# What the amount parser returns for an amount above its currency's maximum (-1 is any other error).
ABOVE_MAXIMUM = cython.declare(cython.longlong, -2)

WINDOW_RTGS = "rtgs"
WINDOW_T0 = "t0"
WINDOW_T1 = "t1"
WINDOWS = (WINDOW_RTGS, WINDOW_T0, WINDOW_T1)


@cython.cfunc
@cython.inline
def _pow10(n: cython.int) -> cython.longlong:
    result: cython.longlong = 1
    while n > 0:
        result *= 10
        n -= 1
    return result


def _settleable_currencies() -> dict:
    """Active ISO 4217 codes with defined minor units that are not fund codes."""
    return {code: units for code, (units, fund) in CURRENCIES.items() if units is not None and not fund}


@cython.cclass
class Policy:
    """Validation limits, compiled once at start-up from configuration."""

    minor_units = cython.declare(dict, visibility="readonly")
    max_amounts = cython.declare(dict, visibility="readonly")
    max_minor = cython.declare(dict, visibility="readonly")
    blocked_pairs = cython.declare(dict, visibility="readonly")

    def __init__(self, max_amounts: dict, blocked_pairs=()):
        """`max_amounts`: every settleable currency's largest amount per transaction, a positive whole
        number of its own units (code -> int); `blocked_pairs`: (source, destination) codes."""
        self.minor_units = _settleable_currencies()
        if max(self.minor_units.values()) > 4:
            raise PolicyError("a currency with more than 4 minor units cannot be formatted")
        # One count of units would mean a few dollars in one currency and billions in another, so
        # every currency brings its own maximum, and a missing one is an error, not a default.
        missing = sorted(code for code in self.minor_units if code not in max_amounts)
        if missing:
            raise PolicyError(f"no maximum amount for {len(missing)} settleable currencies: {', '.join(missing)}")
        ceiling = _pow10(DIGITS_MAX)
        self.max_amounts = {}
        self.max_minor = {}
        for code, maximum in max_amounts.items():
            units = self.minor_units.get(code)
            if units is None:
                raise PolicyError(f"maximum amount for {code!r}, which is not a settleable ISO 4217 currency")
            if type(maximum) is not int or maximum <= 0:
                raise PolicyError(f"maximum amount of {code} must be a positive whole number, got {maximum!r}")
            limit = maximum * _pow10(units)
            if limit >= ceiling:
                raise PolicyError(
                    f"maximum amount {maximum} is too large for {code} (at most 18 digits in minor units)"
                )
            self.max_amounts[code] = maximum
            self.max_minor[code] = limit
        pairs: dict = {}
        for source, destination in blocked_pairs:
            for code in (source, destination):
                if code not in self.minor_units:
                    raise PolicyError(f"blocked pair names {code!r}, which is not a settleable ISO 4217 currency")
            pairs.setdefault(source, set()).add(destination)
        self.blocked_pairs = {source: frozenset(destinations) for source, destinations in pairs.items()}


@cython.cclass
class Instruction:
    """The parts of a valid transaction that validation computed (the rest is the caller's own input)."""

    amount = cython.declare(str, visibility="readonly")
    amount_minor = cython.declare(cython.longlong, visibility="readonly")
    minor_units = cython.declare(cython.int, visibility="readonly")
    idempotency_key = cython.declare(str, visibility="readonly")
    requested_window = cython.declare(object, visibility="readonly")

    def __init__(
        self,
        amount: str,
        amount_minor: cython.longlong,
        minor_units: cython.int,
        idempotency_key: str,
        requested_window,
    ):
        self.amount = amount
        self.amount_minor = amount_minor
        self.minor_units = minor_units
        self.idempotency_key = idempotency_key
        self.requested_window = requested_window


@cython.cfunc
@cython.inline
def _identifier_char(ch: cython.Py_UCS4) -> cython.bint:
    return (
        ("a" <= ch <= "z")
        or ("A" <= ch <= "Z")
        or ("0" <= ch <= "9")
        or ch == "_"
        or ch == "."
        or ch == ":"
        or ch == "-"
    )


@cython.cfunc
def _check_identifier(errors: list, field: str, value: object) -> cython.void:
    if value is None:
        errors.append((field, "required", "is required"))
        return
    if type(value) is not str:
        errors.append((field, "not_a_string", "must be a string"))
        return
    text: str = value
    n: cython.Py_ssize_t = len(text)
    if n == 0 or n > IDENTIFIER_MAX:
        errors.append((field, "invalid_length", f"must be 1 to {IDENTIFIER_MAX} characters"))
        return
    ch: cython.Py_UCS4
    for ch in text:
        if not _identifier_char(ch):
            errors.append((field, "invalid_characters", "may contain only letters, digits and _ . : -"))
            return


@cython.cfunc
def _check_currency(errors: list, field: str, value: object, minor_units: dict) -> cython.int:
    """Append an error or return the currency's minor units."""
    if value is None:
        errors.append((field, "required", "is required"))
        return -1
    if type(value) is not str:
        errors.append((field, "not_a_string", "must be a string"))
        return -1
    units = minor_units.get(value)
    if units is not None:
        return units
    if value in CURRENCIES:
        errors.append(
            (field, "currency_not_settleable", f"{value} is a fund or special code (ISO 4217) and cannot be settled")
        )
    elif type(value) is str and value.upper() in minor_units:
        errors.append((field, "currency_not_upper_case", "must be an upper-case ISO 4217 code"))
    else:
        errors.append((field, "currency_unknown", "must be an active ISO 4217 currency code"))
    return -1


@cython.cfunc
def _is_printable_ascii(text: str) -> cython.bint:
    ch: cython.Py_UCS4
    for ch in text:
        if ch < " " or ch > "~":
            return False
    return True


@cython.cfunc
def _bad_idempotency_key(errors: list, field: str, value: object) -> cython.bint:
    """Append an error and return True when a present key is malformed."""
    if value is None:
        return False
    if type(value) is not str:
        errors.append((field, "not_a_string", "must be a string"))
        return True
    text: str = value
    if len(text) == 0 or len(text) > IDEMPOTENCY_KEY_MAX or not _is_printable_ascii(text):
        errors.append(
            (field, "invalid_idempotency_key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters")
        )
        return True
    return False


@cython.cfunc
def _resolve_idempotency_key(errors: list, body_key: object, header_key: object) -> str:
    if _bad_idempotency_key(errors, "idempotency_key", body_key) or _bad_idempotency_key(
        errors, "Idempotency-Key", header_key
    ):
        return ""
    if body_key is None:
        if header_key is None:
            errors.append(("idempotency_key", "required", "is required (in the body or the Idempotency-Key header)"))
            return ""
        return header_key
    if header_key is not None and body_key != header_key:
        errors.append(("idempotency_key", "idempotency_key_conflict", "differs from the Idempotency-Key header"))
        return ""
    return body_key


@cython.cfunc
def _check_metadata(errors: list, value: object) -> cython.void:
    if value is None:
        return
    if type(value) is not dict:
        errors.append(("metadata", "invalid_metadata", "must be an object of strings"))
        return
    entries: dict = value
    if len(entries) > METADATA_MAX_ENTRIES:
        errors.append(("metadata", "invalid_metadata", f"must have at most {METADATA_MAX_ENTRIES} entries"))
        return
    for key, item in entries.items():
        if len(key) == 0 or len(key) > METADATA_KEY_MAX:
            errors.append(("metadata", "invalid_metadata", f"keys must be 1 to {METADATA_KEY_MAX} characters"))
            return
        if type(item) is not str or len(item) > METADATA_VALUE_MAX:
            errors.append(
                ("metadata", "invalid_metadata", f"values must be strings of at most {METADATA_VALUE_MAX} characters")
            )
            return


@cython.cfunc
def _amount_error(errors: list, code: str, message: str) -> cython.longlong:
    errors.append(("amount", code, message))
    return -1


@cython.cfunc
def _parse_amount(errors: list, raw: bytes, units: cython.int, limit: cython.longlong) -> cython.longlong:
    """Parse a JSON number or decimal string exactly into minor units; -1 after appending an error,
    ABOVE_MAXIMUM (nothing appended) when it exceeds `limit`, which the caller words for its currency.

    `units` < 0 means the currency is unknown: only the syntax and the sign are checked.
    """
    n: cython.Py_ssize_t = len(raw)
    i: cython.Py_ssize_t = 0
    if n == 0:
        return _amount_error(errors, "required", "is required")
    first: cython.int = raw[0]
    if first == 110 and raw == b"null":
        return _amount_error(errors, "required", "is required")
    if first == 34:  # '"': a decimal string carries the same grammar between its quotes
        if n < 3 or raw[n - 1] != 34:
            return _amount_error(errors, "invalid_amount", "must be a decimal number")
        i = 1
        n -= 1
    elif not (first == 45 or 48 <= first <= 57):
        return _amount_error(errors, "invalid_amount", "must be a JSON number or a decimal string")
    negative: cython.bint = raw[i] == 45
    if negative:
        i += 1
    start: cython.Py_ssize_t = i
    unscaled: cython.longlong = 0
    significant: cython.int = 0
    pending_zeros: cython.int = 0
    fraction_digits: cython.int = 0
    in_fraction: cython.bint = False
    c: cython.int
    while i < n:
        c = raw[i]
        if 48 <= c <= 57:
            if c == 48:
                if significant > 0:
                    pending_zeros += 1
            else:
                significant += pending_zeros + 1
                if significant <= DIGITS_MAX:
                    unscaled = unscaled * _pow10(pending_zeros + 1) + (c - 48)
                pending_zeros = 0
            if in_fraction:
                fraction_digits += 1
        elif c == 46 and not in_fraction:  # '.'
            if i == start or i + 1 >= n or not (48 <= raw[i + 1] <= 57):
                return _amount_error(errors, "invalid_amount", "must be a decimal number")
            in_fraction = True
        else:
            break
        i += 1
    if i == start:
        return _amount_error(errors, "invalid_amount", "must be a decimal number")
    if raw[start] == 48 and start + 1 < n and 48 <= raw[start + 1] <= 57:
        return _amount_error(errors, "invalid_amount", "must not have leading zeros")
    exponent: cython.int = 0
    if i < n and (raw[i] == 101 or raw[i] == 69):  # 'e' or 'E'
        i += 1
        exponent_negative: cython.bint = False
        if i < n and (raw[i] == 43 or raw[i] == 45):
            exponent_negative = raw[i] == 45
            i += 1
        exponent_start: cython.Py_ssize_t = i
        while i < n and 48 <= raw[i] <= 57:
            if exponent > EXPONENT_MAX:
                break
            exponent = exponent * 10 + (raw[i] - 48)
            i += 1
        if i == exponent_start:
            return _amount_error(errors, "invalid_amount", "must be a decimal number")
        if exponent > EXPONENT_MAX:
            return _amount_error(
                errors, "invalid_amount", f"exponent must be within -{EXPONENT_MAX} and {EXPONENT_MAX}"
            )
        if exponent_negative:
            exponent = -exponent
    if i != n:
        return _amount_error(errors, "invalid_amount", "must be a decimal number")
    if significant == 0 or negative:
        return _amount_error(errors, "amount_not_positive", "must be greater than zero")
    if units < 0:
        return -1
    # value = unscaled * 10**power, with unscaled free of trailing zeros
    power: cython.int = pending_zeros - fraction_digits + exponent
    if power + units < 0:
        return _amount_error(
            errors, "amount_precision_exceeded", f"has more than {units} decimal places for its currency"
        )
    if significant > DIGITS_MAX or significant + power + units > DIGITS_MAX:
        return ABOVE_MAXIMUM
    minor: cython.longlong = unscaled * _pow10(power + units)
    if minor > limit:
        return ABOVE_MAXIMUM
    return minor


@cython.cfunc
@cython.inline
def _is_window(text: str) -> cython.bint:
    return text == "t1" or text == "t0" or text == "rtgs"


@cython.cfunc
def _format_minor(minor: cython.longlong, units: cython.int) -> str:
    """The exact decimal string of `minor` minor units: 25000 with 2 units is "250.00".

    f-strings of C integers compile to direct digit writing, far cheaper than str() and slicing."""
    if units == 0:
        return f"{minor}"
    scale: cython.longlong = _pow10(units)
    whole: cython.longlong = minor // scale
    fraction: cython.longlong = minor % scale
    if units == 2:
        return f"{whole}.{fraction:02d}"
    if units == 3:
        return f"{whole}.{fraction:03d}"
    if units == 1:
        return f"{whole}.{fraction:01d}"
    return f"{whole}.{fraction:04d}"


@cython.cfunc
def _check(
    policy: Policy,
    transaction_id: object,
    amount: bytes,
    source_currency: object,
    destination_currency: object,
    source_account: object,
    destination_account: object,
    counterparty_id: object,
    idempotency_key: object,
    idempotency_key_header: object,
    settlement_window: object,
    metadata: object,
) -> object:
    """The Instruction of a valid transaction, or the list of every rule it breaks."""
    errors: list = []
    _check_identifier(errors, "transaction_id", transaction_id)
    # The amount's rules depend on its currency, but its errors are listed first, in field order.
    currency_errors: list = []
    source_units: cython.int = _check_currency(currency_errors, "source_currency", source_currency, policy.minor_units)
    destination_units: cython.int = _check_currency(
        currency_errors, "destination_currency", destination_currency, policy.minor_units
    )
    limit: cython.longlong = policy.max_minor[source_currency] if source_units >= 0 else 0
    minor: cython.longlong = _parse_amount(errors, amount, source_units, limit)
    if minor == ABOVE_MAXIMUM:  # the maximum differs per currency, so the partner is told which applies
        errors.append(
            (
                "amount",
                "amount_above_maximum",
                f"exceeds the maximum amount per transaction, {policy.max_amounts[source_currency]} {source_currency}",
            )
        )
    errors.extend(currency_errors)
    blocked = policy.blocked_pairs.get(source_currency) if source_units >= 0 and policy.blocked_pairs else None
    if blocked is not None and destination_units >= 0 and destination_currency in blocked:
        errors.append(
            (
                "destination_currency",
                "currency_pair_blocked",
                f"{source_currency} to {destination_currency} is not accepted",
            )
        )
    _check_identifier(errors, "source_account", source_account)
    _check_identifier(errors, "destination_account", destination_account)
    if source_account == destination_account and source_account is not None:
        errors.append(("destination_account", "same_account", "must differ from source_account"))
    _check_identifier(errors, "counterparty_id", counterparty_id)
    key: str = _resolve_idempotency_key(errors, idempotency_key, idempotency_key_header)
    if settlement_window is not None and not (type(settlement_window) is str and _is_window(settlement_window)):
        errors.append(("settlement_window", "invalid_window", "must be one of rtgs, t0, t1"))
    _check_metadata(errors, metadata)
    if errors:
        return errors
    instruction: Instruction = Instruction.__new__(Instruction)
    instruction.amount = _format_minor(minor, source_units)
    instruction.amount_minor = minor
    instruction.minor_units = source_units
    instruction.idempotency_key = key
    instruction.requested_window = settlement_window
    return instruction


def validate(
    policy: Policy,
    transaction_id: object,
    amount: bytes,
    source_currency: object,
    destination_currency: object,
    source_account: object,
    destination_account: object,
    counterparty_id: object,
    idempotency_key: object,
    idempotency_key_header: object,
    settlement_window: object,
    metadata: object,
) -> Instruction:
    """Check one transaction against every rule; raise ValidationFailed listing all broken rules.

    `amount` is the raw JSON text of the amount (a number or a quoted decimal string); an empty
    `amount` means it was absent. Other values are as decoded from JSON, None when absent.
    """
    result = _check(
        policy,
        transaction_id,
        amount,
        source_currency,
        destination_currency,
        source_account,
        destination_account,
        counterparty_id,
        idempotency_key,
        idempotency_key_header,
        settlement_window,
        metadata,
    )
    if type(result) is list:
        raise ValidationFailed(result)
    return result


def validate_all(policy: Policy, rows: list) -> list:
    """`validate` for many transactions in one call (a bulk request): each row is the tuple of
    `validate`'s arguments after the policy; per row, its Instruction or the list of broken rules."""
    results: list = []
    row: tuple
    for row in rows:
        if len(row) != 11:
            raise TypeError(f"a row holds the 11 arguments of validate after the policy, not {len(row)}")
        results.append(
            _check(policy, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10])
        )
    return results


REASONS = ("requested", "high_value", "after_cutoff", "non_business_day", "auto")


@cython.cclass
class CurrencyCalendar:
    """One currency's compiled calendar: per day (index i = first_day + i days since 1970-01-01) whether
    it is a business day and, as Unix seconds, the local midnight, the RTGS opening and closing and the
    T0 cut-off, with daylight saving already resolved. Built at start-up by the gateway's rules loader."""

    business = cython.declare(cython.uchar[:])
    day_start = cython.declare(cython.longlong[:])
    rtgs_open = cython.declare(cython.longlong[:])
    rtgs_close = cython.declare(cython.longlong[:])
    t0_cutoff = cython.declare(cython.longlong[:])
    days = cython.declare(cython.Py_ssize_t, visibility="readonly")

    def __init__(self, business, day_start, rtgs_open, rtgs_close, t0_cutoff):
        """Arrays of equal length: business as array('B'), the instants as array('q')."""
        self.days = len(business)
        for column in (day_start, rtgs_open, rtgs_close, t0_cutoff):
            if len(column) != self.days:
                raise PolicyError("calendar columns must all cover the same days")
        if self.days < 2:
            raise PolicyError("a calendar must cover at least two days")
        self.business = business
        self.day_start = day_start
        self.rtgs_open = rtgs_open
        self.rtgs_close = rtgs_close
        self.t0_cutoff = t0_cutoff


@cython.cclass
class Rules:
    """Settlement-window rules compiled for fast routing: one calendar per currency, a default one."""

    first_day = cython.declare(cython.longlong, visibility="readonly")
    days = cython.declare(cython.Py_ssize_t, visibility="readonly")
    calendars = cython.declare(dict, visibility="readonly")
    default = cython.declare(CurrencyCalendar, visibility="readonly")
    high_value = cython.declare(dict, visibility="readonly")
    value_dates = cython.declare(list)
    compact_dates = cython.declare(list)

    def __init__(self, first_day: cython.longlong, calendars: dict, default: CurrencyCalendar, high_value: dict):
        """`first_day`: days since 1970-01-01 of index 0; `calendars`: code -> CurrencyCalendar for the
        currencies with their own (the rest use `default`); `high_value`: every settleable currency's
        threshold in its own minor units (code -> int)."""
        self.first_day = first_day
        settleable = _settleable_currencies()
        missing = sorted(code for code in settleable if code not in high_value)
        if missing:
            raise PolicyError(f"no high-value threshold for {len(missing)} settleable currencies: {', '.join(missing)}")
        for code, threshold in high_value.items():
            if code not in settleable:
                raise PolicyError(f"high-value threshold for {code!r}, which is not a settleable ISO 4217 currency")
            if type(threshold) is not int or threshold <= 0:
                raise PolicyError(f"high-value threshold of {code} must be a positive number of minor units")
        self.high_value = dict(high_value)
        self.default = default
        self.days = default.days
        for code, calendar in calendars.items():
            if not isinstance(calendar, CurrencyCalendar) or calendar.days != self.days:
                raise PolicyError(f"calendar of {code} must cover the same {self.days} days as the default")
        self.calendars = dict(calendars)
        self.compact_dates = [_civil_date(first_day + i) for i in range(self.days)]
        self.value_dates = [d[:4] + "-" + d[4:6] + "-" + d[6:] for d in self.compact_dates]


@cython.cclass
class Routing:
    """Where and when one instruction settles."""

    window = cython.declare(str, visibility="readonly")
    requested_window = cython.declare(object, visibility="readonly")
    value_date = cython.declare(str, visibility="readonly")
    batch = cython.declare(str, visibility="readonly")
    reason = cython.declare(str, visibility="readonly")

    def __init__(self, window: str, requested_window, value_date: str, batch: str, reason: str):
        self.window = window
        self.requested_window = requested_window
        self.value_date = value_date
        self.batch = batch
        self.reason = reason


@cython.cfunc
def _civil_date(days: cython.longlong) -> str:
    """YYYYMMDD of a count of days since 1970-01-01 (proleptic Gregorian)."""
    z: cython.longlong = days + 719468
    era: cython.longlong = (z if z >= 0 else z - 146096) // 146097
    doe: cython.longlong = z - era * 146097
    yoe: cython.longlong = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy: cython.longlong = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp: cython.longlong = (5 * doy + 2) // 153
    day: cython.longlong = doy - (153 * mp + 2) // 5 + 1
    month: cython.longlong = mp + 3 if mp < 10 else mp - 9
    year: cython.longlong = yoe + era * 400 + (1 if month <= 2 else 0)
    return f"{year:04d}{month:02d}{day:02d}"


@cython.cfunc
def _local_day(calendar: CurrencyCalendar, now: cython.longlong) -> cython.Py_ssize_t:
    """Index of the calendar day (in the currency's own time zone) that contains `now`."""
    day_start: cython.longlong[:] = calendar.day_start
    last: cython.Py_ssize_t = calendar.days - 1
    if now < day_start[0] or now >= day_start[last] + 86400 * 2:
        raise RoutingUnavailable("the instant lies outside the compiled calendar horizon")
    i: cython.Py_ssize_t = (now - day_start[0]) // 86400
    if i > last:
        i = last
    while i > 0 and now < day_start[i]:
        i -= 1
    while i < last and now >= day_start[i + 1]:
        i += 1
    return i


@cython.cfunc
@cython.inline
def _both_open(source: CurrencyCalendar, destination: CurrencyCalendar, day: cython.Py_ssize_t) -> cython.bint:
    return source.business[day] != 0 and destination.business[day] != 0


@cython.cfunc
def _next_common_business_day(
    source: CurrencyCalendar, destination: CurrencyCalendar, day: cython.Py_ssize_t
) -> cython.Py_ssize_t:
    """The first day from `day` on that is a business day of both currencies."""
    while day < destination.days:
        if _both_open(source, destination, day):
            return day
        day += 1
    raise RoutingUnavailable("no common business day within the compiled calendar horizon")


def route(
    rules: Rules,
    requested_window: object,
    source_currency: str,
    destination_currency: str,
    amount_minor: cython.longlong,
    now: cython.double,
) -> Routing:
    """Choose the window, value date, batch and reason of a valid instruction at `now` (Unix seconds).

    High value forces rtgs. rtgs outside operating hours or on a non-business day keeps rtgs with the
    value date of the next opening. t0 after the earlier cut-off of the two currencies, or on a day
    that is not a business day of both, becomes t1. t1 settles on the next common business day.
    No window: rtgs when high value, else t0 before the cut-off, else t1. Days are the settling
    (destination) currency's; a value date is always a business day of both currencies.
    """
    source: CurrencyCalendar = rules.calendars.get(source_currency, rules.default)
    destination: CurrencyCalendar = rules.calendars.get(destination_currency, rules.default)
    instant: cython.longlong = cython.cast(cython.longlong, now)
    today: cython.Py_ssize_t = _local_day(destination, instant)
    open_today: cython.bint = _both_open(source, destination, today)
    value: cython.Py_ssize_t
    window: str
    reason: str
    threshold: cython.longlong = rules.high_value.get(source_currency, 0)
    high: cython.bint = threshold > 0 and amount_minor >= threshold
    if high or requested_window == WINDOW_RTGS:
        window = WINDOW_RTGS
        reason = "high_value" if high and requested_window != WINDOW_RTGS else "requested"
        if open_today and instant < destination.rtgs_close[today]:
            value = today
        else:
            value = _next_common_business_day(source, destination, today + 1)
        if instant < destination.rtgs_open[value]:
            reason = "after_cutoff" if open_today else "non_business_day"
    elif requested_window == WINDOW_T1:
        window = WINDOW_T1
        reason = "requested"
        value = _next_common_business_day(source, destination, today + 1)
    else:
        cutoff: cython.longlong = min(source.t0_cutoff[today], destination.t0_cutoff[today])
        reason = "requested" if requested_window is not None else "auto"
        if open_today and instant < cutoff:
            window = WINDOW_T0
            value = today
        else:
            window = WINDOW_T1
            value = _next_common_business_day(source, destination, today + 1)
            if requested_window is not None:
                reason = "after_cutoff" if open_today else "non_business_day"
    routing: Routing = Routing.__new__(Routing)
    routing.window = window
    routing.requested_window = requested_window
    routing.value_date = rules.value_dates[value]
    compact: str = rules.compact_dates[value]
    routing.batch = f"{window}-{compact}-{destination_currency}"  # one allocation, unlike chained +
    routing.reason = reason
    return routing


# --- duplicate member names (I-JSON, RFC 7493 section 2.3) -------------------------------------------------

# The member names of the open objects are compared byte by byte, their spans kept in C arrays of this
# many slots (a stack: a nested object's names follow its parent's and are dropped when it closes).
NAME_SLOTS = cython.declare(cython.Py_ssize_t, 64)
# An object with more names than this, an escaped name or no free slot compares its names as unescaped
# text in a set instead, so a body of thousands of names stays linear.
NAMES_COMPARED_MAX = cython.declare(cython.Py_ssize_t, 16)
# What each byte is to the scan: 0 nothing, 1 a quote, 2 an opening, 3 a closing bracket, 4 a comma.
_BYTE_KINDS = bytes(
    1 if b == 34 else 2 if b in (91, 123) else 3 if b in (93, 125) else 4 if b == 44 else 0 for b in range(256)
)


@cython.cclass
class _Container:
    """One open object or array of the member scan; `parent` is the container that holds it."""

    parent = cython.declare(object)
    is_object = cython.declare(cython.bint)
    base = cython.declare(cython.Py_ssize_t)  # the slot of its first member name
    names = cython.declare(set)  # its unescaped member names once compared as text; None before
    name_start = cython.declare(cython.Py_ssize_t)  # its latest member name, for paths
    name_end = cython.declare(cython.Py_ssize_t)
    name_escaped = cython.declare(cython.bint)
    index = cython.declare(cython.Py_ssize_t)  # an array's current element, for paths
    where = cython.declare(str)  # its own path ("" for the body itself), once asked; None before


@cython.cfunc
def _open(parent, is_object: cython.bint, base: cython.Py_ssize_t) -> _Container:
    container: _Container = _Container.__new__(_Container)  # cheaper than calling __init__
    container.parent = parent
    container.is_object = is_object
    container.base = base
    container.names = None
    container.name_start = 0
    container.name_end = 0
    container.name_escaped = False
    container.index = 0
    container.where = None
    return container


@cython.cfunc
def _member_name(body: bytes, start: cython.Py_ssize_t, end: cython.Py_ssize_t, escaped: cython.bint) -> str:
    """The text of the member name between the quotes at start - 1 and end, escapes resolved."""
    text: str = body[start:end].decode("utf-8", "surrogateescape")
    if not escaped:
        return text
    try:
        return json.loads('"' + text + '"')
    except ValueError:  # not valid JSON after all: the raw text is as good a name as any
        return text


@cython.cfunc
@cython.inline
@cython.exceptval(check=False)
def _same_bytes(
    data: cython.p_uchar, a: cython.Py_ssize_t, b: cython.Py_ssize_t, length: cython.Py_ssize_t
) -> cython.bint:
    k: cython.Py_ssize_t
    for k in range(length):
        if data[a + k] != data[b + k]:
            return False
    return True


@cython.cfunc
def _path(container: _Container, body: bytes) -> str:
    """Where `container`'s latest member is: `amount`, `metadata.invoice`, `items[2].id`.

    Each open container's own path is made once and kept: while it is open, the names and indices of
    the containers around it still point at it. (Walking the nesting for every repeat cost
    O(depth x repeats): 40 ms for an 8 KiB body of one name repeated 900 levels down.)"""
    if container.where is None:
        unknown: list = []  # the containers without their path, innermost first
        current: _Container = container
        while current is not None and current.where is None:
            unknown.append(current)
            current = current.parent
        for k in range(len(unknown) - 1, -1, -1):
            current = unknown[k]
            current.where = "" if current.parent is None else _latest(current.parent, body)
    return _latest(container, body)


@cython.cfunc
def _latest(container: _Container, body: bytes) -> str:
    """The path of `container`'s latest member, given the container's own."""
    if container.is_object:
        name: str = _member_name(body, container.name_start, container.name_end, container.name_escaped)
        return name if container.parent is None else container.where + "." + name
    return f"{container.where}[{container.index}]"


def duplicate_members(body: bytes) -> tuple:
    """The paths of member names that occur twice in one object, anywhere in the JSON `body`; () when none.

    Names are compared after unescaping (`"\\u0061"` is `"a"`), as every JSON parser reads them, so a
    body that parsers could read differently is caught (I-JSON, RFC 7493). A path joins names with `.`
    and array indices in brackets: `amount`, `metadata.invoice`, `items[2].id`; each is listed once,
    in the order the repeats occur. `body` should be valid JSON (the gateway scans what msgspec has
    decoded); anything else gives some answer without error and without reading past the end.
    """
    data: cython.p_uchar = body
    table: bytes = _BYTE_KINDS  # held, so the pointer below stays valid
    kinds: cython.p_uchar = table
    n: cython.Py_ssize_t = len(body)
    starts: cython.Py_ssize_t[64]  # NAME_SLOTS spans of member names, on the C stack
    ends: cython.Py_ssize_t[64]
    if not cython.compiled:  # the interpreter has no C arrays (and Cython drops this branch)
        starts = [0] * NAME_SLOTS
        ends = [0] * NAME_SLOTS
    used: cython.Py_ssize_t = 0
    i: cython.Py_ssize_t = 0
    k: cython.Py_ssize_t
    c: cython.int
    kind: cython.int
    start: cython.Py_ssize_t
    length: cython.Py_ssize_t
    escaped: cython.bint
    repeated: cython.bint
    name_expected: cython.bint = False
    top: _Container = None
    found: dict = None
    while i < n:
        kind = kinds[data[i]]
        if kind == 0:  # whitespace, a colon, a number, true, false, null
            i += 1
            continue
        if kind == 1:  # '"': skip the string; it is a member name where one is expected
            i += 1
            start = i
            escaped = False
            while i < n:
                c = data[i]
                if c == 34:
                    break
                if c == 92:  # '\\' escapes the next byte
                    escaped = True
                    i += 1
                i += 1
            if i > n:
                i = n  # a trailing backslash in broken input
            if name_expected and top is not None:
                name_expected = False
                top.name_start = start
                top.name_end = i
                top.name_escaped = escaped
                repeated = False
                if top.names is None and not escaped and used < NAME_SLOTS and used - top.base < NAMES_COMPARED_MAX:
                    # unescaped UTF-8 names are equal exactly when their bytes are
                    length = i - start
                    for k in range(top.base, used):
                        if ends[k] - starts[k] == length and _same_bytes(data, starts[k], start, length):
                            repeated = True
                            break
                    if not repeated:
                        starts[used] = start
                        ends[used] = i
                        used += 1
                else:
                    if top.names is None:
                        top.names = set()
                        for k in range(top.base, used):
                            top.names.add(_member_name(body, starts[k], ends[k], False))
                    name: str = _member_name(body, start, i, escaped)
                    repeated = name in top.names
                    top.names.add(name)
                if repeated:
                    if found is None:
                        found = {}
                    found[_path(top, body)] = None  # a dict keeps the order and lists each path once
        elif kind == 2:  # '{' or '['
            top = _open(top, data[i] == 123, used)
            name_expected = top.is_object
        elif kind == 3:  # '}' or ']'
            if top is not None:
                used = top.base
                top = top.parent
            name_expected = False
        elif top is not None:  # ','
            if top.is_object:
                name_expected = True
            else:
                top.index += 1
        i += 1
    return () if found is None else tuple(found)
