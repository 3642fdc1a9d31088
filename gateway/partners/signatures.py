"""HTTP Message Signatures (RFC 9421) with HMAC-SHA256, over a body bound by Content-Digest (RFC 9530).

A partner configured with a signing secret sends, besides its bearer key:

    Content-Type: application/json
    Content-Digest: sha-256=:<base64 of SHA-256(body)>:
    Signature-Input: sig1=("@method" "@path" "content-type" "content-digest");created=1764400000;
                     nonce="b3f1…";alg="hmac-sha256"   (one line)
    Signature: sig1=:<base64 of HMAC-SHA256(secret, signature base)>:

Two layers:

- **RFC 9421 as written** (`signature_base`, `verify_hmac`): Signature-Input and Signature are parsed
  as RFC 8941 dictionaries by a maintained parser (http-sfv), after a size bound, so no header costs
  more than a fraction of a millisecond to refuse. Components are the RFC's: the derived `@method`,
  `@target-uri`, `@authority`, `@scheme`, `@request-target`, `@path`, `@query` and `@query-param`
  (`@path` and `@query` from the raw target, as received), and header fields with the parameters
  `sf`, `key` and `bs`; a field on several lines is combined as RFC 9110 says (gateway.partners.message).
  The signature base ends with `"@signature-params"` and the member's canonical serialisation. The
  RFC's own HMAC example (Appendix B.2.5) verifies (tests/unit/test_signatures.py).
- **What the gateway requires** (`verify`): the first member of Signature-Input is checked; it covers
  `@method`, the path (`@path`, `@request-target` or `@target-uri`), the query when the target has
  one (`@query`, `@request-target` or `@target-uri`), and each of `content-type`, `content-digest` and
  `idempotency-key` that the request carries (`content-digest` is required with a body, and it must
  name the body); `created` is within WINDOW_SECONDS of the gateway's clock either way (clocks drift),
  and the nonce (8-128 characters) has not been seen in that window (Redis remembers it:
  gateway.partners.admission), so a captured request cannot be replayed.
"""

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qsl, unquote

from http_sfv import Dictionary, InnerList, Item
from http_sfv.types import Token

from gateway.partners.message import Fields, Message

WINDOW_SECONDS = 300
ALGORITHM = "hmac-sha256"
# Size bounds, in bytes, checked before anything is parsed: a header over its bound is refused at once.
# One hmac-sha256 signature is 50 bytes of Signature and ~150 of Signature-Input; these leave room
# for several signatures (a proxy may add its own) and many components.
MAX_SIGNATURE_INPUT = 2048
MAX_SIGNATURE = 1024
MAX_CONTENT_DIGEST = 1024
MAX_STRUCTURED_FIELD = 2048  # a covered field parsed as a structured field (`sf`, `key`)
_BOUNDS = (
    ("signature-input", MAX_SIGNATURE_INPUT),
    ("signature", MAX_SIGNATURE),
    ("content-digest", MAX_CONTENT_DIGEST),
)
# the fields a signing partner's signature must cover whenever the request carries them
COVERED_WHEN_PRESENT = ("content-type", "content-digest", "idempotency-key")
PATH_COMPONENTS = frozenset({"@path", "@request-target", "@target-uri"})
QUERY_COMPONENTS = frozenset({"@query", "@request-target", "@target-uri"})
ACCEPT_SIGNATURE = f'sig1=("@method" "@path" "content-type" "content-digest");created;nonce;alg="{ALGORITHM}"'
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_FIELD_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
# the structured type of the fields `sf` may ask for (RFC 9530's digests; the signature fields)
_DICTIONARY_FIELDS = frozenset({"content-digest", "repr-digest", "want-content-digest", "want-repr-digest"})
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-._")


class SignatureRejected(Exception):
    """The request's signature does not authenticate it; the message says why, to the caller."""


class Signed(NamedTuple):
    """A verified signature: its nonce, and for how long it could still be accepted (milliseconds)."""

    nonce: str
    ttl_ms: int


class SignatureInput(NamedTuple):
    """One member of Signature-Input: its label, covered components and parameters."""

    label: str
    components: InnerList
    params: dict[str, Any]


