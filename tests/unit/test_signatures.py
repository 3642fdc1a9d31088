"""RFC 9421 HMAC signatures and RFC 9530 Content-Digest, checked without the network: the RFC's own
examples, what the gateway requires of a signing partner, and the size bounds."""

import base64
import hashlib
import hmac
import time

import pytest

from gateway.partners.message import Fields, Message, message_of
from gateway.partners.signatures import (
    MAX_SIGNATURE_INPUT,
    SignatureRejected,
    content_digest,
    sign,
    signature_base,
    signature_inputs,
    verify,
    verify_hmac,
)

SECRET = b"k" * 32
BODY = b'{"transaction_id":"txn_1"}'
NOW = 1_764_400_000
URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


def message(headers: dict[str, str], method: str = "POST", target: str = URL, scheme: str = "http") -> Message:
    path, _, query = target.partition("?")
    return Message(method, scheme, path, query, Fields([(k.lower().encode(), v.encode()) for k, v in headers.items()]))


def _verify(headers: dict[str, str], body: bytes = BODY, method: str = "POST", target: str = URL):
    return verify(SECRET, message(headers, method, target), body, NOW, "acme")


def signed(target: str = URL, body: bytes = BODY, fields: dict[str, str] | None = None, created: int = NOW):
    return sign(SECRET, "POST", target, body, created, "nonce-0001", JSON if fields is None else fields)


def test_what_sign_makes_verify_accepts_and_the_nonce_outlives_the_window():
    result = _verify(signed(created=NOW - 10))
    assert result.nonce == "nonce-0001"
    assert result.ttl_ms == (NOW - 10 + 300 - NOW) * 1000 + 1000


def test_content_digest_is_rfc_9530_sha_256():
    assert content_digest(b"") == "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"


# --- the RFC's own examples -------------------------------------------------------------------------

# RFC 9421 Appendix B.1.5 (test-shared-secret) and B.2 (the test request)
RFC_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_REQUEST = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+"
    "TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    "Content-Length": "18",
}
RFC_BODY = b'{"hello": "world"}'


