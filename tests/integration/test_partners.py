"""Partners against the real Redis and Kafka: every credential case, namespaces, permissions and the
rate limit, through the same edge as every request (gateway.api.edge)."""

import asyncio
import json
import time
import uuid

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app
from gateway.partners.signatures import sign
from tests.conftest import transaction
from tests.integration.test_intake import assert_problem
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


def assert_unauthorized(response, detail_part: str, error: str | None = "invalid_token") -> None:
    problem = assert_problem(response, 401, "unauthorized")
    assert detail_part in problem["detail"], problem
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="settlement-gateway"')
    if error is None:
        assert challenge == 'Bearer realm="settlement-gateway"'
    else:
        assert f'error="{error}"' in challenge


async def test_no_credential_is_401_with_a_challenge_and_nothing_reaches_kafka(client, log, unique):
    response = await client.post(URL, json=transaction(unique), headers=JSON)
    assert_unauthorized(response, "Authorization: Bearer", error=None)
    assert log.records(f"txn_{unique}") == []


@pytest.mark.parametrize(
    ("authorization", "detail", "error"),
    [
        ("Bearer sk_not-a-key-anyone-was-given", "not valid", "invalid_token"),
        ("Basic YWNtZTpzZWNyZXQ=", "must be Bearer", "invalid_request"),
        ("Bearer ", "must be Bearer", "invalid_request"),
    ],
)
async def test_wrong_key_is_401(client, log, unique, authorization, detail, error):
    response = await client.post(URL, json=transaction(unique), headers={**JSON, "authorization": authorization})
    assert_unauthorized(response, detail, error)
    assert log.records(f"txn_{unique}") == []


async def test_revoked_and_expired_keys_are_401(client, registry, log, unique):
    revoked = await client.post(URL, json=transaction(unique), headers={**JSON, **registry.bearer("acme_revoked")})
    assert_unauthorized(revoked, "revoked")
    expired = await client.post(URL, json=transaction(unique), headers={**JSON, **registry.bearer("acme_expired")})
    assert_unauthorized(expired, "expired")
    assert log.records(f"txn_{unique}") == []


async def test_rotation_old_and_new_key_both_work_for_the_same_partner(client, registry, log, unique):
    for role in ("acme", "acme_old"):
        body = transaction(f"{unique}{role}")
        response = await client.post(URL, json=body, headers={**JSON, **registry.bearer(role)})
        assert response.status_code == 202, response.text
        (record,) = log.records(body["transaction_id"])
        assert json.loads(record.value())["partner"] == registry.ids["acme"]
    # the same transaction sent again with the other key of the same partner is a replay, not a new one
    again = await client.post(URL, json=transaction(f"{unique}acme"), headers={**JSON, **registry.bearer("acme_old")})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"


async def test_two_partners_same_idempotency_key_and_transaction_id_do_not_collide(client, registry, log, unique):
    body = transaction(unique)
    answers = [await client.post(URL, json=body, headers={**JSON, **registry.bearer(r)}) for r in ("acme", "globex")]
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    records = log.records(body["transaction_id"])
    partners = sorted(json.loads(r.value())["partner"] for r in records)
    assert partners == sorted([registry.ids["acme"], registry.ids["globex"]])
    # and each partner's replay is its own
    for role, answer in zip(("acme", "globex"), answers, strict=True):
        replay = await client.post(URL, json=body, headers={**JSON, **registry.bearer(role)})
        assert replay.status_code == 200
        assert replay.json()["metadata"]["offset"] == answer.json()["metadata"]["offset"]


async def test_another_partners_transaction_is_404(client, registry, unique):
    body = transaction(unique)
    assert (await client.post(URL, json=body, headers={**JSON, **registry.bearer("acme")})).status_code == 202
    path = f"/api/v1/transactions/{body['transaction_id']}"
    own = await client.get(path, headers=registry.bearer("acme"))
    assert own.status_code == 200 and own.json()["status"] in ("accepted", "batched"), own.text
    other = await client.get(path, headers=registry.bearer("globex"))
    assert_problem(other, 404, "not-found")
    anonymous = await client.get(path)
    assert_unauthorized(anonymous, "Authorization: Bearer", error=None)
    for batches in ("/api/v1/batches", f"/api/v1/batches/{own.json()['batch']}"):
        assert_unauthorized(await client.get(batches), "Authorization: Bearer", error=None)


async def test_a_window_or_currency_the_partner_may_not_use_is_403(client, registry, log, unique):
    headers = {**JSON, **registry.bearer("narrow")}
    cases = [
        (transaction(f"{unique}w", settlement_window="t0"), "settlement window t0"),
        (transaction(f"{unique}c", destination_currency="EUR"), "currency EUR"),
        (transaction(f"{unique}r", amount=5_000_000), "settlement window rtgs"),  # high value: routed to rtgs
    ]
    for body, detail in cases:
        response = await client.post(URL, json=body, headers=headers)
        problem = assert_problem(response, 403, "forbidden")
        assert detail in problem["detail"], problem
        assert log.records(body["transaction_id"]) == []
    allowed = await client.post(URL, json=transaction(f"{unique}ok"), headers=headers)
    assert allowed.status_code == 202, allowed.text


def _signed_request(body: bytes, created: int | None = None, nonce: str | None = None) -> dict[str, str]:
    created = int(time.time()) if created is None else created
    return sign(SECRET.encode(), "POST", URL, body, created, nonce or uuid.uuid4().hex, JSON)