def content_digest(body: bytes) -> str:
    """The Content-Digest header value a signer sends for `body`."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def _bounded(fields: Fields, name: str, bound: int) -> None:
    if fields.size(name) > bound:
        raise SignatureRejected(f"{name} is longer than {bound} bytes")


def _dictionary(fields: Fields, name: str, bound: int) -> Dictionary:
    """Field `name` parsed as an RFC 8941 dictionary, after its size bound."""
    _bounded(fields, name, bound)
    value = fields.get(name) or ""
    dictionary = Dictionary()
    try:
        dictionary.parse(value.encode("latin-1"))
    except ValueError:
        raise SignatureRejected(f"{name} is not a valid structured field dictionary") from None
    return dictionary


def signature_inputs(fields: Fields) -> list[SignatureInput]:
    """Every member of Signature-Input, in order; SignatureRejected if one is not an inner list of strings."""
    found = []
    for label, member in _dictionary(fields, "signature-input", MAX_SIGNATURE_INPUT).items():
        if not isinstance(member, InnerList) or not all(type(item.value) is str for item in member):
            raise SignatureRejected(f"Signature-Input {label} must be an inner list of component names (strings)")
        found.append(SignatureInput(label, member, dict(member.params)))
    return found


def signature_of(fields: Fields, label: str) -> bytes:
    """The signature Signature carries under `label`."""
    member = _dictionary(fields, "signature", MAX_SIGNATURE).get(label)
    if member is None:
        raise SignatureRejected(f"Signature has no member {label} to match Signature-Input")
    if not isinstance(member, Item) or not isinstance(member.value, bytes):
        raise SignatureRejected(f"Signature {label} must be a byte sequence (:base64:)")
    return member.value


def _authority(message: Message) -> str:
    """@authority: the Host, lower-cased, without the scheme's default port (RFC 9421 section 2.2.3)."""
    host = message.fields.get("host")
    if not host:
        raise SignatureRejected("the signature covers @authority, but the request carries no Host")
    host = host.lower()
    default = ":443" if message.scheme == "https" else ":80"
    return host.removesuffix(default)


def _form_encode(value: str) -> str:
    """Percent-encode after UTF-8 encoding with the application/x-www-form-urlencoded set (RFC 9421 2.2.8)."""
    return "".join(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in value.encode())


def _query_params(query: str) -> dict[str, list[str]]:
    """The query's parameters by decoded name, their values decoded (application/x-www-form-urlencoded)."""
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(key, []).append(value)
    return params


def _query_param(message: Message, name: Any, parsed: dict[str, Any]) -> str:
    """@query-param;name=…: the one parameter of that name, its value re-encoded (RFC 9421 section 2.2.8).
    The name is given encoded; a parameter is its when the parameter's decoded name encodes to it, which
    is asked once of the name rather than of every parameter of the query."""
    if type(name) is not str:
        raise SignatureRejected("@query-param needs its name parameter as a string")
    if "?" not in parsed:  # the query is parsed once per signature, however many parameters it covers
        parsed["?"] = _query_params(message.query)
    decoded = unquote(name)
    values = parsed["?"].get(decoded, []) if _form_encode(decoded) == name else []
    if len(values) != 1:
        issue = "is not in the query" if not values else "occurs more than once (cover @query instead)"
        raise SignatureRejected(f"the signature covers @query-param {name}, which {issue}")
    return _form_encode(values[0])


def _derived(message: Message, name: str, params: Mapping[str, Any], parsed: dict[str, Any]) -> str:
    """The value of a derived component (RFC 9421 section 2.2)."""
    allowed = {"name"} if name == "@query-param" else set()
    if set(params) - allowed:
        raise SignatureRejected(f"component {name} takes no parameter {sorted(set(params) - allowed)[0]}")
    if name == "@method":
        return message.method
    if name == "@path":
        return message.path
    if name == "@query":
        return "?" + message.query
    if name == "@request-target":
        return message.target
    if name == "@scheme":
        return message.scheme.lower()
    if name == "@authority":
        return _authority(message)
    if name == "@target-uri":
        return f"{message.scheme.lower()}://{_authority(message)}{message.target}"
    if name == "@query-param":
        return _query_param(message, params.get("name"), parsed)
    if name == "@status":
        raise SignatureRejected("@status is a response's component, not a request's")
    raise SignatureRejected(f"component {name} is not an RFC 9421 derived component")


