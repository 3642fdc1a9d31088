"""The decode step: malformed JSON (400) and the wrong shape (422), every 422 with its field errors."""

from typing import Annotated

import msgspec
import pytest

from gateway.errors import Refused
from gateway.intake.decoding import decode, decode_items, shape_errors

SEED = (
    b'{"transaction_id":"txn_001","amount":250.00,"source_currency":"USD","destination_currency":"GBP",'
    b'"source_account":"acct_usa_88","destination_account":"acct_uk_99","counterparty_id":"cparty_london",'
    b'"idempotency_key":"idemp_key_101","settlement_window":"t1"'
)
DUPLICATE = "appears more than once in its object (I-JSON, RFC 7493)"


def refusal(body: bytes) -> Refused:
    with pytest.raises(Refused) as caught:
        decode(body)
    return caught.value


def test_a_well_formed_transaction_decodes():
    request = decode(SEED + b',"metadata":{"invoice":"INV-42"}}')
    assert request.transaction_id == "txn_001" and bytes(request.amount) == b"250.00"
    assert request.metadata == {"invoice": "INV-42"}


@pytest.mark.parametrize(
    ("body", "got"),
    [
        (b"[1, 2]", "an array"),
        (b"[]", "an array"),
        (b"250", "an integer"),
        (b"2.5", "a number"),
        (b'"txn"', "a string"),
        (b"true", "true or false"),
        (b"null", "null"),
    ],
)
def test_a_body_that_is_not_an_object(body, got):
    refused = refusal(body)
    assert refused.cause == "invalid-shape"
    assert refused.errors == [("", "invalid_type", f"must be a JSON object, not {got}")]


def test_unknown_fields_are_each_named():
    refused = refusal(SEED + b',"amt":1,"note":"x"}')
    assert refused.cause == "invalid-shape"
    assert "amt" in refused.detail
    assert refused.errors == [
        ("amt", "unknown_field", "is not a field of a transaction"),
        ("note", "unknown_field", "is not a field of a transaction"),
    ]


@pytest.mark.parametrize("name", ["a`b", "x - at `$.metadata`", "`", "", "é\n"])
def test_unknown_field_names_are_taken_whole(name):
    body = SEED + b"," + msgspec.json.encode(name) + b":1}"
    assert refusal(body).errors == [(name, "unknown_field", "is not a field of a transaction")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (SEED + b',"amount":1}', "amount"),
        (SEED + b',"\\u0061mount":1}', "amount"),
        (SEED + b',"metadata":{"invoice":"a","invoice":"b"}}', "metadata.invoice"),
        (SEED + b',"metadata":{"invoice":"a","\\u0069nvoice":"b"}}', "metadata.invoice"),
    ],
)
def test_duplicate_member_names_are_refused(body, field):
    refused = refusal(body)
    assert refused.cause == "invalid-shape"
    assert refused.errors == [(field, "duplicate_field", DUPLICATE)]


def test_unknown_and_duplicate_fields_are_listed_together():
    refused = refusal(SEED + b',"amt":1,"amt":2,"settlement_window":"t0"}')
    assert refused.errors == [
        ("amt", "unknown_field", "is not a field of a transaction"),
        ("amt", "duplicate_field", DUPLICATE),
        ("settlement_window", "duplicate_field", DUPLICATE),
    ]


def test_malformed_json_stays_400_even_with_a_repeated_name():
    for body in (b'{"amount":1,"amount":', b'{"amount":1,"amount":2', b"not json", b"[1, 2"):
        refused = refusal(body)
        assert refused.cause == "malformed-json", body
        assert refused.errors is None


@pytest.mark.parametrize("body", [b'{"amount":' + b"[" * 5000 + b"]" * 5000 + b"}", b"[" * 5000 + b"]" * 5000])
def test_nesting_too_deep_is_a_422_not_a_crash(body):
    refused = refusal(body)
    assert refused.cause == "invalid-shape"
    assert refused.errors == [("", "too_deeply_nested", "is nested too deeply")]


# --- msgspec's messages beyond what the request Struct produces today -----------------------------------


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    x: int
    count: Annotated[int, msgspec.Meta(ge=0)] = 0


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    inner: Inner | None = None
    items: list[Inner] = []
    tags: dict[str, int] = {}


def message(body: bytes) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=Outer)
    return str(caught.value)


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (b'{"inner":{"x":1,"y":2}}', [("inner.y", "unknown_field", "is not a field of a transaction")]),
        (b'{"items":[{"x":1},{"x":1,"z`":2}]}', [("items[1].z`", "unknown_field", "is not a field of a transaction")]),
        (b'{"inner":{}}', [("inner.x", "required", "is required")]),
        (b'{"inner":5}', [("inner", "invalid_type", "must be a JSON object or null, not an integer")]),
        (b'{"items":[{"x":"1"}]}', [("items[0].x", "invalid_type", "must be an integer, not a string")]),
        (b'{"tags":{"a":[]}}', [("tags[...]", "invalid_type", "must be an integer, not an array")]),
        (b'{"items":{}}', [("items", "invalid_type", "must be an array, not a JSON object")]),
        # a message without a code of its own keeps msgspec's text
        (b'{"inner":{"x":1,"count":-1}}', [("inner.count", "invalid_value", "Expected `int` >= 0")]),
        (b'{"aa":1}', [("aa", "unknown_field", "is not a field of a transaction")]),
    ],
)
def test_messages_with_paths(body, errors):
    assert shape_errors(message(body), msgspec.json.decode(body)) == errors


# --- a bulk request's array -------------------------------------------------------------------------------


def test_bulk_items_decode_one_by_one_with_their_own_repeated_names():
    body = b"[" + SEED + b"}," + SEED + b',"amount":1},42,[{"a":1,"a":2}]]'
    items, duplicates = decode_items(body, 10)
    assert len(items) == 4 and bytes(items[2]) == b"42"
    assert duplicates == [(), ("amount",), (), ("[0].a",)]
    assert decode(items[0], duplicates[0]).transaction_id == "txn_001"
    with pytest.raises(Refused) as caught:
        decode(items[1], duplicates[1])
    assert caught.value.errors == [("amount", "duplicate_field", DUPLICATE)]
    # the same refusal as the single endpoint's for the same text
    single = refusal(SEED + b',"amount":1}')
    assert (single.cause, single.detail, single.errors) == (
        caught.value.cause,
        caught.value.detail,
        caught.value.errors,
    )


@pytest.mark.parametrize(
    ("body", "cause", "errors"),
    [
        (b"{}", "invalid-shape", [("", "invalid_type", "must be an array, not a JSON object")]),
        (b'"x"', "invalid-shape", [("", "invalid_type", "must be an array, not a string")]),
        (b"[]", "invalid-shape", [("", "empty", "must hold 1 to 3 transactions")]),
        (b"[1,2,3,4]", "invalid-shape", [("", "too_many_items", "must hold 1 to 3 transactions")]),
        (b"[1,", "malformed-json", None),
    ],
)
def test_a_bulk_body_that_is_not_an_array_of_1_to_max_items_is_refused(body, cause, errors):
    with pytest.raises(Refused) as caught:
        decode_items(body, 3)
    assert caught.value.cause == cause and caught.value.errors == errors
