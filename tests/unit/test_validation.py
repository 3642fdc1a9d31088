"""Every validation rule, run against both fastcore implementations; hypothesis compares the two."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcore
from fastcore.currencies import CURRENCIES
from settlement.rules import load_policy

IMPLEMENTATIONS = [pytest.param(fastcore, id="compiled"), pytest.param(fastcore.load_twin(), id="twin")]
FIELDS = (
    "transaction_id",
    "amount",
    "source_currency",
    "destination_currency",
    "source_account",
    "destination_account",
    "counterparty_id",
    "idempotency_key",
    "idempotency_key_header",
    "settlement_window",
    "metadata",
)
VALID = {
    "transaction_id": "txn_001",
    "amount": b"250.00",
    "source_currency": "USD",
    "destination_currency": "GBP",
    "source_account": "acct_usa_88",
    "destination_account": "acct_uk_99",
    "counterparty_id": "cparty_london",
    "idempotency_key": "idemp_key_101",
    "idempotency_key_header": None,
    "settlement_window": "t1",
    "metadata": None,
}


SETTLEABLE = [code for code, (units, fund) in CURRENCIES.items() if units is not None and not fund]


def uniform(maximum: int) -> dict[str, int]:
    """The same maximum for every settleable currency (a Policy needs one for each)."""
    return dict.fromkeys(SETTLEABLE, maximum)


def run(impl, **changes):
    """validate() with VALID overridden by `changes`, under the shipped rules' maxima (USD 1,000,000,000
    and its equivalents): the Instruction, or the error list."""
    fields = {**VALID, **changes}
    policy = load_policy(None, [("USD", "RUB")], impl)
    try:
        return impl.validate(policy, *(fields[name] for name in FIELDS))
    except fastcore.ValidationFailed as exc:
        return exc.errors


def codes(result) -> list[tuple[str, str]]:
    assert isinstance(result, list), f"expected errors, got {result!r}"
    return [(field, code) for field, code, _ in result]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return request.param


@pytest.mark.parametrize(
    ("raw", "currency", "canonical", "minor"),
    [
        (b"250", "USD", "250.00", 25000),
        (b"250.0", "USD", "250.00", 25000),
        (b'"250.00"', "USD", "250.00", 25000),
        (b"2.5e2", "USD", "250.00", 25000),
        (b"2.50E+2", "USD", "250.00", 25000),
        (b"0.01", "USD", "0.01", 1),
        (b"12345678901234.5600", "USD", "12345678901234.56", None),  # above USD's maximum
        (b"1000", "JPY", "1000", 1000),
        (b"1.234", "KWD", "1.234", 1234),
        (b"1.10000000000000000000000000000", "USD", "1.10", 110),
        (b"1000000000", "USD", "1000000000.00", 100000000000),  # exactly the maximum
    ],
)
def test_amounts_are_exact(impl, raw, currency, canonical, minor):
    result = run(impl, amount=raw, source_currency=currency)
    if minor is None:
        assert codes(result) == [("amount", "amount_above_maximum")]
        return
    assert (result.amount, result.amount_minor) == (canonical, minor)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "required"),
        (b"null", "required"),
        (b"0", "amount_not_positive"),
        (b"0.00", "amount_not_positive"),
        (b"-1", "amount_not_positive"),
        (b'"-0.5"', "amount_not_positive"),
        (b"1.001", "amount_precision_exceeded"),
        (b"1e-3", "amount_precision_exceeded"),
        (b"1000000000.01", "amount_above_maximum"),
        (b"1e10", "amount_above_maximum"),
        (b"99999999999999999999999999", "amount_above_maximum"),
        (b'"NaN"', "invalid_amount"),
        (b'"sNaN"', "invalid_amount"),
        (b'"Infinity"', "invalid_amount"),
        (b'"inf"', "invalid_amount"),
        (b'" 1.5 "', "invalid_amount"),
        (b'"1.5 "', "invalid_amount"),
        (b'"1,5"', "invalid_amount"),
        (b'""', "invalid_amount"),
        (b"1e999", "invalid_amount"),
        (b"1e-31", "invalid_amount"),
        (b"01", "invalid_amount"),
        (b"1.", "invalid_amount"),
        (b".5", "invalid_amount"),
        (b"+1", "invalid_amount"),
        (b"1e", "invalid_amount"),
        (b"true", "invalid_amount"),
        (b"[1]", "invalid_amount"),
        (b'{"v":1}', "invalid_amount"),
        (b'"\\u0031"', "invalid_amount"),
    ],
)
def test_bad_amounts_are_refused(impl, raw, code):
    assert codes(run(impl, amount=raw)) == [("amount", code)]


@pytest.mark.parametrize(
    ("currency", "code"),
    [
        ("XXX", "currency_not_settleable"),
        ("XTS", "currency_not_settleable"),
        ("XAU", "currency_not_settleable"),
        ("XDR", "currency_not_settleable"),
        ("BOV", "currency_not_settleable"),  # fund code
        ("USN", "currency_not_settleable"),  # fund code
        ("usd", "currency_not_upper_case"),
        ("ZZZ", "currency_unknown"),
        ("US", "currency_unknown"),
        ("", "currency_unknown"),
        (840, "not_a_string"),
        (None, "required"),
    ],
)
def test_bad_currencies_are_refused(impl, currency, code):
    assert codes(run(impl, destination_currency=currency)) == [("destination_currency", code)]


def test_real_x_currencies_with_minor_units_are_accepted(impl):
    for code in ("XOF", "XAF", "XCD", "XPF"):
        assert not isinstance(run(impl, destination_currency=code), list), code


def test_blocked_pair_is_refused_one_way(impl):
    assert codes(run(impl, destination_currency="RUB")) == [("destination_currency", "currency_pair_blocked")]
    assert not isinstance(run(impl, source_currency="RUB", destination_currency="USD", amount=b"1"), list)


@pytest.mark.parametrize("field", ["transaction_id", "source_account", "destination_account", "counterparty_id"])
@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "required"),
        (5, "not_a_string"),
        ("", "invalid_length"),
        ("a" * 65, "invalid_length"),
        ("has space", "invalid_characters"),
        ("semi;colon", "invalid_characters"),
        ("ünïcode", "invalid_characters"),
    ],
)
def test_identifiers(impl, field, value, code):
    assert (field, code) in codes(run(impl, **{field: value}))


def test_identifier_limits_are_inclusive(impl):
    assert not isinstance(run(impl, transaction_id="A-z_0.9:" + "x" * 56), list)


def test_accounts_must_differ(impl):
    assert codes(run(impl, destination_account="acct_usa_88")) == [("destination_account", "same_account")]


def test_idempotency_key_from_header_or_body(impl):
    assert run(impl, idempotency_key=None, idempotency_key_header="hdr-key").idempotency_key == "hdr-key"
    assert run(impl, idempotency_key_header="idemp_key_101").idempotency_key == "idemp_key_101"
    assert codes(run(impl, idempotency_key_header="other")) == [("idempotency_key", "idempotency_key_conflict")]
    assert codes(run(impl, idempotency_key=None)) == [("idempotency_key", "required")]
    assert codes(run(impl, idempotency_key="k" * 256)) == [("idempotency_key", "invalid_idempotency_key")]
    assert codes(run(impl, idempotency_key="tab\tkey")) == [("idempotency_key", "invalid_idempotency_key")]
    assert codes(run(impl, idempotency_key="")) == [("idempotency_key", "invalid_idempotency_key")]
    assert not isinstance(run(impl, idempotency_key="~ !" + "k" * 252), list)


def test_windows(impl):
    for window in ("rtgs", "t0", "t1", None):
        assert run(impl, settlement_window=window).requested_window == window
    for window in ("T1", "t2", "", 1):
        assert codes(run(impl, settlement_window=window)) == [("settlement_window", "invalid_window")]


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        "text",
        {"k": 1},
        {"k": "v" * 257},
        {"": "v"},
        {"k" * 65: "v"},
        {f"k{i}": "v" for i in range(17)},
    ],
)
def test_bad_metadata(impl, metadata):
    assert codes(run(impl, metadata=metadata)) == [("metadata", "invalid_metadata")]


def test_good_metadata(impl):
    assert not isinstance(run(impl, metadata={f"k{i}": "v" * 256 for i in range(16)}), list)


def test_every_broken_rule_is_listed_in_field_order(impl):
    result = run(
        impl,
        transaction_id="bad id",
        amount=b"-5",
        source_currency="XXX",
        destination_currency="usd",
        destination_account="acct_usa_88",
        counterparty_id=None,
        idempotency_key=None,
        settlement_window="soon",
        metadata=[],
    )
    assert codes(result) == [
        ("transaction_id", "invalid_characters"),
        ("amount", "amount_not_positive"),
        ("source_currency", "currency_not_settleable"),
        ("destination_currency", "currency_not_upper_case"),
        ("destination_account", "same_account"),
        ("counterparty_id", "required"),
        ("idempotency_key", "required"),
        ("settlement_window", "invalid_window"),
        ("metadata", "invalid_metadata"),
    ]


def test_the_maximum_is_the_source_currency_own_and_its_message_says_it(impl):
    maxima = {**uniform(1_000_000_000), "VND": 25_000_000_000_000, "KWD": 250_000_000}
    policy = impl.Policy(maxima)
    fields = {**VALID, "source_currency": "KWD", "amount": b"250000000.001"}
    with pytest.raises(fastcore.ValidationFailed) as refused:
        impl.validate(policy, *(fields[name] for name in FIELDS))
    assert refused.value.errors == [
        ("amount", "amount_above_maximum", "exceeds the maximum amount per transaction, 250000000 KWD")
    ]
    fields = {**fields, "amount": b"250000000.000"}
    assert impl.validate(policy, *(fields[name] for name in FIELDS)).amount_minor == 250_000_000_000
    fields = {**fields, "source_currency": "VND", "amount": b"25000000000000"}
    assert impl.validate(policy, *(fields[name] for name in FIELDS)).amount == "25000000000000"
    assert policy.max_amounts["VND"] == 25_000_000_000_000 and policy.max_minor["KWD"] == 250_000_000_000


@pytest.mark.parametrize(
    ("maxima", "blocked", "message"),
    [
        ({**uniform(100), "USD": 0}, (), "USD must be a positive whole number"),
        ({**uniform(100), "USD": "100"}, (), "USD must be a positive whole number"),
        ({**uniform(100), "USD": 1.5}, (), "USD must be a positive whole number"),
        ({**uniform(100), "USD": True}, (), "USD must be a positive whole number"),
        ({**uniform(100), "USD": 10**16}, (), "too large for USD"),  # beyond 18 digits in minor units
        ({code: 100 for code in SETTLEABLE if code != "IDR"}, (), "1 settleable currencies: IDR"),
        ({**uniform(100), "XAU": 100}, (), "'XAU', which is not a settleable"),
        (uniform(100), [("USD", "XAU")], "blocked pair names 'XAU'"),
    ],
)
def test_policy_refuses_bad_configuration(impl, maxima, blocked, message):
    with pytest.raises(fastcore.PolicyError, match=message):
        impl.Policy(maxima, blocked)


# --- the two implementations agree on anything ------------------------------------------------------------

TWIN = fastcore.load_twin()
POLICIES = (load_policy(None, [("USD", "RUB")]), load_policy(None, [("USD", "RUB")], TWIN))
AMOUNT_ALPHABET = st.sampled_from(list(b'0123456789.-+eE" ,naNIf'))
amounts = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(lambda d: str(d).encode()),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: f'"{d}"'.encode()),
    st.lists(AMOUNT_ALPHABET, max_size=30).map(bytes),
    st.integers(min_value=-(10**25), max_value=10**25).map(lambda i: str(i).encode()),
    st.builds(lambda m, e: f"{m}e{e}".encode(), st.integers(-(10**6), 10**6), st.integers(-40, 40)),
    st.binary(max_size=20),
)
texts = st.one_of(
    st.none(), st.text(max_size=70), st.sampled_from(["USD", "GBP", "JPY", "KWD", "VND", "IDR", "XAU", "RUB", "usd"])
)
values = st.one_of(texts, st.integers(), st.lists(st.integers(), max_size=2))
metadata = st.one_of(st.none(), st.dictionaries(st.text(max_size=70), st.one_of(st.text(max_size=300), st.integers())))


# the arguments of validate after the policy
rows = st.tuples(
    values,
    amounts,
    texts,
    texts,
    values,
    values,
    values,
    texts,
    texts,
    st.one_of(st.none(), st.sampled_from(["rtgs", "t0", "t1", "T1", ""])),
    metadata,
)


def _described(result):
    """An Instruction, or the list of broken rules, as plain values to compare."""
    if isinstance(result, list):
        return ("errors", result)
    i = result
    return ("ok", i.amount, i.amount_minor, i.minor_units, i.idempotency_key, i.requested_window)


def _outcome(impl, policy, args):
    try:
        return _described(impl.validate(policy, *args))
    except fastcore.ValidationFailed as exc:
        return _described(exc.errors)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_compiled_and_twin_agree(args):
    assert _outcome(fastcore, POLICIES[0], args) == _outcome(TWIN, POLICIES[1], args)


@settings(max_examples=3000, deadline=None)
@given(amounts, st.sampled_from(["USD", "JPY", "KWD", "VND", "IDR"]))
def test_amount_agreement_and_exactness(raw, currency):
    args = ("t", raw, currency, "GBP", "a", "b", "c", "k", None, None, None)
    compiled, twin = _outcome(fastcore, POLICIES[0], args), _outcome(TWIN, POLICIES[1], args)
    assert compiled == twin
    if compiled[0] == "ok":
        from decimal import Decimal

        text = raw.decode().strip('"')
        assert Decimal(compiled[1]) == Decimal(text)  # canonical string is the same number, exactly


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, max_size=20))
def test_validate_all_is_validate_per_row(rows):
    """A bulk request's validation in one call answers, row by row, what `validate` answers alone."""
    for impl, policy in ((fastcore, POLICIES[0]), (TWIN, POLICIES[1])):
        assert [_described(r) for r in impl.validate_all(policy, rows)] == [_outcome(impl, policy, a) for a in rows]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_validate_all_refuses_a_row_of_the_wrong_length(impl):
    policy = impl.Policy(uniform(1000))
    with pytest.raises(TypeError, match="11 arguments"):
        impl.validate_all(policy, [("t", b"1")])
