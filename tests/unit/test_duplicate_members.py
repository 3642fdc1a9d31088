"""Duplicate member names (I-JSON, RFC 7493): every case against both fastcore implementations, and
hypothesis against a reference built on `json.loads(..., object_pairs_hook=...)`."""

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcore

IMPLEMENTATIONS = [pytest.param(fastcore, id="compiled"), pytest.param(fastcore.load_twin(), id="twin")]
TWIN = fastcore.load_twin()
SEED = (
    b'{"transaction_id": "txn_001", "amount": 250.00, "source_currency": "USD", "destination_currency": "GBP", '
    b'"source_account": "acct_usa_88", "destination_account": "acct_uk_99", "counterparty_id": "cparty_london", '
    b'"idempotency_key": "idemp_key_101", "settlement_window": "t1", "metadata": {"invoice": "INV-42"}}'
)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return request.param


def _nested(depth: int, inner: str) -> bytes:
    return ('{"a":' * depth + inner + "}" * depth).encode()


def _names(prefix: str, count: int) -> str:
    return ",".join(f'"{prefix}{i}":{i}' for i in range(count))


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        (SEED, ()),
        (b"{}", ()),
        (b"[]", ()),
        (b'"amount"', ()),
        (b"250", ()),
        (b'{"amount": 1, "amount": 2}', ("amount",)),
        (b'{"metadata": {"invoice": "a", "invoice": "b"}}', ("metadata.invoice",)),
        (b'{"a": 1, "a": 2, "a": 3}', ("a",)),  # listed once
        (b'{"b": 1, "a": 1, "a": 2, "b": 2}', ("a", "b")),  # in the order the repeats occur
        (b'{"x": {"a": 1, "a": 2}, "x": 1}', ("x.a", "x")),
        (b'{"": 1, "": 2}', ("",)),
        (b'{\n  "amount" : 1 ,\n  "amount"\t:\r\n2\n}', ("amount",)),
        # compared after unescaping
        (b'{"\\u0061mount": 1, "amount": 2}', ("amount",)),
        (b'{"amount": 1, "\\u0061\\u006D\\u006f\\u0075\\u006e\\u0074": 2}', ("amount",)),
        (b'{"a\\/b": 1, "a/b": 2}', ("a/b",)),
        (b'{"\\"": 1, "\\u0022": 2}', ('"',)),
        (b'{"\\\\": 1, "\\u005c": 2}', ("\\",)),
        (b'{"a\\nb": 1, "a\\u000ab": 2}', ("a\nb",)),
        ('{"é": 1, "\\u00e9": 2}'.encode(), ("é",)),
        ('{"😀": 1, "\\ud83d\\ude00": 2}'.encode(), ("😀",)),
        # alike but different
        (b'{"a": 1, "A": 2, "a ": 3, " a": 4, "ab": 5, "b": 6}', ()),
        (b'{"\\\\u0061": 1, "a": 2}', ()),  # an escaped backslash, then u0061: not an escape of "a"
        ('{"\u00e9": 1, "e\u0301": 2}'.encode(), ()),  # precomposed and combining: no normalisation
        # names only clash within one object
        (b'{"a": {"a": 1}, "b": {"a": 1}}', ()),
        (b'[{"a": 1}, {"a": 2}]', ()),
        (b'{"a": [{"a": 1}], "b": [{"a": 1}]}', ()),
        (b'{"items": [{"id": 1}, {"id": 2, "id": 3}]}', ("items[1].id",)),
        (b'[1, [2, {"c": 1, "c": 2}]]', ("[1][1].c",)),
        # strings that look like structure are skipped whole
        (b'{"x": "\\"a\\": 1, {", "a": 1, "y": "}\\\\", "a": 2}', ("a",)),
        (b'{"a": "a", "b": "a", "c": ["a", "a"]}', ()),
        (b'{"{\\"a\\":1,\\"a\\":2}": 1}', ()),
        (b'{"[": 1, "]": 2, "{": 3, "}": 4, ",": 5, ":": 6, "[": 7}', ("[",)),
        # beyond the names compared byte by byte, and beyond the slots
        (("{" + _names("k", 40) + ',"k2":0}').encode(), ("k2",)),
        (("{" + _names("k", 40) + ',"\\u006b39":0}').encode(), ("k39",)),
        (("{" + _names("k", 3) + ',"\\u006b9":0,"k1":0}').encode(), ("k1",)),
        (_nested(70, '{"x":1,"x":2}'), (".".join(["a"] * 70) + ".x",)),
        (_nested(70, '{"x":1,"y":2}'), ()),
        (("{" + ",".join(f'"o{i}":{{' + _names("k", 15) for i in range(5)) + ',"k0":1' + "}" * 6).encode(), None),
        (b'{"a": {"b": 1}, "a": {"b": 1}}', ("a",)),
        (b'{"a": {"x": 1}, "b": {"x": 1, "y": 2}, "c": 3, "b": 4}', ("b",)),
    ],
)
def test_duplicate_members(impl, body, paths):
    if paths is None:  # five nested objects of 15 names (more than the 64 slots); the innermost repeats k0
        paths = (".".join(f"o{i}" for i in range(5)) + ".k0",)
    assert impl.duplicate_members(body) == paths


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"}", b"]]]", b'"', b'"\\', b'{"a', b'{"a\\', b'{"a":1,"a', b'{"a":1,"a":', b"\xff\xfe", b',,,{"\\u00'],
)
def test_broken_input_gives_an_answer_without_error(impl, body):
    assert isinstance(impl.duplicate_members(body), tuple)


