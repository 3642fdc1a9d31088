"""Toxiproxy in front of the real Redis and Kafka (deploy/toxiproxy.sh): clients reach both through
the proxies, fail under a toxic or a disabled proxy, and recover once the fault is lifted."""

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests import toxiproxy
from tests.processes import stop
from tests.toxiproxy import KAFKA_PROXY, PIDFILE, REDIS_PROXY, Toxiproxy, ToxiproxyError

TOPIC = "tests.toxiproxy"  # of its own: the window topics are read by tests that expect gateway events


@pytest.fixture(scope="module")
def proxy(stack) -> Iterator[Toxiproxy]:
    """Toxiproxy with its two proxies, started when missing and left running (stack.sh down stops it)."""
    try:
        api = toxiproxy.start()
    except ToxiproxyError as exc:
        pytest.fail(str(exc), pytrace=False)
    api.reset()
    yield api
    api.reset()


@pytest.fixture(scope="module")
def topic(stack) -> str:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})  # alive until the answer is in
    created = admin.create_topics([NewTopic(TOPIC, 1, 1)])
    try:
        created[TOPIC].result(15)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    return TOPIC


def eventually(action, timeout: float = 10.0):
    """The result of `action` once it stops raising, or its last error after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_proxies_front_the_local_stack(proxy):
    proxies = proxy.proxies()
    assert proxies["redis"]["listen"] == REDIS_PROXY and proxies["kafka"]["listen"] == KAFKA_PROXY
    assert all(p["enabled"] and not p["toxics"] for p in proxies.values())


def test_redis_through_the_proxy_fails_under_faults_and_recovers(proxy):
    host, port = REDIS_PROXY.split(":")
    # no retries of its own (redis-py retries with backoff by default): each fault shows at once
    client = redis.Redis(
        host=host, port=int(port), socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        assert client.ping()

        with (
            proxy.toxic("redis", "timeout", {"timeout": 0}),
            pytest.raises(redis.TimeoutError),
        ):  # the peer stops answering
            client.ping()
        assert eventually(client.ping)

        with proxy.toxic("redis", "reset_peer", {"timeout": 0}), pytest.raises(redis.ConnectionError):
            client.ping()
        assert eventually(client.ping)

        proxy.disable("redis")  # the host is gone: refused
        try:
            with pytest.raises(redis.ConnectionError):
                client.ping()
        finally:
            proxy.enable("redis")
        assert eventually(client.ping)
    finally:
        client.close()


def test_kafka_through_the_proxy_fails_under_a_toxic_and_recovers(proxy, topic):
    # the FAULTS listener advertises the proxy: a client bootstrapped there is kept behind it
    metadata = AdminClient({"bootstrap.servers": KAFKA_PROXY}).list_topics(timeout=10)
    assert {f"{b.host}:{b.port}" for b in metadata.brokers.values()} == {KAFKA_PROXY}

    producer = Producer(
        {
            "bootstrap.servers": KAFKA_PROXY,
            "acks": "all",
            "message.timeout.ms": 3000,
            "reconnect.backoff.max.ms": 500,
            "log_level": 0,  # the resets below would fill stderr
        }
    )

    def produce(value: bytes) -> tuple[KafkaError | None, int]:
        reports: list = []
        producer.produce(topic, value, on_delivery=lambda error, message: reports.append((error, message.offset())))
        producer.flush(10)
        [report] = reports
        return report

    error, _ = produce(b"before")
    assert error is None

    with proxy.toxic("kafka", "reset_peer", {"timeout": 0}):
        error, _ = produce(b"during")
        assert error is not None and error.code() == KafkaError._MSG_TIMED_OUT

    error, offset = produce(b"after")
    assert error is None

    consumer = Consumer({"bootstrap.servers": KAFKA_PROXY, "group.id": "tests-toxiproxy", "log_level": 0})
    try:
        consumer.assign([TopicPartition(topic, 0, offset)])
        message = consumer.poll(10)
        assert message is not None and message.error() is None and message.value() == b"after"
    finally:
        consumer.close()


def test_a_reset_the_server_does_not_answer_restarts_it(proxy):
    # a hung server, as when removing a toxic deadlocks it (Shopify/toxiproxy#558): stopped, its API is silent
    proxy.add_toxic("redis", "latency", {"latency": 1000})
    pid = int(PIDFILE.read_text())
    stop(pid)
    try:
        assert proxy.reset(timeout=1) is True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert int(PIDFILE.read_text()) != pid
    with contextlib.suppress(FileNotFoundError):  # the hung one is gone (or a zombie until init reaps it)
        assert Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert proxy.reset() is False  # the new one answers
    proxies = proxy.proxies()
    assert set(proxies) == {"redis", "kafka"}
    assert all(p["enabled"] and not p["toxics"] for p in proxies.values())
    host, port = REDIS_PROXY.split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=1)
    try:
        assert eventually(client.ping)
    finally:
        client.close()
