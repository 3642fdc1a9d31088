"""A produce and consume round trip on the real broker, through the gateway's own producer."""

import asyncio

from gateway.kafka.producer import SettlementProducer, ensure_topics
from gateway.telemetry.metrics import Metrics
from tests.kafka_log import end_offsets, headers_of, read_topic


async def test_window_topics_exist_after_ensure(stack):
    ensure_topics(stack)
    assert ensure_topics(stack) == []  # idempotent: nothing left to create
    for window in ("rtgs", "t0", "t1"):
        assert end_offsets(stack.kafka_bootstrap, stack.topic(window))


async def test_produced_records_are_consumed_with_key_value_and_headers(stack, unique):
    topic = stack.topic("t1")
    before = end_offsets(stack.kafka_bootstrap, topic)
    producer = SettlementProducer(stack, Metrics())
    producer.start()
    try:
        deliveries = await asyncio.gather(
            *(
                producer.produce(
                    topic, f"acct-{unique}".encode(), f'{{"n":{n}}}'.encode(), [("test-id", unique.encode())]
                )
                for n in range(20)
            )
        )
    finally:
        assert producer.close(5) == 0
    records = [
        r
        for r in read_topic(stack.kafka_bootstrap, topic, since=before)
        if headers_of(r).get("test-id") == unique.encode()
    ]
    assert len(records) == 20
    assert {r.key() for r in records} == {f"acct-{unique}".encode()}
    assert sorted(r.value() for r in records) == sorted(f'{{"n":{n}}}'.encode() for n in range(20))
    # one key, one partition, in order: the event order of an account survives
    assert len({r.partition() for r in records}) == 1
    assert [r.value() for r in sorted(records, key=lambda r: r.offset())] == [
        f'{{"n":{n}}}'.encode() for n in range(20)
    ]
    # the delivery report told the truth about where each record went
    assert {(d.topic, d.partition, d.offset) for d in deliveries} == {
        (r.topic(), r.partition(), r.offset()) for r in records
    }
