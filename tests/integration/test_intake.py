"""POST /api/v1/transactions/ against the real Redis and Kafka: every response code, and for every 202
exactly one record in the topic with the right key, headers and exact amount."""

import asyncio
import json
import subprocess
import uuid

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app
from gateway.idempotency.single_node import SingleNodeStore
from gateway.idempotency.store import Decision
from gateway.redis.pipeline import RedisPipeline
from gateway.telemetry.metrics import Metrics
from tests.conftest import transaction
from tests.kafka_log import headers_of

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


@pytest.fixture
async def client(stack):
    # a partner of its own, so no other test (or earlier run) shares its idempotency keys
    settings = msgspec.structs.replace(stack, partner=f"it-{uuid.uuid4().hex[:8]}")
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def assert_problem(response, status: int, cause: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/" + cause) and body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.text and "File " not in response.text
    return body


async def test_202_new_transaction_reaches_kafka_exactly_once(client, log, unique):
    raw = (
        f'{{"transaction_id":"txn_{unique}","amount":250.00,"source_currency":"USD","destination_currency":"GBP",'
        f'"source_account":"acct_usa_{unique}","destination_account":"acct_uk_99","counterparty_id":"cparty_london",'
        f'"idempotency_key":"idem_{unique}","settlement_window":"t1","metadata":{{"invoice":"INV-42"}}}}'
    )
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await client.post(URL, content=raw, headers={**JSON, "traceparent": traceparent})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["transaction_id"] == f"txn_{unique}"
    assert body["status"] == "submitted" and body["message"] == "Transaction queued for processing"
    meta = body["metadata"]
    assert meta["window"] == "t1" and meta["requested_window"] == "t1" and meta["reason"] == "requested"
    assert meta["batch"] == f"t1-{meta['value_date'].replace('-', '')}-GBP"
    assert meta["topic"] == "settlement.t1"

    records = log.records(f"txn_{unique}")
    assert len(records) == 1
    record = records[0]
    assert (record.topic(), record.partition(), record.offset()) == (meta["topic"], meta["partition"], meta["offset"])
    assert record.key() == f"acct_usa_{unique}".encode()
    headers = headers_of(record)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"com.settlement.transaction.accepted.v1"
    assert headers["ce_source"] and headers["ce_time"] and headers["ce_id"]
    assert headers["content-type"] == b"application/json"
    assert headers["idempotency-key"] == f"idem_{unique}".encode()
    assert headers["traceparent"] == traceparent.encode()
    event = json.loads(record.value())
    assert event["event_type"] == "TransactionAccepted" and event["schema_version"] == 1
    assert event["event_id"] == headers["ce_id"].decode()
    assert event["transaction"]["amount"] == "250.00"  # exact decimal string, never a float
    assert event["transaction"]["metadata"] == {"invoice": "INV-42"}
    assert event["idempotency_key"] == f"idem_{unique}" and len(event["fingerprint"]) == 64
    assert event["routing"]["batch"] == meta["batch"]


async def test_amount_stays_exact_through_to_kafka(client, log, unique):
    raw = json.dumps(transaction(unique, amount="x")).replace('"x"', "12345678.91")
    response = await client.post(URL, content=raw, headers=JSON)
    assert response.status_code == 202, response.text
    [record] = log.records(f"txn_{unique}")
    assert json.loads(record.value())["transaction"]["amount"] == "12345678.91"


def stages(response) -> dict[str, float]:
    """The Server-Timing header as {stage: milliseconds}."""
    metrics = [m.strip().split(";dur=") for m in response.headers["server-timing"].split(",")]
    return {name: float(duration) for name, duration in metrics}


async def test_server_timing_gives_each_stage(client, unique):
    accepted = await client.post(URL, json=transaction(unique), headers=JSON)
    assert accepted.status_code == 202
    timing = stages(accepted)
    assert list(timing) == ["decode", "validate", "redis", "kafka"]
    assert all(ms > 0 for ms in timing.values()), timing
    assert timing["kafka"] > timing["decode"]  # a broker round trip outlasts parsing 300 bytes
    replayed = await client.post(URL, json=transaction(unique), headers=JSON)
    assert replayed.status_code == 200
    assert stages(replayed)["kafka"] == 0 and stages(replayed)["redis"] > 0  # a replay never touches Kafka


async def test_200_exact_resubmission_is_byte_identical_every_time(client, log, unique):
    first = await client.post(URL, json=transaction(unique), headers=JSON)
    assert first.status_code == 202
    replays = [await client.post(URL, json=transaction(unique), headers=JSON) for _ in range(3)]
    for replay in replays:
        assert replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == replays[0].content
    body = replays[0].json()
    meta = first.json()["metadata"]
    assert body["status"] == "deduped" and body["message"] == "Transaction already processed"
    assert body["metadata"]["original_batch"] == meta["batch"]
    assert (body["metadata"]["topic"], body["metadata"]["offset"]) == (meta["topic"], meta["offset"])
    assert len(log.records(f"txn_{unique}")) == 1


async def test_same_amount_spelled_differently_is_the_same_transaction(client, log, unique):
    base = json.dumps(transaction(unique, amount="x"))
    spellings = ["250", "250.0", '"250.00"', "2.5e2"]
    statuses = [
        (await client.post(URL, content=base.replace('"x"', spelling), headers=JSON)).status_code
        for spelling in spellings
    ]
    assert statuses == [202, 200, 200, 200]
    assert len(log.records(f"txn_{unique}")) == 1


async def test_idempotency_key_header_works_like_the_body_field(client, log, unique):
    body = transaction(unique, idempotency_key=None)
    first = await client.post(URL, json=body, headers={**JSON, "Idempotency-Key": f"idem_{unique}"})
    assert first.status_code == 202, first.text
    # the same key in the body is the same submission
    second = await client.post(URL, json=transaction(unique), headers=JSON)
    assert second.status_code == 200
    [record] = log.records(f"txn_{unique}")
    assert headers_of(record)["idempotency-key"] == f"idem_{unique}".encode()


async def test_422_header_and_body_keys_differ(client, log, unique):
    response = await client.post(URL, json=transaction(unique), headers={**JSON, "Idempotency-Key": "other"})
    body = assert_problem(response, 422, "validation-failed")
    assert body["errors"] == [
        {
            "field": "idempotency_key",
            "code": "idempotency_key_conflict",
            "message": "differs from the Idempotency-Key header",
        }
    ]
    assert log.records(f"txn_{unique}") == []


async def test_422_key_reused_with_another_payload(client, log, unique):
    assert (await client.post(URL, json=transaction(unique), headers=JSON)).status_code == 202
    response = await client.post(URL, json=transaction(unique, amount=251), headers=JSON)
    assert_problem(response, 422, "idempotency-key-reused")
    assert len(log.records(f"txn_{unique}")) == 1


async def test_409_same_transaction_id_under_another_key(client, log, unique):
    assert (await client.post(URL, json=transaction(unique), headers=JSON)).status_code == 202
    response = await client.post(URL, json=transaction(unique, idempotency_key=f"other_{unique}"), headers=JSON)
    assert_problem(response, 409, "transaction-id-conflict")
    assert len(log.records(f"txn_{unique}")) == 1


async def test_409_in_flight_with_retry_after(client, stack, log, unique):
    body = json.dumps(transaction(unique)).encode()
    # leave the key pending in Redis, exactly as the first of two concurrent requests does while it produces
    # (the test client runs the app on its own event loop, so this test brings its own Redis client)
    prepared = client.app.state.intake.prepare(client.app.state.settings.partner, body, None)
    redis = RedisPipeline(stack.redis_url, 2.0)
    try:
        decision, _ = await SingleNodeStore(redis, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=60_000).reserve(
            prepared.reservation
        )
    finally:
        redis.close()
    assert decision is Decision.NEW
    response = await client.post(URL, content=body, headers=JSON)
    assert_problem(response, 409, "request-in-flight")
    assert response.headers["retry-after"] == str(stack.retry_after_seconds)
    assert log.records(f"txn_{unique}") == []


async def test_422_lists_every_broken_rule(client, log, unique):
    body = transaction(unique, amount=-5, source_currency="XXX", destination_currency="usd", counterparty_id=None)
    body["settlement_window"] = "t9"
    response = await client.post(URL, json=body, headers=JSON)
    problem = assert_problem(response, 422, "validation-failed")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [
        ("amount", "amount_not_positive"),
        ("source_currency", "currency_not_settleable"),
        ("destination_currency", "currency_not_upper_case"),
        ("counterparty_id", "required"),
        ("settlement_window", "invalid_window"),
    ]
    assert all(e["message"] for e in problem["errors"])
    assert log.records(f"txn_{unique}") == []


@pytest.mark.parametrize("amount", ['"NaN"', '"Infinity"', '" 1.5 "', "1e400", "250.001"])
async def test_422_non_finite_spaced_or_too_precise_amounts(client, unique, amount):
    raw = json.dumps(transaction(unique, amount="x")).replace('"x"', amount)
    problem = assert_problem(await client.post(URL, content=raw, headers=JSON), 422, "validation-failed")
    assert problem["errors"][0]["field"] == "amount"


async def test_422_unknown_field(client, unique):
    problem = assert_problem(
        await client.post(URL, json=transaction(unique, amt=1), headers=JSON), 422, "invalid-shape"
    )
    assert "amt" in problem["detail"]


DUPLICATE = "appears more than once in its object (I-JSON, RFC 7493)"


@pytest.mark.parametrize("name", ['"amount"', '"\\u0061mount"'])
async def test_422_duplicate_member_name_names_it_and_nothing_reaches_kafka(client, log, unique, name):
    raw = json.dumps(transaction(unique))
    # the last value would win in msgspec, the first in some other parsers: refused, not guessed
    response = await client.post(URL, content=raw[:-1] + f", {name}: 1000}}", headers=JSON)
    problem = assert_problem(response, 422, "invalid-shape")
    assert problem["errors"] == [{"field": "amount", "code": "duplicate_field", "message": DUPLICATE}]
    assert log.records(f"txn_{unique}") == []
    # refused before the idempotency key was reserved: the same transaction, sent once, is new
    assert (await client.post(URL, content=raw, headers=JSON)).status_code == 202


async def test_422_duplicate_metadata_member(client, log, unique):
    raw = json.dumps(transaction(unique, metadata={"invoice": "INV-1"}))
    raw = raw.replace('"invoice": "INV-1"', '"invoice": "INV-1", "invoice": "INV-2"')
    problem = assert_problem(await client.post(URL, content=raw, headers=JSON), 422, "invalid-shape")
    assert problem["errors"] == [{"field": "metadata.invoice", "code": "duplicate_field", "message": DUPLICATE}]
    assert log.records(f"txn_{unique}") == []


async def test_422_unknown_field_is_named_in_errors(client, log, unique):
    response = await client.post(URL, json=transaction(unique, amt=1), headers=JSON)
    problem = assert_problem(response, 422, "invalid-shape")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [("amt", "unknown_field")]
    assert all(e["message"] for e in problem["errors"])
    assert log.records(f"txn_{unique}") == []


@pytest.mark.parametrize(("body", "got"), [("[{}]", "an array"), ("42", "an integer"), ("null", "null")])
async def test_422_body_that_is_not_an_object_lists_errors(client, body, got):
    problem = assert_problem(await client.post(URL, content=body, headers=JSON), 422, "invalid-shape")
    assert problem["errors"] == [{"field": "", "code": "invalid_type", "message": f"must be a JSON object, not {got}"}]


async def test_400_malformed_json(client):
    assert_problem(await client.post(URL, content=b'{"transaction_id": "t1",', headers=JSON), 400, "malformed-json")
    assert_problem(await client.post(URL, content=b"not json", headers=JSON), 400, "malformed-json")


async def test_413_body_too_large(client, stack, unique):
    body = transaction(unique, metadata={"pad": "x" * (stack.max_body_bytes + 1)})
    assert_problem(await client.post(URL, json=body, headers=JSON), 413, "body-too-large")


async def test_413_limit_is_configurable(stack, unique):
    settings = msgspec.structs.replace(stack, max_body_bytes=200)
    async with AsyncTestClient(create_app(settings)) as small:
        assert_problem(await small.post(URL, json=transaction(unique), headers=JSON), 413, "body-too-large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_415_wrong_content_type(client, unique, content_type):
    headers = {"content-type": content_type} if content_type else {}
    raw = json.dumps(transaction(unique)).encode()
    if content_type is None:
        # httpx adds no content type for raw bytes
        response = await client.post(URL, content=raw)
    else:
        response = await client.post(URL, content=raw, headers=headers)
    assert_problem(response, 415, "unsupported-media-type")


async def test_path_without_trailing_slash(client, log, unique):
    response = await client.post(URL.rstrip("/"), json=transaction(unique), headers=JSON)
    assert response.status_code == 202
    assert len(log.records(f"txn_{unique}")) == 1


async def test_100_concurrent_identical_requests_make_one_record(client, log, unique):
    body = json.dumps(transaction(unique))
    responses = await asyncio.gather(*(client.post(URL, content=body, headers=JSON) for _ in range(100)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 1, statuses
    assert set(statuses) <= {202, 200, 409}, statuses
    assert len(log.records(f"txn_{unique}")) == 1


async def test_503_redis_down_and_nothing_reaches_kafka(stack, log, unique, tmp_path):
    # a Redis of this test's own, stopped under the running gateway
    port = 26_000 + int(unique[:4], 16) % 2000
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                break
            await asyncio.sleep(0.1)
        settings = msgspec.structs.replace(stack, redis_url=f"redis://127.0.0.1:{port}/0")
        async with AsyncTestClient(create_app(settings)) as client:
            assert (await client.post(URL, json=transaction(unique), headers=JSON)).status_code == 202
            server.terminate()
            server.wait(10)
            second = transaction(f"{unique}b")
            response = await client.post(URL, json=second, headers=JSON)
            assert_problem(response, 503, "dependency-unavailable")
            assert response.headers["retry-after"] == str(stack.retry_after_seconds)
            # a replay cannot be told from a new one without Redis: also 503, never a false 202
            assert (await client.post(URL, json=transaction(unique), headers=JSON)).status_code == 503
    finally:
        server.kill()
        server.wait(10)
    assert log.records(f"txn_{unique}b") == []
    assert len(log.records(f"txn_{unique}")) == 1


@pytest.fixture
async def quick_client(stack):
    """A gateway whose delivery timeout and in-doubt margin are short, so an outage is felt quickly."""
    settings = msgspec.structs.replace(
        stack, partner=f"it-{uuid.uuid4().hex[:8]}", delivery_timeout_ms=3000, in_doubt_margin_ms=1000
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def test_503_kafka_down_then_the_same_request_is_accepted_once(quick_client, log, kafka_outage, unique):
    body = transaction(unique)
    started = asyncio.get_running_loop().time()
    response = await quick_client.post(URL, json=body, headers=JSON)
    elapsed = asyncio.get_running_loop().time() - started
    assert_problem(response, 503, "dependency-unavailable")
    assert response.headers["retry-after"] == "1"
    assert elapsed < 3.0 + 1.0, f"503 took {elapsed:.1f}s, beyond the 3 s delivery timeout plus one second"
    # A delivery timeout is in doubt (the record may have been written): the reservation stays locked,
    # so a retry while the broker is still down is 409 with Retry-After, never a second record.
    retry = await quick_client.post(URL, json=body, headers=JSON)
    assert_problem(retry, 409, "request-in-flight")
    assert retry.headers["retry-after"] == "1"

    kafka_outage()  # the broker is back; the log shows the record never arrived, so the key is released
    statuses = []
    for _ in range(40):
        response = await quick_client.post(URL, json=body, headers=JSON)
        statuses.append(response.status_code)
        if response.status_code == 202:
            break
        await asyncio.sleep(0.5)
    assert statuses[-1] == 202, statuses
    assert set(statuses[:-1]) <= {409, 503}, statuses
    assert (await quick_client.post(URL, json=body, headers=JSON)).status_code == 200
    assert len(log.records(f"txn_{unique}")) == 1
