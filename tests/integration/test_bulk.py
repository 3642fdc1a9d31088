"""POST /api/v1/transactions/bulk against the real Redis and Kafka: each transaction is answered exactly
as POST /api/v1/transactions/ would answer it alone, and Kafka holds exactly one record per accepted
transaction, at the offset its answer gives; a Kafka outage in the middle acknowledges nothing the
broker does not have."""

import asyncio
import json
import random
import threading
import time
import uuid

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app
from gateway.idempotency.single_node import SingleNodeStore
from gateway.idempotency.store import Decision
from gateway.intake.schemas import ENCODER
from gateway.redis.pipeline import RedisPipeline
from gateway.telemetry.metrics import Metrics
from tests.conftest import transaction
from tests.integration.test_intake import assert_problem
from tests.partners import write_registry

URL = "/api/v1/transactions/bulk"
SINGLE = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


class Item(msgspec.Struct):
    index: int
    status: int
    body: msgspec.Raw


class Answer(msgspec.Struct, forbid_unknown_fields=True):
    results: list[Item]


def results_of(response, count: int) -> list[Item]:
    """The per-transaction results, checked to be one per transaction in order; bodies as raw bytes."""
    assert response.headers["content-type"] == "application/json", response.text
    answer = msgspec.json.decode(response.content, type=Answer)
    assert [item.index for item in answer.results] == list(range(count))
    for item in answer.results:
        assert json.loads(bytes(item.body)).get("status") in (item.status, "submitted", "deduped")
    return answer.results


def bulk(items: list[str]) -> bytes:
    """A bulk body from each transaction's own JSON text (so that an item may be any text at all)."""
    return ("[" + ",".join(items) + "]").encode()


def new_partner(stack, **changes):
    return msgspec.structs.replace(stack, partner=f"it-{uuid.uuid4().hex[:8]}", **changes)


@pytest.fixture
async def client(stack):
    async with AsyncTestClient(create_app(new_partner(stack))) as client:
        yield client


@pytest.fixture
async def quick_client(stack):
    """Short delivery timeout and in-doubt margin, so a Kafka outage is felt (and resolved) quickly."""
    async with AsyncTestClient(create_app(new_partner(stack, delivery_timeout_ms=3000, in_doubt_margin_ms=1000))) as c:
        yield c


def text(body: dict) -> str:
    return json.dumps(body)