async def test_signed_request_is_accepted_and_a_replayed_nonce_is_401(client, registry, log, unique):
    body = json.dumps(transaction(unique)).encode()
    headers = {**JSON, **registry.bearer("signed"), **_signed_request(body)}
    accepted = await client.post(URL, content=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    # the captured request, sent again byte for byte, is refused: its nonce was remembered
    replayed = await client.post(URL, content=body, headers=headers)
    assert_unauthorized(replayed, "nonce was already used")
    assert "accept-signature" in replayed.headers
    assert len(log.records(f"txn_{unique}")) == 1


async def test_expired_signature_is_401(client, registry, log, unique):
    body = json.dumps(transaction(unique)).encode()
    stale = _signed_request(body, created=int(time.time()) - 301)
    response = await client.post(URL, content=body, headers={**JSON, **registry.bearer("signed"), **stale})
    assert_unauthorized(response, "expired")
    assert log.records(f"txn_{unique}") == []


async def test_signature_over_a_changed_body_is_401(client, registry, log, unique):
    signed_body = json.dumps(transaction(unique)).encode()
    changed = json.dumps(transaction(unique, amount=9999.99)).encode()
    headers = _signed_request(signed_body)
    # the body changed, its Content-Digest kept: the digest does not match
    response = await client.post(URL, content=changed, headers={**JSON, **registry.bearer("signed"), **headers})
    assert_unauthorized(response, "Content-Digest does not match")
    # the body and its Content-Digest changed: the signature does not match
    forged = {**headers, **{k: v for k, v in _signed_request(changed).items() if k == "content-digest"}}
    response = await client.post(URL, content=changed, headers={**JSON, **registry.bearer("signed"), **forged})
    assert_unauthorized(response, "signature does not match")
    assert log.records(f"txn_{unique}") == []


async def test_partner_that_signs_must_sign(client, registry, log, unique):
    response = await client.post(URL, json=transaction(unique), headers={**JSON, **registry.bearer("signed")})
    assert_unauthorized(response, "Signature-Input and Signature are required")
    assert response.headers["accept-signature"].startswith('sig1=("@method" "@path" "content-type" "content-digest")')
    assert log.records(f"txn_{unique}") == []


async def test_over_the_limit_is_429_with_retry_after_and_other_partners_are_unaffected(client, registry, log, unique):
    slow = {**JSON, **registry.bearer("slow")}
    # the producer connected first (the first delivery of a fresh gateway can take half a second), so
    # the three requests below land well within one emission interval (2 s) of each other
    warm = await client.post(URL, json=transaction(f"{unique}w"), headers={**JSON, **registry.bearer("globex")})
    assert warm.status_code == 202, warm.text
    first = await client.post(URL, json=transaction(f"{unique}1"), headers=slow)
    second = await client.post(URL, json=transaction(f"{unique}2"), headers=slow)
    third = await client.post(URL, json=transaction(f"{unique}3"), headers=slow)
    assert [first.status_code, second.status_code] == [202, 202], second.text
    # rate 0.5/s, burst 2: the policy says so on every answer, and what is left goes down
    assert first.headers["ratelimit-policy"] == '"partner";q=2;w=4'
    assert first.headers["ratelimit"].startswith('"partner";r=1;t=')
    assert second.headers["ratelimit"].startswith('"partner";r=0;t=')
    problem = assert_problem(third, 429, "rate-limited")
    assert problem["detail"]
    assert third.headers["retry-after"] == "2"  # one request more is allowed in just under 2 s: rounded up
    assert third.headers["ratelimit"].startswith('"partner";r=0;t=')
    # another partner is not slowed down at the same moment
    other = await client.post(URL, json=transaction(f"{unique}g"), headers={**JSON, **registry.bearer("globex")})
    assert other.status_code == 202, other.text
    # an invalid request counts too, and is told so
    invalid = await client.post(URL, json={"amount": 1}, headers=slow)
    assert invalid.status_code == 429
    await asyncio.sleep(int(third.headers["retry-after"]))
    assert (await client.post(URL, json=transaction(f"{unique}3"), headers=slow)).status_code == 202
    assert len(log.records(f"txn_{unique}3")) == 1  # the limited attempt wrote nothing


async def test_a_limited_partners_status_queries_count_and_carry_the_headers(client, registry, unique):
    slow = registry.bearer("slow")
    # the status store connected first, so the three queries below land within one emission interval
    await client.get(f"/api/v1/transactions/txn_{unique}", headers=registry.bearer("globex"))
    first = await client.get(f"/api/v1/transactions/txn_{unique}", headers=slow)
    assert_problem(first, 404, "not-found")
    assert first.headers["ratelimit"].startswith('"partner";r=1;')
    await client.get(f"/api/v1/transactions/txn_{unique}", headers=slow)
    third = await client.get(f"/api/v1/transactions/txn_{unique}", headers=slow)
    assert_problem(third, 429, "rate-limited")
    assert int(third.headers["retry-after"]) >= 1


async def test_ready_says_how_partners_are_identified(client, stack):
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["partners"] == "registry"
    assert "warning" not in ready.json()
    async with AsyncTestClient(create_app(stack)) as open_client:
        body = (await open_client.get("/ready")).json()
    assert body["partners"] == "open" and "open mode" in body["warning"]
