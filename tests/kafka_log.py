"""Read what really reached Kafka: the records of a topic between two points of its log."""

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-reader", "enable.auto.commit": False})


_TRANSIENT = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TRANSPORT}


def end_offsets(bootstrap: str, topic: str, timeout: float = 15.0) -> dict[int, int]:
    """The high watermark of every partition of `topic` (where the next record will go).

    Right after a topic is created or the broker restarts, leadership may still be settling: the
    broker then answers NOT_LEADER for a moment, and the question is asked again."""
    consumer = _consumer(bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in partitions
                }
            except KafkaException as exc:
                if exc.args[0].code() not in _TRANSIENT or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, since: dict[int, int] | None = None, timeout: float = 15.0) -> list:
    """Every record of `topic` from `since` (default: the beginning) to the current end."""
    since = since or {}
    ends = end_offsets(bootstrap, topic, timeout)
    wanted = {p for p, end in ends.items() if end > since.get(p, 0)}
    consumer = _consumer(bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, since.get(p, 0)) for p in wanted])
        records = []
        while wanted:
            message = consumer.poll(timeout)
            if message is None:
                raise TimeoutError(f"{topic}: no record within {timeout}s, partitions {sorted(wanted)} unread")
            if message.error():
                raise RuntimeError(message.error().str())
            if message.partition() in wanted:
                records.append(message)
                if message.offset() + 1 >= ends[message.partition()]:
                    wanted.discard(message.partition())
        return records
    finally:
        consumer.close()


def headers_of(record) -> dict[str, bytes]:
    """A record's headers as a dict."""
    return dict(record.headers() or [])