def _parsed(fields: Fields, name: str, parsed: dict[str, Any]) -> Dictionary:
    """Field `name` as a dictionary, parsed once per signature however many components name it."""
    if name not in parsed:
        parsed[name] = _dictionary(fields, name, MAX_STRUCTURED_FIELD)
    return parsed[name]


def _field(fields: Fields, name: str, params: Mapping[str, Any], parsed: dict[str, Any]) -> str:
    """The value of a header field component with its parameters (RFC 9421 section 2.1)."""
    if not _FIELD_NAME.fullmatch(name):
        raise SignatureRejected(f"component {name!r} is not a lower-case field name")
    unknown = set(params) - {"sf", "key", "bs", "req", "tr"}
    if unknown:
        raise SignatureRejected(f"component {name} has an unknown parameter {sorted(unknown)[0]}")
    if params.get("req") or params.get("tr"):
        which = "req names the request of a response" if params.get("req") else "tr names a trailer"
        raise SignatureRejected(f"component {name}: {which}; a request to the gateway has neither")
    if params.get("bs") and ("sf" in params or "key" in params):
        raise SignatureRejected(f"component {name}: bs cannot be combined with sf or key")
    lines = fields.lines(name)
    if not lines:
        raise SignatureRejected(f"the signature covers {name}, which the request does not carry")
    if params.get("bs"):
        return ", ".join(":" + base64.b64encode(line.encode("latin-1")).decode() + ":" for line in lines)
    if "key" in params:
        key = params["key"]
        if type(key) is not str:
            raise SignatureRejected(f"component {name}: key must be a string")
        member = _parsed(fields, name, parsed).get(key)
        if member is None:
            raise SignatureRejected(f"the signature covers {name} member {key}, which the request does not carry")
        return str(member)
    if params.get("sf"):
        if name not in _DICTIONARY_FIELDS:
            raise SignatureRejected(f"component {name};sf: the gateway does not know {name}'s structured type")
        return str(_parsed(fields, name, parsed))
    return ", ".join(lines)


def _identifier(component: Item) -> str:
    """A component identifier serialised as RFC 8941 says (a string, then its parameters). The common
    case, a name without parameters, is written directly: http-sfv's serialiser re-checks every
    character of a string it parsed itself, which was most of a verification's cost."""
    name = cast(str, component.value)  # signature_inputs checked every component is a string
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted + str(component.params) if component.params else quoted


def signature_base(message: Message, signature_input: SignatureInput) -> bytes:
    """The signature base of RFC 9421 section 2.5: one line per covered component, then @signature-params."""
    lines, identifiers, seen = [], [], set()
    parsed: dict[str, Any] = {}  # what the components parse (a field as a dictionary, the query), once
    for component in signature_input.components:
        identifier = _identifier(component)
        if identifier in seen:
            raise SignatureRejected(f"component {identifier} is covered twice")
        seen.add(identifier)
        identifiers.append(identifier)
        name, params = cast(str, component.value), component.params
        if name.startswith("@"):
            value = _derived(message, name, params, parsed)
        else:
            value = _field(message.fields, name, params, parsed)
        if "\n" in value or "\r" in value:
            raise SignatureRejected(f"component {identifier} holds a line break")
        lines.append(f"{identifier}: {value}")
    params = str(signature_input.components.params)
    lines.append(f'"@signature-params": ({" ".join(identifiers)}){params}')
    return "\n".join(lines).encode("latin-1")


