"""RFC 9421 through the real gateway (Redis, Kafka, PostgreSQL): what a signature covers of the target
and of repeated header lines is what the gateway acts on, on both ways in (the fast lane and Litestar's
routes). Each case failed on the regex-based verifier this replaced."""

import json
import time
import uuid

import msgspec
import pytest
from litestar.testing import AsyncTestClient, TestClient

from gateway.api.app import create_app
from gateway.partners.signatures import sign
from tests.conftest import transaction
from tests.integration.test_intake import assert_problem
from tests.integration.test_partners import assert_unauthorized
from tests.partners import SECRET, write_registry

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


@pytest.fixture
def registry(tmp_path):
    return write_registry(tmp_path)


@pytest.fixture
async def client(stack, registry):
    settings = msgspec.structs.replace(stack, partners_file=str(registry.path), partners_reload_seconds=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def signed(method: str, target: str, body: bytes = b"", fields: dict[str, str] | None = None) -> dict[str, str]:
    return sign(SECRET.encode(), method, target, body, int(time.time()), uuid.uuid4().hex, fields)


async def test_the_status_api_query_is_signed(client, registry):
    """`@query` from the raw target: the filters of GET /api/v1/batches are covered, and a signature
    over one filter does not let another through."""
    bearer = registry.bearer("signed")
    target = "/api/v1/batches?window=t0&limit=5"
    answer = await client.get(target, headers={**bearer, **signed("GET", target)})
    assert answer.status_code == 200, answer.text
    moved = await client.get("/api/v1/batches?window=t1&limit=5", headers={**bearer, **signed("GET", target)})
    assert_unauthorized(moved, "does not match")
    unsigned_query = await client.get(target, headers={**bearer, **signed("GET", "/api/v1/batches")})
    assert_unauthorized(unsigned_query, "must cover @query")


async def test_the_path_is_covered_as_sent_not_decoded(client, registry, unique):
    """`@path` is the raw target's path: a signature over the decoded path is not the one sent."""
    bearer = registry.bearer("signed")
    raw = f"/api/v1/transactions/txn%5F{unique}"
    as_sent = await client.get(raw, headers={**bearer, **signed("GET", raw)})
    assert_problem(as_sent, 404, "not-found")  # authenticated; the transaction does not exist
    decoded = await client.get(raw, headers={**bearer, **signed("GET", f"/api/v1/transactions/txn_{unique}")})
    assert_unauthorized(decoded, "does not match")


async def test_a_quoted_parameter_is_not_a_component(client, registry, log, unique):
    """`"content-digest";key="sha-256"` covers the sha-256 member: it is not a component named sha-256."""
    body = json.dumps(transaction(unique)).encode()
    headers = {**registry.bearer("signed"), **signed("POST", URL, body, JSON)}
    headers["signature-input"] = headers["signature-input"].replace('"content-digest"', '"content-digest";key="x"')
    assert_unauthorized(
        await client.post(URL, content=body, headers=headers), "member x, which the request does not carry"
    )
    assert log.records(f"txn_{unique}") == []


def test_repeated_header_lines_are_combined_on_both_ways_in(stack, registry, log, unique):
    """Two Content-Type lines are one field, `text/plain, application/json` (RFC 9110 section 5.3): not
    JSON, whichever way the request takes. (The fast lane kept the last line, Litestar the first.)"""
    settings = msgspec.structs.replace(stack, partners_file=str(registry.path), partners_reload_seconds=0)
    headers = [("content-type", "text/plain"), ("content-type", "application/json")]
    headers += list(registry.bearer("acme").items())
    with TestClient(create_app(settings)) as client:  # sync: its transport streams a generator body
        for way in ("fast lane", "route"):
            body = json.dumps(transaction(f"{unique}{way[0]}")).encode()
            # a body of known length takes the fast lane; a chunked one (a generator) Litestar's route
            content = body if way == "fast lane" else (chunk for chunk in [body])
            answer = client.post(URL, content=content, headers=headers)
            assert_problem(answer, 415, "unsupported-media-type")
            assert log.records(f"txn_{unique}{way[0]}") == []


async def test_a_signature_covers_every_line_of_a_repeated_field(client, registry, log, unique):
    """A signature over the combined Idempotency-Key verifies; one over its last line alone does not."""
    body = json.dumps(transaction(unique, idempotency_key=None)).encode()
    bearer = list(registry.bearer("signed").items())
    lines = [("idempotency-key", f"a-{unique}"), ("idempotency-key", f"b-{unique}")]
    for value, status in ((f"a-{unique}, b-{unique}", 202), (f"b-{unique}", 401)):
        headers = signed("POST", URL, body, {**JSON, "idempotency-key": value})
        del headers["idempotency-key"]
        answer = await client.post(URL, content=body, headers=[*headers.items(), *bearer, *lines])
        assert answer.status_code == status, answer.text
    (record,) = log.records(f"txn_{unique}")
    assert json.loads(record.value())["idempotency_key"] == f"a-{unique}, b-{unique}"


async def test_content_type_and_idempotency_key_must_be_covered(client, registry, log, unique):
    body = json.dumps(transaction(unique, idempotency_key=None)).encode()
    bearer = registry.bearer("signed")
    bare = signed("POST", URL, body, {})  # covers @method, @path and content-digest
    assert_unauthorized(
        await client.post(URL, content=body, headers={**bearer, **bare, **JSON}), "must cover content-type"
    )
    key = {"idempotency-key": f"idem_{unique}"}
    without_key = signed("POST", URL, body, JSON)
    answer = await client.post(URL, content=body, headers={**bearer, **without_key, **key})
    assert_unauthorized(answer, "must cover idempotency-key")
    answer = await client.post(URL, content=body, headers={**bearer, **signed("POST", URL, body, {**JSON, **key})})
    assert answer.status_code == 202, answer.text
    assert len(log.records(f"txn_{unique}")) == 1
