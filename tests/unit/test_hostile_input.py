"""Hostile input at the edge (issue 24): no submission body, partner registry file or signature header of
up to 8 KiB takes more than its budget to decide, and each is refused only in its own words.

A fuzz campaign of a fixed size, with hypothesis. Each family of inputs (random bytes, text built from a
grammar, mutations of a valid input, the pathological shapes) gets a fixed number of examples. Each input
is timed alone; an overrun is timed again and the least time kept, each run's CPU time when less than
its wall time (a blow-up is work and stays slow, a machine shared with other jobs only makes the call
wait). The test asserts on the slowest input of each family, which its message shows. Hypothesis
shrinks only an input that raised what it must not raise: a time is not something it can shrink on a
shared machine. The pathological shapes are also plain parametrized tests, each the attack it documents.

What is decided, and all it may raise:
- a submission body, single (`Intake.prepare`: decode, validate, route) and bulk (`Intake.submit_all` up
  to the idempotency store, its first I/O): accepted, or Refused;
- a partner registry file (`Registry.load`): a Registry, or ConfigurationError;
- a signing partner's request, its `Signature-Input`, `Signature`, `Content-Digest`, a covered field and
  the query (`signatures.verify`): Signed, or SignatureRejected.

What the campaign found, now mended, is kept among the pathological cases: a member name repeated
900 levels down (fastcore.duplicate_members walked the nesting for each repeat: 40 ms for 8 KiB), 1,000
refused bulk items (5-7 ms), a registry's 4,000-part dotted key (200 ms in tomllib, since replaced by
rtoml) and its non-UTF-8 or deeply nested files (UnicodeDecodeError, RecursionError), and a
Signature-Input whose components each parse a covered field or the query again (134: 60-120 ms).
"""

import contextlib
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from time import perf_counter, thread_time
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.app import build_policy
from gateway.errors import Refused
from gateway.idempotency.reservation import ONE_NODE
from gateway.intake.flow import Intake
from gateway.intake.schemas import TransactionRequest
from gateway.partners.admission import unlimited
from gateway.partners.message import Fields, Message
from gateway.partners.registry import Registry
from gateway.partners.signatures import SignatureRejected, sign, verify
from gateway.settings import Settings
from settlement.errors import ConfigurationError
from tests.conftest import transaction

LIMIT = 8192  # bytes: the largest input generated
BUDGET = 0.005  # seconds to decide one input of up to LIMIT bytes
RETIMES = 5  # an overrun is timed this many more times, and the least time kept
EXAMPLES = 200  # per family
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


# ---------------------------------------------------------------------------------------------------
# Timing and the campaign


def _timed(decide: Callable[[Any], object], value: Any) -> tuple[float, float]:
    wall, cpu = perf_counter(), thread_time()
    decide(value)
    return perf_counter() - wall, thread_time() - cpu


def seconds_to_decide(decide: Callable[[Any], object], value: Any, budget: float) -> float:
    """How long `decide(value)` takes; on an overrun, the least of a few more runs (CPU time when less)."""
    wall, _ = _timed(decide, value)
    if wall <= budget:
        return wall
    return min(min(run) for run in (_timed(decide, value) for _ in range(RETIMES)))


def shown(value: Any) -> str:
    """An input as a failure message can show it: its size, its start and its end."""
    if isinstance(value, tuple | list):
        return "(" + ", ".join(shown(part) for part in value) + ")"
    if isinstance(value, str | bytes) and len(value) > 300:
        kind = "bytes" if isinstance(value, bytes) else "chars"
        return f"{len(value)} {kind}: {value[:200]!r} … {value[-80:]!r}"
    return repr(value)


class Slowest:
    """One target's slowest input of a family, and its inputs over budget."""

    def __init__(self, target: str, budget: float = BUDGET) -> None:
        self.target = target
        self.budget = budget
        self.count = 0
        self.seconds = 0.0
        self.value: Any = None
        self.overruns: list[tuple[float, Any]] = []

    def time(self, decide: Callable[[Any], object], value: Any) -> None:
        seconds = seconds_to_decide(decide, value, self.budget)
        self.count += 1
        if self.value is None or seconds > self.seconds:
            self.seconds, self.value = seconds, value
        if seconds > self.budget:
            self.overruns.append((seconds, value))

    def __str__(self) -> str:
        return (
            f"{self.target}: slowest {self.seconds * 1000:.3f} ms (budget {self.budget * 1000:.0f} ms) "
            f"of {self.count} inputs: {shown(self.value)}"
        )


def campaign(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], examples: int = EXAMPLES) -> float:
    """Run `check` on `examples` inputs drawn from `strategy`; the campaign's wall time, in seconds."""

    @settings(max_examples=examples, deadline=None, suppress_health_check=HEALTH)
    @given(strategy)
    def run(value: Any) -> None:
        check(value)

    started = perf_counter()
    run()
    return perf_counter() - started


def report(family: str, seconds: float, *targets: Slowest) -> None:
    """Every target's slowest input, in the captured output (shown with -rP or -s); fails on any input
    over budget, naming how many and the slowest."""
    print(f"{family}: {seconds:.2f} s")
    for target in targets:
        print(f"  {target}")
    failed = [f"{target.target}: {len(target.overruns)} over budget; {target}" for target in targets if target.overruns]
    assert not failed, f"{family}:\n" + "\n".join(failed)