def verify_hmac(secret: bytes, message: Message, signature_input: SignatureInput, signature: bytes) -> None:
    """RFC 9421 verification with hmac-sha256 of one signature; SignatureRejected when it does not match."""
    expected = hmac.new(secret, signature_base(message, signature_input), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureRejected("the signature does not match the request")


def check_content_digest(fields: Fields, body: bytes) -> None:
    """Content-Digest must name the body: every sha-256 / sha-512 member it carries must match."""
    if fields.get("content-digest") is None:
        raise SignatureRejected("Content-Digest is required on a signed request with a body")
    checked = False
    for algorithm, member in _dictionary(fields, "content-digest", MAX_CONTENT_DIGEST).items():
        digest = _DIGESTS.get(algorithm)
        if digest is None:
            continue
        if not isinstance(member, Item) or not isinstance(member.value, bytes):
            raise SignatureRejected("Content-Digest is not base64 between colons")
        if not hmac.compare_digest(member.value, digest(body).digest()):
            raise SignatureRejected("Content-Digest does not match the body")
        checked = True
    if not checked:
        raise SignatureRejected("Content-Digest carries neither sha-256 nor sha-512")


def _required(message: Message, body: bytes, covered: set[str]) -> list[str]:
    """What the gateway requires a signature to cover that this one does not."""
    missing = [] if "@method" in covered else ["@method"]
    if not covered & PATH_COMPONENTS:
        missing.append("@path")
    if message.query and not covered & QUERY_COMPONENTS:
        missing.append("@query")
    for name in COVERED_WHEN_PRESENT:
        present = message.fields.size(name) > 0 or (name == "content-digest" and body)
        if present and name not in covered:
            missing.append(name)
    return missing


def _integer(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is not None and type(value) is not int:
        raise SignatureRejected(f"the signature's {name} must be an integer of Unix seconds")
    return value


def _string(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is not None and (type(value) is not str or isinstance(value, Token)):
        raise SignatureRejected(f'the signature\'s {name} must be a quoted string ({name}="…")')
    return value


def verify(secret: bytes, message: Message, body: bytes, now: float, key_id: str) -> Signed:
    """Check the request's RFC 9421 signature with `secret` and the gateway's requirements;
    SignatureRejected says what is wrong."""
    fields = message.fields
    if fields.get("signature-input") is None or fields.get("signature") is None:
        raise SignatureRejected("this partner signs its requests: Signature-Input and Signature are required")
    for name, bound in _BOUNDS:  # before any work: nothing longer is read
        _bounded(fields, name, bound)
    inputs = signature_inputs(fields)
    if not inputs:
        raise SignatureRejected("Signature-Input has no member")
    signature_input = inputs[0]
    signature = signature_of(fields, signature_input.label)
    missing = _required(message, body, {item.value for item in signature_input.components})
    if missing:
        raise SignatureRejected(f"the signature must cover {', '.join(missing)}")
    params = signature_input.params
    if _string(params, "alg") not in (None, ALGORITHM):
        raise SignatureRejected(f"alg must be {ALGORITHM}")
    if _string(params, "keyid") not in (None, key_id):
        raise SignatureRejected("keyid does not name this partner")
    nonce = _string(params, "nonce") or ""
    if not 8 <= len(nonce) <= 128:
        raise SignatureRejected("the signature needs a nonce of 8 to 128 characters")
    created, expires = _integer(params, "created"), _integer(params, "expires")
    if created is None:
        raise SignatureRejected("the signature needs created as Unix seconds")
    if abs(now - created) > WINDOW_SECONDS:
        raise SignatureRejected(f"the signature was created more than {WINDOW_SECONDS} s from now (expired)")
    if expires is not None and now > expires:
        raise SignatureRejected("the signature has expired")
    verify_hmac(secret, message, signature_input, signature)
    if body or fields.get("content-digest") is not None:
        check_content_digest(fields, body)
    return Signed(nonce, int((created + WINDOW_SECONDS - now) * 1000) + 1000)


def sign(
    secret: bytes,
    method: str,
    target: str,
    body: bytes,
    created: int,
    nonce: str,
    fields: dict[str, str] | None = None,
) -> dict[str, str]:
    """The headers a partner sends to sign a request to `target` (path and query, as sent): covering
    @method, @path, @query when there is one, every field of `fields` (lower-case names, e.g.
    content-type and idempotency-key, returned among the headers too) and content-digest with a body.
    For the tests, the benchmarks and the docs (docs/api-and-partners.md)."""
    path, _, query = target.partition("?")
    headers = dict(fields or {})
    if body:
        headers["content-digest"] = content_digest(body)
    names = ["@method", "@path"] + (["@query"] if query else []) + list(headers)
    components = InnerList([Item(name) for name in names])
    components.params.update(created=created, nonce=nonce, alg=ALGORITHM)
    message = Message(method, "http", path, query, Fields([(k.encode(), v.encode()) for k, v in headers.items()]))
    mac = hmac.new(secret, signature_base(message, SignatureInput("sig1", components, {})), hashlib.sha256).digest()
    headers["signature-input"] = f"sig1={components}"
    headers["signature"] = "sig1=:" + base64.b64encode(mac).decode() + ":"
    return headers
