"""RFC 9421 HMAC signatures and RFC 9530 Content-Digest, checked without the network."""

import base64
import hashlib

import pytest

from gateway.partners.signatures import SignatureRejected, content_digest, sign, verify

SECRET = b"k" * 32
BODY = b'{"transaction_id":"txn_1"}'
NOW = 1_764_400_000


def _verify(headers: dict[str, str], body: bytes = BODY, method: str = "POST", path: str = "/api/v1/transactions/"):
    lowered = {name.lower(): value for name, value in headers.items()}
    return verify(SECRET, method, path, lowered.get, body, NOW, "acme")


def test_what_sign_makes_verify_accepts_and_the_nonce_outlives_the_window():
    signed = _verify(sign(SECRET, "POST", "/api/v1/transactions/", BODY, NOW - 10, "nonce-0001"))
    assert signed.nonce == "nonce-0001"
    assert signed.ttl_ms == (NOW - 10 + 300 - NOW) * 1000 + 1000


def test_content_digest_is_rfc_9530_sha_256():
    assert content_digest(b"") == "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda h: {**h, "Signature": "sig1=:" + base64.b64encode(b"x" * 32).decode() + ":"}, "does not match"),
        (lambda h: {k: v for k, v in h.items() if k != "Signature"}, "are required"),
        (lambda h: {**h, "Content-Digest": content_digest(b"other")}, "does not match"),
        (lambda h: {**h, "Signature-Input": h["Signature-Input"].replace('"hmac-sha256"', '"rsa-pss-sha512"')}, "alg"),
        (lambda h: {**h, "Signature-Input": h["Signature-Input"].replace(' "content-digest"', "")}, "must cover"),
        (lambda h: {**h, "Signature-Input": "garbage"}, "structured field"),
    ],
)
def test_tampering_is_rejected(change, says):
    headers = sign(SECRET, "POST", "/api/v1/transactions/", BODY, NOW, "nonce-0001")
    with pytest.raises(SignatureRejected, match=says):
        _verify(change(headers))


def test_the_signature_binds_method_path_and_body():
    headers = sign(SECRET, "POST", "/api/v1/transactions/", BODY, NOW, "nonce-0001")
    with pytest.raises(SignatureRejected):
        _verify(headers, path="/api/v1/transactions/bulk")
    with pytest.raises(SignatureRejected):
        _verify(headers, method="PUT")
    with pytest.raises(SignatureRejected, match="Content-Digest does not match"):
        _verify(headers, body=BODY + b" ")


@pytest.mark.parametrize(
    ("created", "accepted"), [(NOW - 300, True), (NOW - 301, False), (NOW + 300, True), (NOW + 301, False)]
)
def test_created_within_300_seconds_either_way(created, accepted):
    headers = sign(SECRET, "POST", "/api/v1/transactions/", BODY, created, "nonce-0001")
    if accepted:
        _verify(headers)
    else:
        with pytest.raises(SignatureRejected, match="expired"):
            _verify(headers)


def test_a_short_nonce_is_refused():
    with pytest.raises(SignatureRejected, match="nonce"):
        _verify(sign(SECRET, "POST", "/api/v1/transactions/", BODY, NOW, "abc"))
