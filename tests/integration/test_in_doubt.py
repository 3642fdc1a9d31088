"""Deliveries in doubt and completions Redis did not take, against the real Redis and Kafka.

In every case the transaction ends exactly once in Kafka, and the partner's retry ends with the answer
that matches the log: 200 with the record's coordinates when it was written, 202 when it never was.
"""

import asyncio
import json
import time
import uuid

import msgspec
import pytest
from confluent_kafka import Producer
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.api.app import create_app
from gateway.idempotency.reservation import Reservation
from gateway.idempotency.single_node import SingleNodeStore
from gateway.idempotency.store import Decision
from gateway.redis.pipeline import RedisPipeline
from gateway.telemetry.metrics import Metrics
from settlement.events import EVENT_ENCODER, cloudevents_headers
from tests.conftest import transaction
from tests.kafka_log import end_offsets, headers_of, read_topic

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


@pytest.fixture
async def client(stack):
    """A gateway with a short delivery timeout and in-doubt margin, so a doubt is settled in seconds."""
    settings = msgspec.structs.replace(
        stack, partner=f"doubt-{uuid.uuid4().hex[:8]}", delivery_timeout_ms=2000, in_doubt_margin_ms=1000
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def t1_log(stack):
    since = end_offsets(stack.kafka_bootstrap, stack.topic("t1"))

    def records(transaction_id: str) -> list:
        return [
            r
            for r in read_topic(stack.kafka_bootstrap, stack.topic("t1"), since=since)
            if headers_of(r).get("ce_subject") == transaction_id.encode()
        ]

    return records


async def _retry_until_settled(client, body: dict, seconds: float = 30) -> tuple[list[int], dict]:
    """Retry as a partner does (after Retry-After) until the answer is 200 or 202."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = await client.post(URL, json=body, headers=JSON)
        statuses.append(response.status_code)
        if response.status_code in (200, 202):
            return statuses, response.json()
        assert response.status_code in (409, 503), response.text
        assert response.headers["retry-after"]
        await asyncio.sleep(0.5)
    raise AssertionError(f"not settled in {seconds}s: {statuses}")


async def test_paused_broker_in_doubt_then_the_log_decides(client, t1_log, kafka_pause, unique):
    body = transaction(unique)
    started = time.monotonic()
    response = await client.post(URL, json=body, headers=JSON)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert time.monotonic() - started < 2.0 + 1.0  # the delivery timeout plus one second, no hang
    # the record may be in the broker's socket buffer: the key stays locked
    assert (await client.post(URL, json=body, headers=JSON)).status_code == 409

    kafka_pause()  # SIGCONT: the broker reads what was sent to it meanwhile
    statuses, answer = await _retry_until_settled(client, body)
    records = t1_log(f"txn_{unique}")
    assert len(records) == 1, statuses  # never a second record of one transaction
    assert answer["metadata"]["offset"] == records[0].offset()
    assert answer["metadata"]["partition"] == records[0].partition()
    if statuses[-1] == 200:  # it was written while in doubt: the retry gets the original's answer
        assert answer["status"] == "deduped"
        assert (await client.post(URL, json=body, headers=JSON)).json() == answer


async def _orphan(stack, client, body: dict, *, produced: bool) -> tuple[Reservation, int | None]:
    """A reservation whose worker died a minute ago, after producing its record or before."""
    prepared = client.app.state.intake.prepare(client.app.state.settings.partner, json.dumps(body).encode(), None)
    reservation, event = prepared.reservation, prepared.event
    pipeline = RedisPipeline(stack.redis_url, 2.0)
    redis = Redis.from_url(stack.redis_url)
    try:
        store = SingleNodeStore(pipeline, Metrics(), pending_ttl_ms=600_000, done_ttl_ms=600_000)
        assert (await store.reserve(reservation))[0] is Decision.NEW
        await _age(redis, reservation, 60_000)
    finally:
        pipeline.close()
        await redis.aclose()
    if not produced:
        return reservation, None
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    offsets: list[int] = []
    producer.produce(
        reservation.topic,
        EVENT_ENCODER.encode(event),
        event.transaction.source_account.encode(),
        headers=cloudevents_headers(event, None),
        on_delivery=lambda error, message: offsets.append(message.offset()),
    )
    assert producer.flush(10) == 0
    return reservation, offsets[0]


async def _age(redis: Redis, reservation: Reservation, ms: int) -> None:
    """Make a pending reservation `ms` older, by the time it holds (Redis's, when it was made)."""
    held = await redis.get(reservation.idem_key)
    head, (at, rest) = held[: 1 + len(reservation.fp)], held[1 + len(reservation.fp) :].split(b"|", 1)
    await redis.set(reservation.idem_key, head + str(int(at) - ms).encode() + b"|" + rest, keepttl=True)


async def test_worker_died_after_producing_the_retry_gets_the_original(stack, client, t1_log, unique):
    body = transaction(unique)
    _, offset = await _orphan(stack, client, body, produced=True)
    statuses, answer = await _retry_until_settled(client, body)
    assert statuses[0] == 409 and statuses[-1] == 200, statuses
    assert answer["status"] == "deduped" and answer["metadata"]["offset"] == offset
    assert len(t1_log(f"txn_{unique}")) == 1


async def test_worker_died_before_producing_the_retry_is_accepted_once(stack, client, t1_log, unique):
    body = transaction(unique)
    await _orphan(stack, client, body, produced=False)
    statuses, answer = await _retry_until_settled(client, body)
    assert statuses[0] == 409 and statuses[-1] == 202, statuses
    records = t1_log(f"txn_{unique}")
    assert len(records) == 1 and records[0].offset() == answer["metadata"]["offset"]


@pytest.fixture
async def store(stack):
    pipeline, observer = RedisPipeline(stack.redis_url, 2.0), Redis.from_url(stack.redis_url)
    yield SingleNodeStore(pipeline, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=60_000), pipeline, observer
    pipeline.close()
    await observer.aclose()


async def test_completion_is_sent_again_after_the_connection_drops(store, unique):
    ids, pipeline, redis = store
    r = Reservation(f"p-{unique}", f"key-{unique}", f"txn-{unique}", "ab" * 32)
    assert (await ids.reserve(r))[0] is Decision.NEW
    # Redis drops the gateway's connection just as Kafka confirms the record
    await redis.client_kill_filter(_id=await pipeline.execute("CLIENT", "ID"))
    outcome = ids.complete(r, b'{"status":"deduped"}')
    assert await asyncio.wait_for(outcome, 10) is True
    assert (await redis.get(r.idem_key))[:1] == b"D"  # done
    assert (await ids.reserve(r)) == (Decision.REPLAY, b'{"status":"deduped"}')


async def test_shutdown_drains_completions_that_wait_for_redis(store, unique):
    ids, pipeline, redis = store
    r = Reservation(f"p-{unique}", f"key-{unique}", f"txn-{unique}", "ab" * 32)
    await ids.reserve(r)
    pipeline.close()  # the connection is gone when the record is confirmed
    ids.complete(r, b"{}")
    assert await ids.drain(10) == 0  # shutdown waited for it to be sent again
    assert (await redis.get(r.idem_key))[:1] == b"D"  # done