# --- against a reference and the two implementations against each other ---------------------------------


class Pairs(list):
    """A JSON object as its members in order, duplicates kept."""


def reference(body: bytes) -> tuple:
    """The paths of repeated member names, in document order, from Python's own JSON parser."""
    found: dict[str, None] = {}

    def walk(value, path: str | None) -> None:  # path None: the top
        if isinstance(value, Pairs):
            seen: set[str] = set()
            for name, item in value:
                member = name if path is None else f"{path}.{name}"
                if name in seen:
                    found[member] = None
                seen.add(name)
                walk(item, member)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path or ''}[{index}]")

    walk(json.loads(body, object_pairs_hook=Pairs), None)
    return tuple(found)


# few distinct names, so objects repeat them often; quotes, braces and backslashes included
NAME_CHARS = st.sampled_from(list('ab"\\{}[],:/ é😀\n'))
names = st.text(NAME_CHARS, max_size=3)
strings = st.text(st.one_of(NAME_CHARS, st.characters(exclude_categories=["Cs"])), max_size=8)


def _escape_all(text: str) -> str:
    """Every character as a \\u escape (UTF-16 surrogate pairs beyond the BMP)."""
    units = text.encode("utf-16-be")
    return '"' + "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)) + '"'


ENCODINGS = [
    lambda s: json.dumps(s, ensure_ascii=False),
    lambda s: json.dumps(s, ensure_ascii=True),
    _escape_all,
    lambda s: json.dumps(s, ensure_ascii=False).replace("/", "\\/"),
]


@st.composite
def documents(draw) -> bytes:
    """A JSON text whose objects may repeat names, each string spelled with or without escapes."""
    space = draw(st.sampled_from(["", " ", "\n  ", "\t"]))

    def encode_string(text: str) -> str:
        return draw(st.sampled_from(ENCODINGS))(text)

    def encode(value) -> str:
        if isinstance(value, Pairs):
            members = [f"{encode_string(name)}{space}:{space}{encode(item)}" for name, item in value]
            return "{" + space + f",{space}".join(members) + space + "}"
        if isinstance(value, list):
            return "[" + f",{space}".join(encode(item) for item in value) + "]"
        if isinstance(value, str):
            return encode_string(value)
        return json.dumps(value)

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), strings
    )
    unique = draw(st.booleans())  # half the objects have no repeated name at all

    def objects(children):
        pairs = st.lists(st.tuples(names, children), max_size=6, unique_by=(lambda p: p[0]) if unique else None)
        return pairs.map(Pairs)

    values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | objects(children), max_leaves=20)
    return encode(draw(st.one_of(objects(values), values))).encode()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_agrees_with_the_reference(body):
    msgspec.json.decode(body)  # the gateway scans only what msgspec has decoded
    expected = reference(body)
    assert fastcore.duplicate_members(body) == expected
    assert TWIN.duplicate_members(body) == expected


JSONISH = st.lists(st.sampled_from([b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"a", b"u", b"0", b" "]))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=40), JSONISH.map(b"".join)))
def test_compiled_and_twin_agree_on_anything(body):
    assert fastcore.duplicate_members(body) == TWIN.duplicate_members(body)