async def test_a_thousand_mixed_transactions_are_answered_as_the_single_endpoint_would(client, log, unique):
    app = client.app
    accepted_before = [transaction(f"{unique}p{i}") for i in range(50)]
    for body in accepted_before:
        assert (await client.post(SINGLE, content=text(body), headers=JSON)).status_code == 202
    # in flight: reserved by a submission that has not finished (the intake's own reservation, never produced)
    pending = [transaction(f"{unique}f{i}") for i in range(20)]
    redis = RedisPipeline(app.state.settings.redis_url, 2.0)
    try:
        store = SingleNodeStore(redis, Metrics(), pending_ttl_ms=60_000, done_ttl_ms=60_000)
        for body in pending:
            prepared = app.state.intake.prepare(app.state.settings.partner, text(body).encode(), None)
            assert (await store.reserve(prepared.reservation))[0] is Decision.NEW
    finally:
        redis.close()
    invalid = [
        text(transaction(f"{unique}i0", amount=-1)),
        text(transaction(f"{unique}i1", source_currency="XXX", destination_account=f"acct_usa_{unique}i1")),
        text(transaction(f"{unique}i2", amt=5)),  # an unknown field
        text(transaction(f"{unique}i3", metadata=5)),
        text(transaction(f"{unique}i4", counterparty_id=None, idempotency_key=None)),
        text(transaction(f"{unique}i5", settlement_window="t9", amount="1.234")),
        text(transaction(f"{unique}i6"))[:-1] + ', "amount": 3}',  # a member given twice
        "42",
        "[]",
    ]
    double_spend = [
        # an accepted transaction_id under a new idempotency key
        text(transaction(f"{unique}p{i}", idempotency_key=f"idem_{unique}other{i}"))
        for i in range(5)
    ] + [
        # an accepted idempotency key with another payload
        text(transaction(f"{unique}p{i}", amount="999.00"))
        for i in range(5, 10)
    ]
    replayed = [text(body) for body in accepted_before]
    new = [text(transaction(f"{unique}n{i}")) for i in range(1000 - 50 - 20 - len(invalid) - 10 - 20)]
    kinds = (
        [("new", item) for item in new]
        + [("replayed", item) for item in replayed]
        + [("in_flight", text(body)) for body in pending]
        + [("invalid", item) for item in invalid]
        + [("double_spend", item) for item in double_spend]
    )
    shuffle = random.Random(7)
    shuffle.shuffle(kinds)
    for item in new[:20]:  # sent twice: the second copy, later in the array, meets the first one's reservation
        after = kinds.index(("new", item)) + 1
        kinds.insert(shuffle.randrange(after, len(kinds) + 1), ("repeat", item))
    assert len(kinds) == 1000

    response = await client.post(URL, content=bulk([item for _, item in kinds]), headers=JSON)
    assert response.status_code == 207, response.text[:500]
    assert response.headers["retry-after"] == "1"  # some transactions were in flight
    results = results_of(response, 1000)

    # What the single endpoint answers for the same text now, byte for byte, for every transaction that
    # was not new (a new one is a replay by now; a repeat's original is done, so compare with a pending one)
    in_flight_answer = None
    for (kind, item), result in zip(kinds, results, strict=True):
        if kind in ("new", "repeat"):
            continue
        single = await client.post(SINGLE, content=item, headers=JSON)
        assert (result.status, bytes(result.body)) == (single.status_code, single.content), (kind, item)
        if kind == "in_flight":
            in_flight_answer = (result.status, bytes(result.body))
    assert in_flight_answer is not None and in_flight_answer[0] == 409

    reference = (await client.post(SINGLE, content=text(transaction(f"{unique}ref")), headers=JSON)).json()
    records = log.everything()
    for (kind, item), result in zip(kinds, results, strict=True):
        transaction_id = json.loads(item)["transaction_id"] if item.startswith("{") else None
        if kind == "repeat":
            assert (result.status, bytes(result.body)) == in_flight_answer
            continue
        if kind != "new":
            assert result.status != 202
            if kind in ("invalid", "in_flight"):
                assert transaction_id not in records, kind  # nothing reached Kafka
            continue
        assert result.status == 202, bytes(result.body)
        body = json.loads(bytes(result.body))
        # the single endpoint's 202 body: same members in the same order, compact, as msgspec writes it
        assert list(body) == list(reference) and list(body["metadata"]) == list(reference["metadata"])
        assert bytes(result.body) == ENCODER.encode(body)
        meta = body["metadata"]
        [record] = records.pop(transaction_id)
        assert (record.topic(), record.partition(), record.offset()) == (
            meta["topic"],
            meta["partition"],
            meta["offset"],
        )
        event = json.loads(record.value())
        assert event["transaction"]["amount"] == "250.00" and event["routing"]["batch"] == meta["batch"]
        # and its replay through the single endpoint points at the same record
        replay = await client.post(SINGLE, content=item, headers=JSON)
        assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
        assert (replay.json()["metadata"]["offset"], replay.json()["metadata"]["partition"]) == (
            meta["offset"],
            meta["partition"],
        )
    # left: the transactions accepted before the bulk request (once each) and the reference, nothing else
    assert sorted(records) == sorted([f"txn_{unique}p{i}" for i in range(50)] + [f"txn_{unique}ref"])
    assert all(len(found) == 1 for found in records.values())


async def test_all_new_is_200(client, log, unique):
    items = [text(transaction(f"{unique}{i}")) for i in range(100)]
    response = await client.post(URL, content=bulk(items), headers=JSON)
    assert response.status_code == 200
    assert "retry-after" not in response.headers
    assert response.headers["server-timing"].startswith("decode;dur=")
    assert [result.status for result in results_of(response, 100)] == [202] * 100
    records = log.everything()
    assert sorted(records) == sorted(f"txn_{unique}{i}" for i in range(100))


@pytest.mark.parametrize(
    ("body", "headers", "status", "cause"),
    [
        (b'{"transaction_id": "x"}', JSON, 422, "invalid-shape"),
        (b"[]", JSON, 422, "invalid-shape"),
        (b'[{"transaction_id": "x"},', JSON, 400, "malformed-json"),
        (None, {**JSON, "idempotency-key": "k1"}, 400, "invalid-parameter"),
        (None, {"content-type": "text/plain"}, 415, "unsupported-media-type"),
    ],
    ids=["object", "empty", "malformed", "idempotency-header", "media-type"],
)
async def test_a_request_refused_as_a_whole_writes_nothing(client, log, unique, body, headers, status, cause):
    body = body or bulk([text(transaction(unique))])
    assert_problem(await client.post(URL, content=body, headers=headers), status, cause)
    assert log.records(f"txn_{unique}") == []


async def test_more_transactions_than_allowed_is_422_naming_the_limit(stack, log, unique):
    async with AsyncTestClient(create_app(new_partner(stack, bulk_max_items=3))) as client:
        items = [text(transaction(f"{unique}{i}")) for i in range(4)]
        problem = assert_problem(await client.post(URL, content=bulk(items), headers=JSON), 422, "invalid-shape")
        assert problem["detail"] == "a bulk request holds 1 to 3 transactions, not 4"
        assert problem["errors"] == [
            {"field": "", "code": "too_many_items", "message": "must hold 1 to 3 transactions"}
        ]
        assert (await client.post(URL, content=bulk(items[:3]), headers=JSON)).status_code == 200
    assert log.records(f"txn_{unique}3") == [] and len(log.records(f"txn_{unique}0")) == 1