def test_rfc_9421_appendix_b_2_5_hmac_sha256_verifies():
    headers = {
        **RFC_REQUEST,
        "Signature-Input": 'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"',
        "Signature": "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    }
    request = message(headers, target="/foo?param=Value&Pet=dog")
    (signature_input,) = signature_inputs(request.fields)
    assert signature_base(request, signature_input).decode() == (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        '"@authority": example.com\n'
        '"content-type": application/json\n'
        '"@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
    )
    verify_hmac(RFC_SECRET, request, signature_input, base64.b64decode("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="))
    with pytest.raises(SignatureRejected, match="does not match"):
        verify_hmac(RFC_SECRET, message({**headers, "Date": "Wed"}, target="/foo"), signature_input, b"x" * 32)
    # the RFC's body matches its Content-Digest (sha-512)
    assert base64.b64encode(hashlib.sha512(RFC_BODY).digest()).decode() in RFC_REQUEST["Content-Digest"]


def base_of(headers: dict[str, str], components: str, target: str = "/path?param=value", scheme: str = "https"):
    request = message({**headers, "Signature-Input": f"sig1=({components})"}, target=target, scheme=scheme)
    (signature_input,) = signature_inputs(request.fields)
    return signature_base(request, signature_input).decode().split("\n")[:-1]


def test_rfc_9421_section_2_2_derived_components():
    lines = base_of(
        {"Host": "www.example.com"},
        '"@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query"',
    )
    assert lines == [
        '"@method": POST',
        '"@target-uri": https://www.example.com/path?param=value',
        '"@authority": www.example.com',
        '"@scheme": https',
        '"@request-target": /path?param=value',
        '"@path": /path',
        '"@query": ?param=value',
    ]
    assert base_of({}, '"@query"', target="/path") == ['"@query": ?']
    assert base_of({"Host": "WWW.Example.com:443"}, '"@authority"') == ['"@authority": www.example.com']


def test_rfc_9421_section_2_2_8_query_parameters():
    target = "/path?param=value&foo=bar&baz=batman&qux="
    names = '"@query-param";name="baz" "@query-param";name="qux" "@query-param";name="param"'
    assert base_of({}, names, target) == [
        '"@query-param";name="baz": batman',
        '"@query-param";name="qux": ',
        '"@query-param";name="param": value',
    ]
    target = "/path?var=this%20is%20a%20big%0Avalue&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"
    names = '"@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20"'
    assert base_of({}, names, target) == [
        '"@query-param";name="var": this%20is%20a%20big%0Avalue',
        '"@query-param";name="bar": with%20plus%20whitespace',
        '"@query-param";name="fa%C3%A7ade%22%3A%20": something',
    ]
    with pytest.raises(SignatureRejected, match="more than once"):
        base_of({}, '"@query-param";name="a"', "/p?a=1&a=2")


def test_rfc_9421_section_2_1_field_parameters():
    # two lines of one field: combined in order (2.1), or each as a byte sequence (bs, 2.1.3)
    request = Message(
        "POST",
        "https",
        "/",
        "",
        Fields(
            [
                (b"example-header", b"value, with, lots"),
                (b"example-header", b"of, commas"),
                (b"signature-input", b'sig1=("example-header" "example-header";bs)'),
            ]
        ),
    )
    (signature_input,) = signature_inputs(request.fields)
    assert signature_base(request, signature_input).decode().split("\n")[:-1] == [
        '"example-header": value, with, lots, of, commas',
        '"example-header";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:',
    ]
    # a dictionary member (key) and the strict serialisation (sf) of a known dictionary field
    digest = "sha-256=:AAAA:,   sha-512=:BBBB:;x=1"
    assert base_of({"Content-Digest": digest}, '"content-digest";key="sha-512" "content-digest";sf') == [
        '"content-digest";key="sha-512": :BBBB:;x=1',
        '"content-digest";sf: sha-256=:AAAA:, sha-512=:BBBB:;x=1',
    ]


@pytest.mark.parametrize(
    ("components", "says"),
    [
        ('"content-type";req', "req names the request of a response"),
        ('"content-type";tr', "tr names a trailer"),
        ('"content-type";bs;sf', "bs cannot be combined"),
        ('"content-type";frob', "unknown parameter frob"),
        ('"Content-Type"', "lower-case field name"),
        ('"content-type" "content-type"', "covered twice"),
        ('"@status"', "response's component"),
        ('"@fragment"', "not an RFC 9421 derived component"),
        ('"@path";name="x"', "takes no parameter name"),
        ('"content-type";sf', "structured type"),
        ('"content-digest";key="sha-256"', "does not carry"),
        ('"@authority"', "no Host"),
    ],
)
def test_components_outside_the_rfc_are_refused(components, says):
    with pytest.raises(SignatureRejected, match=says):
        base_of(JSON, components)


def test_a_quoted_parameter_is_never_a_component():
    """The regex this module used took the quoted key "x" for a component of its own."""
    digest = content_digest(BODY)
    headers = {**JSON, "Content-Digest": digest}
    assert base_of(headers, '"content-digest";key="sha-256"') == [f'"content-digest";key="sha-256": {digest[8:]}']


# --- what the gateway requires of a signing partner -------------------------------------------------


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda h: {**h, "signature": "sig1=:" + base64.b64encode(b"x" * 32).decode() + ":"}, "does not match"),
        (lambda h: {k: v for k, v in h.items() if k != "signature"}, "are required"),
        (lambda h: {**h, "content-digest": content_digest(b"other")}, "does not match"),
        (lambda h: {**h, "signature-input": h["signature-input"].replace('"hmac-sha256"', '"rsa-pss-sha512"')}, "alg"),
        (lambda h: {**h, "signature-input": h["signature-input"].replace(' "content-digest"', "")}, "must cover"),
        (lambda h: {**h, "signature-input": 'sig1=("@method" garbage'}, "structured field"),
        (
            lambda h: {**h, "signature-input": h["signature-input"].replace('nonce="nonce-0001"', "nonce=n1234567")},
            "quoted",
        ),
        (lambda h: {**h, "signature-input": h["signature-input"].replace("created=", "created=?1;x=")}, "integer"),
        (lambda h: {**h, "signature": "sig2=:AAAA:"}, "no member sig1"),
        (lambda h: {**h, "signature": 'sig1="AAAA"'}, "byte sequence"),
        (lambda h: {**h, "signature-input": "sig1=1"}, "inner list"),
    ],
)
def test_tampering_is_rejected(change, says):
    with pytest.raises(SignatureRejected, match=says):
        _verify(change(signed()))


def test_the_signature_binds_method_path_query_and_body():
    headers = signed()
    with pytest.raises(SignatureRejected):
        _verify(headers, target="/api/v1/transactions/bulk")
    with pytest.raises(SignatureRejected):
        _verify(headers, method="PUT")
    with pytest.raises(SignatureRejected, match="Content-Digest does not match"):
        _verify(headers, body=BODY + b" ")
    with pytest.raises(SignatureRejected, match="must cover @query"):
        _verify(headers, target=URL + "?window=t0")
    with_query = signed(URL + "?window=t0")
    _verify(with_query, target=URL + "?window=t0")
    with pytest.raises(SignatureRejected, match="does not match"):
        _verify(with_query, target=URL + "?window=t1")


