"""HTTP Message Signatures (RFC 9421) with HMAC-SHA256, over a body bound by Content-Digest (RFC 9530).

A partner configured with a signing secret sends, besides its bearer key:

    Content-Digest: sha-256=:<base64 of SHA-256(body)>:
    Signature-Input: sig1=("@method" "@path" "content-digest");created=1764400000;nonce="b3f1…";alg="hmac-sha256"
    Signature: sig1=:<base64 of HMAC-SHA256(secret, signature base)>:

The signature base is one line per covered component, `"<name>": <value>`, then
`"@signature-params": <the Signature-Input member's value as sent>`, joined by newlines. `created` must
be within WINDOW_SECONDS of the gateway's clock (either way: clocks drift) and the nonce must not have
been seen in that window (Redis remembers it: gateway.idempotency's admission), so a captured request
cannot be replayed. A request with a body must cover `content-digest`; every request covers `@method`
and `@path`.
"""

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from typing import NamedTuple

WINDOW_SECONDS = 300
ALGORITHM = "hmac-sha256"
_MEMBER = re.compile(r'\s*([a-z*][a-z0-9_.*-]*)=(\(([^()]*)\)((?:;[a-z*][a-z0-9_.*-]*=(?:"[^"\\]*"|[^;,\s]+))*))\s*')
_PARAM = re.compile(r';([a-z*][a-z0-9_.*-]*)=("[^"\\]*"|[^;,\s]+)')
_COMPONENT = re.compile(r'"([^"]+)"')
_SIGNATURE = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)=:([A-Za-z0-9+/=]*):\s*")
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
ACCEPT_SIGNATURE = f'sig1=("@method" "@path" "content-digest");created;nonce;alg="{ALGORITHM}"'


class SignatureRejected(Exception):
    """The request's signature does not authenticate it; the message says why, to the caller."""


class Signed(NamedTuple):
    """A verified signature: its nonce, and for how long it could still be accepted (milliseconds)."""

    nonce: str
    ttl_ms: int


def content_digest(body: bytes) -> str:
    """The Content-Digest header value a signer sends for `body`."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def _dictionary(value: str, pattern: re.Pattern[str]) -> dict[str, re.Match[str]]:
    members = {}
    for item in value.split(",") if pattern is _SIGNATURE else _split_members(value):
        match = pattern.fullmatch(item)
        if match is None:
            raise SignatureRejected("Signature-Input or Signature is not a valid structured field dictionary")
        members[match.group(1)] = match
    return members


def _split_members(value: str) -> list[str]:
    """Split a dictionary at the commas outside quotes and parentheses."""
    members, depth, quoted, start = [], 0, False, 0
    for index, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            members.append(value[start:index])
            start = index + 1
    members.append(value[start:])
    return members


def check_content_digest(header: str | None, body: bytes) -> None:
    """Content-Digest must name the body: every sha-256 / sha-512 member it carries must match."""
    if header is None:
        raise SignatureRejected("Content-Digest is required on a signed request with a body")
    checked = False
    for member in header.split(","):
        name, sep, value = member.strip().partition("=")
        algorithm = _DIGESTS.get(name.strip().lower())
        if algorithm is None or not sep:
            continue
        try:
            claimed = base64.b64decode(value.strip().strip(":"), validate=True)
        except binascii.Error:
            raise SignatureRejected("Content-Digest is not base64 between colons") from None
        if not hmac.compare_digest(claimed, algorithm(body).digest()):
            raise SignatureRejected("Content-Digest does not match the body")
        checked = True
    if not checked:
        raise SignatureRejected("Content-Digest carries neither sha-256 nor sha-512")


def verify(
    secret: bytes,
    method: str,
    path: str,
    header: Callable[[str], str | None],
    body: bytes,
    now: float,
    key_id: str,
) -> Signed:
    """Check the request's RFC 9421 signature with `secret`; SignatureRejected says what is wrong."""
    signature_input, signature = header("signature-input"), header("signature")
    if not signature_input or not signature:
        raise SignatureRejected("this partner signs its requests: Signature-Input and Signature are required")
    inputs = _dictionary(signature_input, _MEMBER)
    signatures = _dictionary(signature, _SIGNATURE)
    label = next(iter(inputs))
    if label not in signatures:
        raise SignatureRejected(f"Signature has no member {label} to match Signature-Input")
    params = {name: value.strip('"') for name, value in _PARAM.findall(inputs[label].group(4))}
    components = _COMPONENT.findall(inputs[label].group(3))
    required = ["@method", "@path"] + (["content-digest"] if body else [])
    missing = [name for name in required if name not in components]
    if missing:
        raise SignatureRejected(f"the signature must cover {', '.join(missing)}")
    if params.get("alg", ALGORITHM) != ALGORITHM:
        raise SignatureRejected(f"alg must be {ALGORITHM}")
    if params.get("keyid", key_id) != key_id:
        raise SignatureRejected("keyid does not name this partner")
    nonce = params.get("nonce", "")
    if not 8 <= len(nonce) <= 128:
        raise SignatureRejected("the signature needs a nonce of 8 to 128 characters")
    try:
        created = int(params["created"])
        expires = int(params["expires"]) if "expires" in params else None
    except (KeyError, ValueError):
        raise SignatureRejected("the signature needs created (and expires, if any) as Unix seconds") from None
    if abs(now - created) > WINDOW_SECONDS:
        raise SignatureRejected(f"the signature was created more than {WINDOW_SECONDS} s from now (expired)")
    if expires is not None and now > expires:
        raise SignatureRejected("the signature has expired")
    lines = []
    for name in components:
        if name == "@method":
            value = method
        elif name == "@path":
            value = path
        elif name.startswith("@"):
            raise SignatureRejected(f"component {name} is not supported")
        else:
            found = header(name)
            if found is None:
                raise SignatureRejected(f"the signature covers {name}, which the request does not carry")
            value = found.strip()
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {inputs[label].group(2)}')
    expected = hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()
    try:
        presented = base64.b64decode(signatures[label].group(2), validate=True)
    except binascii.Error:
        raise SignatureRejected("Signature is not base64 between colons") from None
    if not hmac.compare_digest(expected, presented):
        raise SignatureRejected("the signature does not match the request")
    if body:
        check_content_digest(header("content-digest"), body)
    return Signed(nonce, int((created + WINDOW_SECONDS - now) * 1000) + 1000)


def sign(secret: bytes, method: str, path: str, body: bytes, created: int, nonce: str) -> dict[str, str]:
    """The headers a partner sends to sign a request (for the tests, the benchmarks and the README)."""
    components = '("@method" "@path" "content-digest")' if body else '("@method" "@path")'
    params = f'{components};created={created};nonce="{nonce}";alg="{ALGORITHM}"'
    headers = {"Signature-Input": f"sig1={params}"}
    lines = [f'"@method": {method}', f'"@path": {path}']
    if body:
        headers["Content-Digest"] = content_digest(body)
        lines.append(f'"content-digest": {headers["Content-Digest"]}')
    lines.append(f'"@signature-params": {params}')
    mac = hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()
    headers["Signature"] = "sig1=:" + base64.b64encode(mac).decode() + ":"
    return headers