async def test_a_body_over_the_bulk_limit_is_413(stack, log, unique):
    async with AsyncTestClient(create_app(new_partner(stack, bulk_max_body_bytes=2000))) as client:
        items = bulk([text(transaction(f"{unique}{i}")) for i in range(10)])
        assert len(items) > 2000
        problem = assert_problem(await client.post(URL, content=items, headers=JSON), 413, "body-too-large")
        assert problem["detail"] == "the body is larger than GATEWAY_BULK_MAX_BODY_BYTES"
    assert log.records(f"txn_{unique}0") == []


async def test_redis_down_is_503_with_retry_after_and_nothing_produced(stack, log, unique):
    settings = new_partner(stack, redis_url="redis://127.0.0.1:1", redis_timeout_ms=200)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post(URL, content=bulk([text(transaction(unique))]), headers=JSON)
        assert_problem(response, 503, "dependency-unavailable")
        assert response.headers["retry-after"] == "1"
    assert log.records(f"txn_{unique}") == []


async def test_a_limited_partner_pays_one_request_per_transaction(stack, log, unique, tmp_path):
    registry = write_registry(tmp_path, slow_rate=0.5, slow_burst=3)
    settings = msgspec.structs.replace(stack, partners_file=str(registry.path), partners_reload_seconds=0)
    headers = {**JSON, **registry.bearer("slow")}
    async with AsyncTestClient(create_app(settings)) as client:
        too_many = [text(transaction(f"{unique}{i}")) for i in range(4)]
        problem = assert_problem(await client.post(URL, content=bulk(too_many), headers=headers), 422, "invalid-shape")
        assert problem["detail"] == "a bulk request holds 1 to 3 transactions, not 4"  # the partner's burst
        # that refusal cost one request; two transactions now take what is left of the burst
        response = await client.post(URL, content=bulk(too_many[:2]), headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit"].startswith('"partner";r=0;')
        limited = await client.post(URL, content=bulk(too_many[2:3]), headers=headers)
        assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) >= 1
    records = log.everything()
    assert sorted(records) == [f"txn_{unique}0", f"txn_{unique}1"]


async def test_a_kafka_outage_mid_stream_acknowledges_nothing_the_broker_does_not_have(
    quick_client, log, unique, kafka_broker
):
    """Bulk requests keep coming back to back while the broker is killed (SIGKILL, from another thread,
    so it lands in the middle of a request): every 202 names a record that is in the log, and once the
    broker is back, sending the same requests again ends with exactly one record per transaction."""
    sent: list[list[str]] = []
    answers: list[tuple[list[str], list[Item]]] = []

    async def send(name: str) -> list[Item]:
        items = [text(transaction(f"{unique}{name}x{i}")) for i in range(300)]
        sent.append(items)
        response = await quick_client.post(URL, content=bulk(items), headers=JSON)
        assert response.status_code in (200, 207), response.text[:300]
        results = results_of(response, len(items))
        answers.append((items, results))
        return results

    assert {item.status for item in await send("first")} == {202}
    killer = threading.Timer(0.5, kafka_broker.kill)
    killer.start()
    try:
        round_, deadline = 0, time.monotonic() + 90
        while True:  # until a whole request finds the broker gone
            results = await send(f"r{round_}")
            round_ += 1
            if killer.finished.is_set() and {item.status for item in results} == {503}:
                break
            assert time.monotonic() < deadline, "the broker never went away"
    finally:
        killer.join()  # killed before the fixture looks, so it starts the broker again whatever happens
    acknowledged = {
        json.loads(items[i])["transaction_id"]: json.loads(bytes(item.body))["metadata"]
        for items, results in answers
        for i, item in enumerate(results)
        if item.status == 202
    }
    refused = [item.status for _, results in answers for item in results if item.status != 202]
    print(
        f"bulk outage: {len(answers)} requests, {len(acknowledged)} transactions acknowledged, {len(refused)} "
        f"answered 503, {sum(1 for _, r in answers if len({i.status for i in r}) > 1)} requests cut in the middle"
    )
    assert set(refused) <= {503}, refused
    kafka_broker.start()

    records = log.everything()
    for transaction_id, meta in acknowledged.items():
        [record] = records[transaction_id]  # every acknowledged transaction is in the log, once
        assert (record.topic(), record.partition(), record.offset()) == (
            meta["topic"],
            meta["partition"],
            meta["offset"],
        )

    # The partner sends every request again until none is 409 (in doubt, being settled) or 503.
    for items in sent:
        for _ in range(60):
            response = await quick_client.post(URL, content=bulk(items), headers=JSON)
            statuses = {item.status for item in results_of(response, len(items))}
            if statuses <= {200, 202}:
                break
            assert statuses <= {200, 202, 409, 503}, statuses
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"still {statuses} after 30 s")
    records = log.everything()
    every = {json.loads(item)["transaction_id"] for items in sent for item in items}
    assert set(records) == every
    assert all(len(found) == 1 for found in records.values()), "a transaction reached Kafka twice"
