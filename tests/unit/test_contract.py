"""One model per contract: the request schema the OpenAPI document publishes (REQUEST_SCHEMA), the msgspec
Struct the intake decodes into (TransactionRequest) and fastcore's rules agree, field by field.

Hypothesis builds request bodies from values each field's schema accepts and values it refuses (wrong
types, lengths, characters, enums); for every field of every body, the schema's verdict on that field and
fastcore's must be the same. What the schema states only in prose is named here and left out of the
comparison: an amount's precision and maximum per currency, an account equal to the other one, and the
idempotency key that may come in a header instead."""

import json

import jsonschema_rs
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcore
from gateway.intake.canonical import validation_fields
from gateway.intake.schemas import REQUEST_SCHEMA, TransactionRequest
from settlement.rules import load_policy
from tests.conftest import transaction

POLICY = load_policy(None)
PROPERTIES = REQUEST_SCHEMA["properties"]
# fastcore's codes for rules the schema states in prose only (see the module's docstring)
BEYOND_THE_SCHEMA = {
    "amount": {"amount_precision_exceeded", "amount_above_maximum"},
    "destination_account": {"same_account"},
    "idempotency_key": {"required"},
}

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300)
_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=70)
_identifier = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
_currency = st.sampled_from(PROPERTIES["source_currency"]["enum"] + ["usd", "XAU", "USDX", ""])
_other = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
)
FIELDS = {
    "transaction_id": st.one_of(_identifier, _ascii, _text, _other),
    "amount": st.one_of(
        st.decimals(min_value=-10, max_value=10**12, places=2, allow_nan=False, allow_infinity=False).map(str),
        st.integers(min_value=-5, max_value=10**9),
        st.sampled_from(["250.00", "0", "0.0", "1e3", "1E31", "01.5", "-1", "", "abc", "1.", ".5"]),
        _other,
    ),
    "source_currency": st.one_of(_currency, _other),
    "destination_currency": st.one_of(_currency, _other),
    "source_account": st.one_of(_identifier, _ascii, _other),
    "destination_account": st.one_of(_identifier, _ascii, _other),
    "counterparty_id": st.one_of(_identifier, _ascii, _other),
    "idempotency_key": st.one_of(_ascii, st.text(max_size=300), _other),
    "settlement_window": st.one_of(st.sampled_from(["rtgs", "t0", "t1", "T1", "t2", ""]), _other),
    "metadata": st.one_of(
        st.dictionaries(st.text(max_size=70), st.one_of(st.text(max_size=300), st.integers()), max_size=18),
        _other,
    ),
}


def test_the_struct_and_the_schema_name_the_same_fields():
    assert set(TransactionRequest.__struct_fields__) == set(PROPERTIES)
    assert REQUEST_SCHEMA["additionalProperties"] is False  # as the Struct's forbid_unknown_fields


def test_every_field_the_schema_requires_fastcore_requires():
    for field in REQUEST_SCHEMA["required"]:
        body = {name: value for name, value in _valid().items() if name != field}
        assert field in _refused_fields(body), field
    for field in set(PROPERTIES) - set(REQUEST_SCHEMA["required"]) - {"idempotency_key"}:
        body = {name: value for name, value in _valid().items() if name != field}
        assert _refused_fields(body) == {}, field


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=FIELDS))
def test_the_schema_and_fastcore_agree_on_every_field(fields):
    body = {**_valid(), **fields}
    refused = _refused_fields(body)
    for field, value in body.items():
        schema_says = jsonschema_rs.is_valid(PROPERTIES[field], value)
        codes = refused.get(field, set())
        fastcore_says = not (codes - BEYOND_THE_SCHEMA.get(field, set()))
        assert schema_says == fastcore_says, (field, value, codes)


def _valid() -> dict:
    return transaction("001")  # the seed's transaction


def _refused_fields(body: dict) -> dict[str, set[str]]:
    """fastcore's verdict on a body the intake decoded: the codes of each field it refused."""
    request = msgspec.json.decode(json.dumps(body).encode(), type=TransactionRequest)
    try:
        fastcore.validate(POLICY, *validation_fields(request, None))
    except fastcore.ValidationFailed as exc:
        refused: dict[str, set[str]] = {}
        for field, code, _ in exc.errors:
            refused.setdefault(field, set()).add(code)
        return refused
    return {}