def test_path_is_the_raw_target_not_the_decoded_path():
    headers = signed("/api/v1/transactions/txn%5F1")
    _verify(headers, target="/api/v1/transactions/txn%5F1")
    with pytest.raises(SignatureRejected, match="does not match"):
        _verify(headers, target="/api/v1/transactions/txn_1")  # what ASGI's decoded `path` holds


@pytest.mark.parametrize("field", ["content-type", "idempotency-key"])
def test_content_type_and_idempotency_key_must_be_covered_when_present(field):
    covered = signed(fields={"content-type": "application/json", "idempotency-key": "key-1"})
    _verify(covered)
    bare = signed(fields={})  # covers @method, @path and content-digest only
    with pytest.raises(SignatureRejected, match=f"must cover {field}"):
        _verify({**bare, field: covered[field]})


def test_repeated_lines_are_combined_as_rfc_9110_says():
    fields = Fields([(b"idempotency-key", b"a "), (b"x", b"1"), (b"idempotency-key", b" b")])
    assert fields.get("idempotency-key") == "a, b"
    assert fields.lines("idempotency-key") == ["a", "b"]
    assert fields.get("x") == "1" and fields.get("absent") is None and fields.lines("absent") == []
    # a signature over the combined value verifies; one over either line alone does not
    combined = signed(fields={**JSON, "idempotency-key": "a, b"})
    lines = [(k.encode(), v.encode()) for k, v in combined.items() if k != "idempotency-key"]
    request = Message("POST", "http", URL, "", Fields([*lines, (b"idempotency-key", b"a"), (b"idempotency-key", b"b")]))
    verify(SECRET, request, BODY, NOW, "acme")
    last_only = signed(fields={**JSON, "idempotency-key": "b"})
    lines = [(k.encode(), v.encode()) for k, v in last_only.items() if k != "idempotency-key"]
    request = Message("POST", "http", URL, "", Fields([*lines, (b"idempotency-key", b"a"), (b"idempotency-key", b"b")]))
    with pytest.raises(SignatureRejected, match="does not match"):
        verify(SECRET, request, BODY, NOW, "acme")


def test_message_of_an_asgi_scope_keeps_the_raw_target():
    scope = {
        "method": "GET",
        "scheme": "https",
        "path": "/api/v1/transactions/txn_1",
        "raw_path": b"/api/v1/transactions/txn%5F1",
        "query_string": b"a=%20",
        "headers": [(b"host", b"x")],
    }
    request = message_of(scope)
    assert (request.path, request.query, request.target) == (
        "/api/v1/transactions/txn%5F1",
        "a=%20",
        "/api/v1/transactions/txn%5F1?a=%20",
    )
    assert message_of({**scope, "raw_path": None, "query_string": b""}).target == "/api/v1/transactions/txn_1"


@pytest.mark.parametrize(
    ("created", "accepted"), [(NOW - 300, True), (NOW - 301, False), (NOW + 300, True), (NOW + 301, False)]
)
def test_created_within_300_seconds_either_way(created, accepted):
    headers = signed(created=created)
    if accepted:
        _verify(headers)
    else:
        with pytest.raises(SignatureRejected, match="expired"):
            _verify(headers)


def test_a_short_nonce_is_refused():
    with pytest.raises(SignatureRejected, match="nonce"):
        _verify(sign(SECRET, "POST", URL, BODY, NOW, "abc", JSON))


# --- hostile input --------------------------------------------------------------------------------


def test_the_backtracking_header_is_refused_in_microseconds():
    """`sig1=()` then `;a="` 60 times and a space: 30 repetitions held the old regex for 0.33 s."""
    headers = {**signed(), "signature-input": "sig1=()" + ';a="' * 60 + " "}
    started = time.perf_counter()
    with pytest.raises(SignatureRejected):
        _verify(headers)
    assert time.perf_counter() - started < 0.005


@pytest.mark.parametrize("field", ["signature-input", "signature", "content-digest"])
def test_every_parsed_header_has_a_size_bound(field):
    headers = signed()
    headers[field] = headers[field] + "," + "a=1," * MAX_SIGNATURE_INPUT
    with pytest.raises(SignatureRejected, match="longer than"):
        _verify(headers)


def test_hmac_of_the_base_is_what_a_partner_computes_by_hand():
    """The recipe of docs/api-and-partners.md: the base as text, then HMAC-SHA256 of it with the secret."""
    headers = signed(fields={})
    base = "\n".join(
        [
            '"@method": POST',
            f'"@path": {URL}',
            f'"content-digest": {content_digest(BODY)}',
            f'"@signature-params": {headers["signature-input"][5:]}',
        ]
    )
    mac = base64.b64encode(hmac.new(SECRET, base.encode(), hashlib.sha256).digest()).decode()
    assert headers["signature"] == f"sig1=:{mac}:"
