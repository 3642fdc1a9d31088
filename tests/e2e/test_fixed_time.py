"""GATEWAY_FIXED_TIME pins the router's clock: the routed window, value date and batch show in the 202
and in the Kafka record."""

import json

import httpx
import pytest

from tests.conftest import transaction
from tests.e2e.conftest import server_env
from tests.kafka_log import end_offsets, read_topic
from tests.servers import Server

JUNETEENTH = "2026-06-19T14:00:00Z"
GBP_EUR = {
    "source_currency": "GBP",
    "destination_currency": "EUR",
}  # Friday 19 June 2026, 10:00 in New York: USD closed, GBP open


@pytest.fixture(scope="module")
def juneteenth_server(stack, tmp_path_factory):
    env = server_env(stack, tmp_path_factory.mktemp("fixed"), GATEWAY_FIXED_TIME=JUNETEENTH)
    gateway = Server(env, workers=1)
    yield gateway
    gateway.stop()


@pytest.mark.parametrize(
    ("changes", "window", "value_date", "reason"),
    [
        ({"settlement_window": "t0"}, "t1", "2026-06-22", "non_business_day"),
        ({"settlement_window": "rtgs"}, "rtgs", "2026-06-22", "non_business_day"),
        ({"settlement_window": None, "amount": 5_000_000}, "rtgs", "2026-06-22", "non_business_day"),
        ({"settlement_window": "t1", **GBP_EUR}, "t1", "2026-06-22", "requested"),
        ({"settlement_window": "t0", **GBP_EUR}, "t0", "2026-06-19", "requested"),
    ],
)  # fmt: skip
def test_routed_window_value_date_and_batch_in_the_answer_and_the_record(
    juneteenth_server, stack, unique, changes, window, value_date, reason
):
    body = transaction(unique, **changes)
    requested = body.get("settlement_window")
    topic = stack.topic(window)
    since = end_offsets(stack.kafka_bootstrap, topic)
    response = httpx.post(juneteenth_server.url + "/api/v1/transactions/", json=body, timeout=10)
    assert response.status_code == 202, response.text
    meta = response.json()["metadata"]
    batch = f"{window}-{value_date.replace('-', '')}-{body['destination_currency']}"
    assert (meta["window"], meta["value_date"], meta["reason"], meta["batch"]) == (window, value_date, reason, batch)
    assert meta["requested_window"] == requested and meta["topic"] == topic
    [record] = [
        r
        for r in read_topic(stack.kafka_bootstrap, topic, since=since)
        if json.loads(r.value())["idempotency_key"] == body["idempotency_key"]
    ]
    routing = json.loads(record.value())["routing"]
    assert routing == {
        "window": window,
        "requested_window": requested,
        "value_date": value_date,
        "batch": batch,
        "reason": reason,
    }
    assert json.loads(record.value())["occurred_at"] == "2026-06-19T14:00:00.000Z"