def _random_bytes(seed: int, size: int, alphabet: bytes | None) -> bytes:
    rng = random.Random(seed)
    if alphabet is None:
        return rng.randbytes(size)
    return bytes(rng.choices(alphabet, k=size))


def random_inputs(alphabet: bytes, limit: int = LIMIT) -> st.SearchStrategy[bytes]:
    """Random bytes of any size up to `limit`: uniform, or drawn from `alphabet` (the format's own
    signs). Hypothesis draws a seed and a size, so that a full-size input costs nothing to generate."""
    sizes = st.one_of(st.integers(0, 64), st.integers(0, limit))
    return st.builds(_random_bytes, st.integers(0, 2**32), sizes, st.sampled_from([None, alphabet]))


# Counts: small, or enough to fill the input (an expansion stops at its budget of bytes).
COUNTS = st.one_of(st.integers(0, 8), st.integers(0, LIMIT))


def _fill(part: bytes, separator: bytes, count: int, budget: int) -> bytes:
    count = min(count, max(0, budget) // max(1, len(part) + len(separator)))
    return separator.join([part] * count)


def mutated(base: bytes, edits: list[tuple], piece: Callable[[Any, int], bytes], limit: int = LIMIT) -> bytes:
    """`base` after each edit: insert a piece, delete a span, repeat a span, replace a byte."""
    body = bytearray(base)
    for kind, where, *args in edits:
        at = int(where * len(body))
        if kind == "insert":
            body[at:at] = piece(args[0], limit - len(body))
        elif kind == "delete":
            del body[at : at + args[0]]
        elif kind == "repeat":
            span = bytes(body[at : at + args[0]])
            body[at:at] = span * min(args[1], (limit - len(body)) // max(1, len(span)))
        elif body:  # "byte"
            body[min(at, len(body) - 1)] = args[0]
    return bytes(body[:limit])


def edits(tree: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple]]:
    where = st.floats(0, 1, exclude_max=True)
    return st.lists(
        st.one_of(
            st.tuples(st.just("insert"), where, tree),
            st.tuples(st.just("delete"), where, st.integers(1, 64)),
            st.tuples(st.just("repeat"), where, st.integers(1, 64), COUNTS),
            st.tuples(st.just("byte"), where, st.integers(0, 255)),
        ),
        min_size=1,
        max_size=6,
    )


# ---------------------------------------------------------------------------------------------------
# Submission bodies


JSON_SIGNS = b'{}[],:"\\/0123456789.eE+-tfnulxabu \t\r\n\x00\xc3\xa9\xff'
STRING_UNITS = [
    b"a",
    b"\\\\",
    b'\\"',
    b"\\u0041",
    b"\\u0000",
    b"\\ud800",  # a lone surrogate
    b"\\ud83d\\ude00",
    "é".encode(),
    b"\xed\xa0\x80",  # a surrogate encoded as if UTF-8: not UTF-8
    b"\xff",
    b"\\n",
    b"\\x",
    b"\x00",
    b"\n",
    b"`",
    b" - at `$",  # the marker decoding.shape_errors looks for in msgspec's messages
]
JSON_LITERALS = [
    b"0",
    b"-0",
    b"1",
    b"250.00",
    b'"250.00"',
    b'"USD"',
    b'"t1"',
    b"true",
    b"false",
    b"null",
    b"nul",
    b"{}",
    b"[]",
    b'""',
    b",",
    b":",
    b"]",
    b"}",
    b"1e",
    b"-",
    b".5",
    b"01",
    b"NaN",
    b"Infinity",
    b"\\",
    b'"',
    b"",
]
OPENERS = [
    (b"[", b"]"),
    (b'{"a":', b"}"),
    (b'{"metadata":', b"}"),
    (b'{"amount":', b"}"),
    (b"[{", b"}]"),
    (b'{"a":[', b"]}"),
]
FIELDS = [*TransactionRequest.__struct_fields__, "amt", ""]  # a request's fields, one that is not, none


def json_piece(tree: Any, budget: int) -> bytes:
    """The JSON-ish text of a grammar tree, of at most about `budget` bytes."""
    kind, *args = tree
    if budget <= 0:
        return b""
    if kind == "literal":
        return args[0]
    if kind == "string":
        unit, count = args
        return b'"' + _fill(unit, b"", count, budget - 2) + b'"'
    if kind == "number":
        negative, digits, fraction, exponent, exponent_digits = args
        part = budget // 3
        text = (b"-" if negative else b"") + (b"9" * min(digits, part) or b"0")
        if fraction:
            text += b"." + b"0" * min(fraction, part)
        if exponent:
            text += exponent + b"9" * min(exponent_digits, part)
        return text
    if kind == "nested":
        (opener, closer), depth, child, closed = args
        inner = json_piece(child, budget // 2)
        depth = min(depth, (budget - len(inner)) // (len(opener) + len(closer)))
        return opener * depth + inner + (closer * depth if closed else b"")
    if kind == "array":
        count, child = args
        return b"[" + _fill(json_piece(child, budget // 4), b",", count, budget - 2) + b"]"
    if kind == "object":
        count, child, same_name = args
        value = json_piece(child, budget // 4)
        count = min(count, budget // (len(value) + 9))
        names = [b'"k"' if same_name else b'"k%d"' % i for i in range(count)]
        return b"{" + b",".join(name + b":" + value for name in names) + b"}"
    parts: list[bytes] = []  # "sequence": pieces side by side, as garbage usually is
    for child in args[0]:
        parts.append(json_piece(child, budget - sum(map(len, parts))))
    return b"".join(parts)


JSON_TREES = st.recursive(
    st.one_of(
        st.tuples(st.just("literal"), st.sampled_from(JSON_LITERALS)),
        st.tuples(st.just("string"), st.sampled_from(STRING_UNITS), COUNTS),
        st.tuples(st.just("number"), st.booleans(), COUNTS, COUNTS, st.sampled_from([b"", b"e", b"E+", b"e-"]), COUNTS),
    ),
    lambda child: st.one_of(
        st.tuples(st.just("nested"), st.sampled_from(OPENERS), COUNTS, child, st.booleans()),
        st.tuples(st.just("array"), COUNTS, child),
        st.tuples(st.just("object"), COUNTS, child, st.booleans()),
        st.tuples(st.just("sequence"), st.lists(child, max_size=5)),
    ),
    max_leaves=10,
)


def transaction_body(n: int, changes: dict[str, bytes] | None = None) -> bytes:
    """A valid transaction's JSON, with fields replaced or added by `changes` (raw JSON text)."""
    fields = {name: json.dumps(value).encode() for name, value in transaction(f"hostile{n}").items()}
    fields.update(changes or {})
    return b"{" + b",".join(json.dumps(name).encode() + b":" + value for name, value in fields.items()) + b"}"


def _submission(items: int, bulk: bool, changes: list[tuple[int, str, Any]], body_edits: list[tuple]) -> bytes:
    changed: dict[int, dict[str, bytes]] = {}
    for index, field, tree in changes:
        changed.setdefault(index % items, {})[field] = json_piece(tree, LIMIT // 2)
    bodies = [transaction_body(n, changed.get(n)) for n in range(items)]
    base = b"[" + b",".join(bodies) + b"]" if bulk else bodies[0]
    return mutated(base[:LIMIT], body_edits, json_piece)


SUBMISSIONS = {
    "random bytes": random_inputs(JSON_SIGNS),
    "json grammar": st.builds(json_piece, JSON_TREES, st.just(LIMIT)),
    "mutated transactions": st.builds(
        _submission,
        st.integers(1, 30),
        st.booleans(),
        st.lists(st.tuples(st.integers(0, 29), st.sampled_from(FIELDS), JSON_TREES), max_size=3),
        st.one_of(st.just([]), edits(JSON_TREES)),
    ),
}


class Unreached(Exception):
    """What the offline store raises: a bulk body was decided as far as it can be without I/O."""


class OfflineStore:
    """The idempotency store of an intake that never reaches Redis: a bulk request stops at its
    reservation, with its decoding, validation and routing done."""

    layout = ONE_NODE

    async def reserve_all(self, *args: object) -> None:
        raise Unreached


SETTINGS = Settings.from_env({})
UNLIMITED = unlimited("hostile")
INTAKE = Intake(SETTINGS, *build_policy(SETTINGS), OfflineStore(), None, None, lambda: 1_800_000_000.0, None)  # type: ignore[arg-type]


def decide_single(body: bytes) -> None:
    """A single submission's body as the intake decides it before any I/O: accepted, or Refused."""
    with contextlib.suppress(Refused):
        INTAKE.prepare("hostile", body, None)


def decide_bulk(body: bytes) -> None:
    """A bulk submission's body as the intake decides it up to the store: accepted, or Refused."""
    steps = INTAKE.submit_all("hostile", body, None, SETTINGS.bulk_max_items, UNLIMITED)
    try:
        steps.send(None)  # nothing is awaited before the store, so the first step runs up to it
    except (Refused, Unreached):
        return
    finally:
        steps.close()
    raise AssertionError("the bulk intake awaited something before the store: drive it with an event loop")


def test_the_offline_intake_accepts_a_valid_body():
    """The campaign's intake is a real one: a valid body goes all the way to the store."""
    prepared = INTAKE.prepare("hostile", transaction_body(1), None)
    assert prepared.reservation.transaction_id == "txn_hostile1"
    steps = INTAKE.submit_all(
        "hostile", b"[" + transaction_body(1) + b"," + transaction_body(2) + b"]", None, 10, UNLIMITED
    )
    with pytest.raises(Unreached):
        steps.send(None)


@pytest.mark.parametrize("family", list(SUBMISSIONS))
def test_submission_bodies_are_decided_within_budget(family):
    single, bulk = Slowest("single"), Slowest("bulk")

    def check(body: bytes) -> None:
        single.time(decide_single, body)
        bulk.time(decide_bulk, body)

    report(f"submissions, {family}", campaign(SUBMISSIONS[family], check), single, bulk)


def _items(item: bytes, count: int = SETTINGS.bulk_max_items) -> bytes:
    count = min(count, (LIMIT - 2) // (len(item) + 1))
    return b"[" + b",".join([item] * count) + b"]"


def _deep_repeats(depth: int) -> bytes:
    repeats = (LIMIT - 2 * depth - 2) // 6
    return b"[" * depth + b"{" + b",".join([b'"k":1'] * repeats) + b"}" + b"]" * depth


PATHOLOGICAL_BODIES = {
    "deep arrays": b"[" * LIMIT,
    "deep arrays, closed": b"[" * (LIMIT // 2) + b"]" * (LIMIT // 2),
    "deep objects": b'{"a":' * (LIMIT // 5),
    "deep metadata": transaction_body(0, {"metadata": b'{"a":' * 1300 + b"1" + b"}" * 1300}),
    "deep amount": transaction_body(0, {"amount": b"[" * 3000 + b"]" * 3000}),
    "long string": b'"' + b"a" * (LIMIT - 2) + b'"',
    "escapes": b'"' + b"\\u0041" * ((LIMIT - 2) // 6) + b'"',
    "lone surrogates": transaction_body(0, {"transaction_id": b'"' + b"\\ud800" * 1300 + b'"'}),
    "long unknown name": transaction_body(0, {"a - at `$" * 800: b"1"}),
    "many keys": b"{" + b",".join(b'"k%d":1' % i for i in range(900)) + b"}",
    "one key many times": b"{" + b",".join([b'"k":1'] * 1300) + b"}",
    "one key many times, 900 deep": _deep_repeats(900),  # under msgspec's depth limit of 1,000
    "many metadata keys": transaction_body(
        0, {"metadata": b"{" + b",".join(b'"k%d":"v"' % i for i in range(700)) + b"}"}
    ),
    "huge amount": transaction_body(0, {"amount": b"9" * 7900}),
    "huge exponent": transaction_body(0, {"amount": b"1e" + b"9" * 7900}),
    "tiny exponent": transaction_body(0, {"amount": b"1e-" + b"9" * 7900}),
    "long fraction": transaction_body(0, {"amount": b"0." + b"0" * 7890 + b"1"}),
    "long decimal string": transaction_body(0, {"amount": b'"' + b"1" * 7890 + b'"'}),
    "bulk of non-objects": _items(b"1"),
    "bulk of empty objects": _items(b"{}"),
    "bulk of arrays": _items(b"[1]"),
    "bulk of unknown fields": _items(b'{"a":1}'),
    "bulk of duplicate names": _items(b'{"a":1,"a":2}'),
    "bulk of nested duplicates": _items(b'{"a":{"a":1,"a":2}}'),
    "bulk of bad amounts": _items(b'{"amount":-1,"source_currency":"X"}'),
    "bulk of valid transactions": b"[" + b",".join(transaction_body(n) for n in range(29)) + b"]",
    "bulk over the limit": _items(b"0", 4000),
}


@pytest.mark.parametrize("body", PATHOLOGICAL_BODIES.values(), ids=PATHOLOGICAL_BODIES)
def test_a_pathological_body_is_decided_within_budget(body):
    assert len(body) <= LIMIT
    single, bulk = Slowest("single"), Slowest("bulk")
    single.time(decide_single, body)
    bulk.time(decide_bulk, body)
    report("a pathological body", 0.0, single, bulk)


# ---------------------------------------------------------------------------------------------------
# Partner registry files


TOML_SIGNS = b"[]{}=,.\"'#\n\r\t _-:+0123456789aefinrstuxzTZ\\\x00\x7f\xc3\xa9\xff"
REGISTRY_ENVIRON = {"HOSTILE_SECRET": "s" * 40, "SHORT_SECRET": "s", "EMPTY": ""}
DIGEST = hashlib.sha256(b"hostile").hexdigest()
VALID_REGISTRY = f"""# partners of a hostile test
[partners.acme]
rate = 500
burst = 1000
windows = ["t0", "t1"]
currencies = ["USD", "GBP"]
keys = [
  {{ id = "2026-11", sha256 = "{DIGEST}" }},
  {{ id = "2026-05", sha256 = "{hashlib.sha256(b"old").hexdigest()}", revoked = true }},
  {{ id = "2025-05", sha256 = "{hashlib.sha256(b"older").hexdigest()}", expires = 2026-01-01T00:00:00Z }},
]

[partners.signed]
signing_secret_env = "HOSTILE_SECRET"
keys = [{{ id = "k1", sha256 = "{hashlib.sha256(b"signed").hexdigest()}" }}]

[partners.inline]
signing_secret = "an-inline-signing-secret-of-32-bytes!"
keys = [{{ id = "k1", sha256 = "{hashlib.sha256(b"inline").hexdigest()}" }}]
""".encode()
TOML_KEYS = [
    b"partners",
    b"partners.acme",
    b"partners.a-b_9",
    b"rate",
    b"burst",
    b"windows",
    b"currencies",
    b"signing_secret",
    b"signing_secret_env",
    b"keys",
    b"id",
    b"sha256",
    b"revoked",
    b"expires",
    b'"quoted.key"',
    b"'literal'",
    "é".encode(),
    b'""',
    b"a",
]
TOML_LITERALS = [
    b"0",
    b"-1",
    b"500",
    b"1.5",
    b"inf",
    b"nan",
    b"-0.0",
    b"1e400",
    b"0x_1",
    b"0xff",
    b"0o7",
    b"0b1",
    b"1__0",
    b"true",
    b"false",
    b'"t1"',
    b'"USD"',
    b'"HOSTILE_SECRET"',
    b'"SHORT_SECRET"',
    b'"EMPTY"',
    b'"' + DIGEST.encode() + b'"',
    b"2026-01-01T00:00:00Z",
    b"2026-01-01T00:00:00",
    b"2026-13-01",
    b"07:32:00",
    b"[]",
    b"{}",
    b"[",
    b"{",
    b'"',
    b"'''",
    b"",
]
TOML_STRING_UNITS = [b"a", b"\\n", b"\\u00e9", b"\\U0001F600", b"\\x", b'\\"', "é".encode(), b"\t", b"\x00", b" "]
TOML_QUOTES = [(b'"', b'"'), (b"'", b"'"), (b'"""', b'"""'), (b"'''", b"'''"), (b'"', b"")]


def toml_piece(tree: Any, budget: int) -> bytes:
    """The TOML-ish text of a grammar tree, of at most about `budget` bytes."""
    kind, *args = tree
    if budget <= 0:
        return b""
    if kind == "literal":
        return args[0]
    if kind == "string":
        (opening, closing), unit, count = args
        return opening + _fill(unit, b"", count, budget - 6) + closing
    if kind == "key":  # a bare, quoted or dotted key
        part, count = args
        return _fill(part, b".", max(1, count), budget)
    if kind == "array":
        count, child, depth = args
        inner = _fill(toml_piece(child, budget // 4), b", ", count, budget // 2)
        depth = min(depth, (budget - len(inner)) // 2)
        return b"[" * depth + inner + b"]" * depth
    if kind == "inline":
        count, key, child = args
        pair = toml_piece(key, 64) + b" = " + toml_piece(child, budget // 4)
        return b"{ " + _fill(pair, b", ", count, budget - 4) + b" }"
    if kind == "pair":
        key, child = args
        return toml_piece(key, budget // 2) + b" = " + toml_piece(child, budget // 2)
    if kind == "table":
        key, array = args
        opening, closing = (b"[[", b"]]") if array else (b"[", b"]")
        return opening + toml_piece(key, budget - 4) + closing
    if kind == "lines":  # statements, one a line, some repeated
        separator, statements, count = args
        lines = separator.join(toml_piece(child, budget // max(1, len(statements))) for child in statements)
        return _fill(lines, separator, max(1, count), budget)
    parts: list[bytes] = []  # "sequence"
    for child in args[0]:
        parts.append(toml_piece(child, budget - sum(map(len, parts))))
    return b"".join(parts)


TOML_KEY_TREES = st.tuples(st.just("key"), st.sampled_from(TOML_KEYS), st.one_of(st.integers(1, 3), COUNTS))
TOML_VALUES = st.recursive(
    st.one_of(
        st.tuples(st.just("literal"), st.sampled_from(TOML_LITERALS)),
        st.tuples(st.just("string"), st.sampled_from(TOML_QUOTES), st.sampled_from(TOML_STRING_UNITS), COUNTS),
    ),
    lambda child: st.one_of(
        st.tuples(st.just("array"), COUNTS, child, st.one_of(st.integers(1, 3), COUNTS)),
        st.tuples(st.just("inline"), COUNTS, TOML_KEY_TREES, child),
    ),
    max_leaves=6,
)
TOML_STATEMENTS = st.one_of(
    st.tuples(st.just("pair"), TOML_KEY_TREES, TOML_VALUES),
    st.tuples(st.just("table"), TOML_KEY_TREES, st.booleans()),
    st.tuples(st.just("literal"), st.sampled_from([b"# a comment", b"", b"\xef\xbb\xbf", b"[partners.acme]"])),
    st.tuples(st.just("sequence"), st.lists(TOML_VALUES, max_size=3)),
)
TOML_DOCUMENTS = st.tuples(
    st.just("lines"),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(TOML_STATEMENTS, min_size=1, max_size=12),
    COUNTS,
)
REGISTRIES = {
    "random bytes": random_inputs(TOML_SIGNS),
    "toml grammar": st.builds(toml_piece, TOML_DOCUMENTS, st.just(LIMIT)),
    "mutated registries": st.builds(mutated, st.just(VALID_REGISTRY), edits(TOML_VALUES), st.just(toml_piece)),
}


@pytest.fixture
def load_registry(tmp_path: Path) -> Callable[[Slowest, bytes], None]:
    """Time `Registry.load` of a file holding `text`: a Registry or a ConfigurationError, nothing else."""
    path = tmp_path / "partners.toml"

    def load(text: bytes) -> None:
        with contextlib.suppress(ConfigurationError):
            Registry.load(path, REGISTRY_ENVIRON)

    def time(target: Slowest, text: bytes) -> None:
        path.write_bytes(text)
        target.time(load, text)

    return time


def test_the_valid_registry_loads(tmp_path):
    path = tmp_path / "partners.toml"
    path.write_bytes(VALID_REGISTRY)
    assert set(Registry.load(path, REGISTRY_ENVIRON).partners) == {"acme", "signed", "inline"}


@pytest.mark.parametrize("family", list(REGISTRIES))
def test_registry_files_load_or_are_refused_within_budget(family, load_registry):
    loaded = Slowest("registry")
    report(f"registries, {family}", campaign(REGISTRIES[family], lambda text: load_registry(loaded, text)), loaded)


def _partners(count: int, digest: Callable[[int], str] = lambda i: hashlib.sha256(b"%d" % i).hexdigest()) -> bytes:
    one = '[partners.p{}]\nrate = 10\nkeys = [{{ id = "k", sha256 = "{}" }}]\n'
    return "".join(one.format(i, digest(i)) for i in range(count)).encode()


PATHOLOGICAL_REGISTRIES = {
    "not UTF-8": b"[partners.acme]\xff\n",
    "arrays 600 deep": b"a = " + b"[" * 600 + b"]" * 600,
    "inline tables 600 deep": b"a = " + b"{ b = " * 600 + b"1" + b" }" * 600,
    "a key of 4,000 dotted parts": b"a." * 4000 + b"b = 1",
    "a table header 4,000 deep": b"[" + b"a." * 4000 + b"b]",
    "a header 600 deep, then 300 keys": b"["
    + b".".join(b"h%d" % i for i in range(600))
    + b"]\n"
    + b"".join(b"k%d=1\n" % i for i in range(300)),
    "4,000 integers": b"a = [" + b"1," * 4000 + b"]",
    "a string of 8 KiB": b'a = "' + b"x" * 8180 + b'"',
    "escapes": b'a = "' + b"\\u00e9" * 1360 + b'"',
    "65 partners": _partners(65),
    "one key digest listed 65 times": _partners(65, lambda i: DIGEST),
    "many keys": b"[partners.acme]\nkeys = ["
    + b",".join(
        b'{ id = "%d", sha256 = "%s" }' % (i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(85)
    )
    + b"]\n",
    "many lines": b"\n" * LIMIT,
    "many comments": b"#\n" * (LIMIT // 2),
}


@pytest.mark.parametrize("text", PATHOLOGICAL_REGISTRIES.values(), ids=PATHOLOGICAL_REGISTRIES)
def test_a_pathological_registry_loads_or_is_refused_within_budget(text, load_registry):
    assert len(text) <= LIMIT
    loaded = Slowest("registry")
    load_registry(loaded, text)
    report("a pathological registry", 0.0, loaded)


# ---------------------------------------------------------------------------------------------------
# Signature headers


SECRET = b"a-signing-secret-of-at-least-32-bytes!"
NOW = 1_800_000_000
NONCE = "nonce-hostile-0001"
SIGNED_BODY = transaction_body(0)
PATH = "/api/v1/transactions"
SIGNED = {
    name.encode(): value.encode()
    for name, value in sign(SECRET, "POST", PATH, SIGNED_BODY, NOW, NONCE, {"content-type": "application/json"}).items()
}
PARAMS = f';created={NOW};nonce="{NONCE}";alg="hmac-sha256"'.encode()


class Request(NamedTuple):
    """What a campaign input changes of a signed request: its signature headers, a field `x` a
    signature may cover, and the query."""

    signature_input: bytes
    signature: bytes = SIGNED[b"signature"]
    content_digest: bytes = SIGNED[b"content-digest"]
    x: bytes = b""
    query: bytes = b""


def decide_signature(request: Request) -> None:
    """A signing partner's request as the edge checks its signature: Signed, or SignatureRejected."""
    lines = [
        (b"content-type", b"application/json"),
        (b"host", b"gateway.example"),
        (b"signature-input", request.signature_input),
        (b"signature", request.signature),
        (b"content-digest", request.content_digest),
    ]
    if request.x:
        lines.append((b"x", request.x))
    message = Message("POST", "http", PATH, request.query.decode("latin-1"), Fields(lines))
    with contextlib.suppress(SignatureRejected):
        verify(SECRET, message, SIGNED_BODY, NOW, "hostile")


def test_the_signed_request_verifies():
    """The campaign's request is one the gateway accepts, before anything is changed."""
    lines = list(SIGNED.items())  # content-type among them
    assert verify(SECRET, Message("POST", "http", PATH, "", Fields(lines)), SIGNED_BODY, NOW, "hostile").nonce == NONCE


SF_SIGNS = b'()=;,:" \t*?@%-.0123456789abcdefgkmnpqstxyzAZ+/\\\x00\x7f\xe9\xff'
SF_TOKEN_UNITS = [b"a", b"sig1", b"*", b"@method", b"a.b", b"%", b"\xe9", b"A"]
SF_STRING_UNITS = [b"a", b'\\"', b"\\\\", b"\\x", b" ", b"\x7f", b"\xe9", b"@method", b'"']
SF_BYTES_UNITS = [b"AAAA", b"A", b"=", b"*", b" ", b"+/"]
SF_KEYS = [
    b"a",
    b"created",
    b"expires",
    b"nonce",
    b"alg",
    b"keyid",
    b"tag",
    b"sf",
    b"key",
    b"bs",
    b"req",
    b"tr",
    b"name",
    b"sig1",
    b"sha-256",
    b"sha-512",
    b"*a",
    b"A",
    b"",
]
SF_LITERALS = [
    b"?0",
    b"?1",
    b"?2",
    b"?",
    b"1",
    b"-0",
    b"1.5",
    b"1.",
    b"@1800000000",
    b'%"a%c3%a9"',
    b'%"%zz"',
    b"1800000000",
    b'"hmac-sha256"',
    b'"' + NONCE.encode() + b'"',
    b'"@method"',
    b'"@path"',
    b'"@query"',
    b'"content-digest"',
    b'"content-type"',
    b'"x"',
    b"()",
    b":AAAA:",
    b"",
]


def sf_piece(tree: Any, budget: int) -> bytes:
    """The structured-field-ish text of a grammar tree, of at most about `budget` bytes."""
    kind, *args = tree
    if budget <= 0:
        return b""
    if kind == "literal":
        return args[0]
    if kind == "token":
        unit, count = args
        return _fill(unit, b"", max(1, count), budget)
    if kind == "integer":
        negative, digits = args
        return (b"-" if negative else b"") + b"9" * max(1, min(digits, budget - 1))
    if kind == "string":
        unit, count, closed = args
        return b'"' + _fill(unit, b"", count, budget - 2) + (b'"' if closed else b"")
    if kind == "bytes":
        unit, count, closed = args
        return b":" + _fill(unit, b"", count, budget - 2) + (b":" if closed else b"")
    if kind == "params":
        child, key, value, count = args
        inner = sf_piece(child, budget // 2)
        parameter = b";" + key + (b"" if value is None else b"=" + value)  # `;key` alone is a true one
        return inner + _fill(parameter, b"", count, budget - len(inner))
    if kind == "keyed":
        key, child = args
        return key + b"=" + sf_piece(child, budget - len(key) - 1)
    if kind == "inner":
        children, count, depth = args
        inner = b" ".join(sf_piece(child, budget // max(1, 2 * len(children))) for child in children)
        inner = _fill(inner, b" ", max(1, count), budget // 2) if inner else b""
        depth = max(1, min(depth, (budget - len(inner)) // 2))
        return b"(" * depth + inner + b")" * depth
    if kind == "members":
        separator, children, count = args
        members = separator.join(sf_piece(child, budget // max(1, len(children))) for child in children)
        return _fill(members, separator, max(1, count), budget)
    parts: list[bytes] = []  # "sequence"
    for child in args[0]:
        parts.append(sf_piece(child, budget - sum(map(len, parts))))
    return b"".join(parts)


SF_TREES = st.recursive(
    st.one_of(
        st.tuples(st.just("literal"), st.sampled_from(SF_LITERALS)),
        st.tuples(st.just("token"), st.sampled_from(SF_TOKEN_UNITS), COUNTS),
        st.tuples(st.just("integer"), st.booleans(), st.one_of(st.integers(1, 20), COUNTS)),
        st.tuples(st.just("string"), st.sampled_from(SF_STRING_UNITS), COUNTS, st.booleans()),
        st.tuples(st.just("bytes"), st.sampled_from(SF_BYTES_UNITS), COUNTS, st.booleans()),
    ),
    lambda child: st.one_of(
        st.tuples(st.just("params"), child, st.sampled_from(SF_KEYS), st.sampled_from([None, *SF_LITERALS]), COUNTS),
        st.tuples(st.just("keyed"), st.sampled_from(SF_KEYS), child),
        st.tuples(st.just("inner"), st.lists(child, max_size=4), COUNTS, st.one_of(st.integers(1, 3), COUNTS)),
        st.tuples(
            st.just("members"),
            st.sampled_from([b", ", b",", b" , ", b";", b"\t,"]),
            st.lists(child, max_size=4),
            COUNTS,
        ),
        st.tuples(st.just("sequence"), st.lists(child, max_size=4)),
    ),
    max_leaves=10,
)
# sizes around the edge's bounds (2 KiB for Signature-Input and a covered field, 1 KiB for the others)
# as often as anywhere else up to LIMIT
SF_BUDGETS = st.one_of(st.integers(0, 256), st.integers(900, 2100), st.integers(0, LIMIT))
COMPONENTS = [
    b'"@method"',
    b'"@path"',
    b'"@query"',
    b'"@request-target"',
    b'"@target-uri"',
    b'"@authority"',
    b'"@scheme"',
    b'"@status"',
    b'"@signature-params"',
    b'"@query-param";name="k"',
    b'"@query-param";name="k%d"',  # %d: a name of its own each time (a component is covered once)
    b'"content-type"',
    b'"content-digest"',
    b'"content-digest";sf',
    b'"content-digest";key="sha-256"',
    b'"content-digest";bs',
    b'"x"',
    b'"x";sf',
    b'"x";bs',
    b'"x";key="m%d"',
    b'"x";req',
    b'"x";tr',
    b'"host"',
    b'"idempotency-key"',
    b'"X"',
    b'"@foo"',
]


def _components(chosen: list[bytes], count: int, budget: int) -> bytes:
    parts, size, index = [], 0, 0
    for _ in range(max(1, count)):
        for component in chosen:
            part = component.replace(b"%d", b"%d" % index) if b"%d" in component else component
            index += 1
            if size + len(part) + 1 > budget:
                return b" ".join(parts)
            parts.append(part)
            size += len(part) + 1
    return b" ".join(parts)


def _signature_request(
    chosen: list[bytes], count: int, x: Any, query: Any, sizes: tuple[int, int], tail: Any
) -> Request:
    """A Signature-Input shaped as the gateway reads it (components, then the right parameters), over
    a covered field `x` and a query made from the grammar."""
    inner = _components(chosen, count, sizes[0])
    return Request(
        b"sig1=(" + inner + b")" + PARAMS + sf_piece(tail, 64),
        x=sf_piece(x, sizes[1]),
        query=sf_piece(query, sizes[1]).replace(b" ", b"&"),
    )


def _raw_headers(which: int, tree: Any, size: int) -> Request:
    value = sf_piece(tree, size)
    if which == 0:
        return Request(value)
    if which == 1:
        return Request(SIGNED[b"signature-input"], signature=value)
    if which == 2:
        return Request(SIGNED[b"signature-input"], content_digest=value)
    return Request(SIGNED[b"signature-input"], x=value)


def _mutated_request(which: int, header_edits: list[tuple]) -> Request:
    name = (b"signature-input", b"signature", b"content-digest")[which]
    value = mutated(SIGNED[name], header_edits, sf_piece)
    return Request(**{"signature_input": SIGNED[b"signature-input"], name.decode().replace("-", "_"): value})


def _pathological(family: int, count: int, tail: bytes) -> Request:
    """The families of the attack on the old regular expression, and their kin, N times."""
    if family == 0:
        return Request(b"sig1=()" + _fill(b';a="', b"", count, LIMIT - 16) + tail)
    if family == 1:
        return Request(b"sig1=" + b"(" * min(count, LIMIT // 2) + b")" * min(count, LIMIT // 2) + tail)
    if family == 2:
        return Request(b"sig1=" + _fill(b"a", b"", count, LIMIT - 8) + tail)
    if family == 3:
        return Request(_fill(b"a=1", b", ", count, LIMIT) + tail)
    if family == 4:
        return Request(b'sig1=("@method");' + _fill(b"a=1", b";", count, LIMIT - 20) + tail)
    if family == 5:
        return Request(b'sig1=("' + _fill(b"a", b"", count, LIMIT - 10) + b'")' + tail)
    return Request(SIGNED[b"signature-input"], signature=b"sig1=:" + _fill(b"A", b"", count, LIMIT - 8) + b":" + tail)


SIGNATURES = {
    "random bytes": st.builds(
        Request, random_inputs(SF_SIGNS), random_inputs(SF_SIGNS, 2100), random_inputs(SF_SIGNS, 2100)
    ),
    "structured field grammar": st.builds(_raw_headers, st.integers(0, 3), SF_TREES, SF_BUDGETS),
    "signature grammar": st.builds(
        _signature_request,
        st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=8),
        COUNTS,
        SF_TREES,
        SF_TREES,
        st.tuples(SF_BUDGETS, SF_BUDGETS),
        SF_TREES,
    ),
    "mutated signatures": st.builds(_mutated_request, st.integers(0, 2), edits(SF_TREES)),
    "pathological families": st.builds(
        _pathological, st.integers(0, 6), COUNTS, st.sampled_from([b"", b" ", b" x", b";", b",", b'"', b"\t"])
    ),
}


@pytest.mark.parametrize("family", list(SIGNATURES))
def test_signature_headers_are_checked_within_budget(family):
    checked = Slowest("verify")
    report(f"signatures, {family}", campaign(SIGNATURES[family], lambda r: checked.time(decide_signature, r)), checked)


def _reparsing(kind: bytes) -> Request:
    components = b'"@method" "@path" "@query" "content-type" "content-digest" '
    query = b"&".join(b"k%d=v" % i for i in range(200)) + b"&" + b"a=1&" * 1000
    x = b", ".join(b"m%d=:AAAAAAAA:" % i for i in range(140))[:2040]
    inner = _components([kind], 400, 2048 - len(components) - len(PARAMS) - 8)
    return Request(b"sig1=(" + components + inner + b")" + PARAMS, x=x[: x.rfind(b",")], query=query[:6000])


PATHOLOGICAL_SIGNATURES = {
    **{
        f'sig1=() then ;a=" x{count}{tail!r}': Request(b"sig1=()" + b';a="' * count + tail)
        for count in (30, 60, 500)
        for tail in (b" ", b" x", b";")
    },
    "parentheses 4,000 deep": Request(b"sig1=" + b"(" * 4000 + b")" * 4000),
    "parentheses 1,000 deep": Request(b"sig1=" + b"(" * 1000 + b")" * 1000),
    "a token of 8 KiB": Request(b"sig1=" + b"a" * (LIMIT - 5)),
    "a token of 2 KiB": Request(b"sig1=" + b"a" * 2040),
    "many members": Request(b", ".join(b"a%d=1" % i for i in range(400))[:2048]),
    "many params": Request((b'sig1=("@method")' + b"".join(b";a%d=1" % i for i in range(400)))[:2048]),
    "many components": Request(b"sig1=(" + b'"@method" ' * 200 + b")" + PARAMS),
    "a string of 2 KiB": Request(b'sig1=("' + b"a" * 2030 + b'")'),
    "escapes": Request(b'sig1=("' + b'\\"' * 1000 + b'")'),
    "a Signature of 1 KiB": Request(SIGNED[b"signature-input"], signature=b"sig1=:" + b"A" * 1012 + b":"),
    "a Content-Digest of many members": Request(
        SIGNED[b"signature-input"], content_digest=b", ".join([b"sha-256=:AAAA:"] * 70)
    ),
    "a field covered by member, over and over": _reparsing(b'"x";key="m%d"'),
    "a query covered by parameter, over and over": _reparsing(b'"@query-param";name="k%d"'),
}


@pytest.mark.parametrize("request_", PATHOLOGICAL_SIGNATURES.values(), ids=PATHOLOGICAL_SIGNATURES)
def test_a_pathological_signature_header_is_checked_within_budget(request_):
    checked = Slowest("verify")
    checked.time(decide_signature, request_)
    report("a pathological signature header", 0.0, checked)
