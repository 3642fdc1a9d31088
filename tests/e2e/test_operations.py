"""What operators see of the running server: metrics summed over two workers on the operations port (never
on the partners'), JSON logs, shutdown."""

import asyncio
import json
import re
import signal
import time

import httpx
import msgspec
import pytest

from gateway.api.app import build_policy
from gateway.idempotency.single_node import SingleNodeStore
from gateway.intake.flow import Intake
from gateway.redis.pipeline import RedisPipeline
from gateway.settings import Settings
from gateway.telemetry.metrics import CONTENT_TYPE, PUBLISH_INTERVAL, Metrics
from tests.conftest import transaction
from tests.e2e.conftest import server_env
from tests.kafka_log import end_offsets, read_topic
from tests.partners import write_registry
from tests.servers import Server, listening_sockets

URL = "/api/v1/transactions/"


def scrape(server: Server) -> dict[str, float]:
    """Every sample of the operations port's /metrics as {'name{labels}': value} (a new connection each
    time: any worker may answer)."""
    response = httpx.get(server.ops_url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"] == CONTENT_TYPE, response.text
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric == name and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


async def post(client: httpx.AsyncClient, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(URL, content=content, headers={"content-type": "application/json", **headers})


async def test_counters_equal_what_was_sent_across_two_workers(server, stack, unique):
    expected = {
        "accepted": 6,
        "replayed": 4,
        "validation_failed": 3,
        "idempotency_key_reused": 2,
        "transaction_id_conflict": 2,
        "malformed_json": 2,
        "unsupported_media_type": 1,
        "request_in_flight": 1,
    }
    sent = 0

    def fresh() -> httpx.AsyncClient:
        # a new connection per request spreads them over both workers
        return httpx.AsyncClient(base_url=server.url, timeout=10)

    async def one(body: object, status: int, **headers: str) -> None:
        nonlocal sent
        async with fresh() as client:
            response = await post(client, body, **headers)
        sent += 1
        assert response.status_code == status, response.text

    for n in range(6):
        await one(transaction(f"{unique}{n}"), 202)
    for n in range(4):
        await one(transaction(f"{unique}{n}"), 200)
    for n in range(3):
        await one(transaction(f"{unique}bad{n}", amount=-1, source_currency="XXX"), 422)
    for n in range(2):
        await one(transaction(f"{unique}{n}", amount=999), 422)
    for n in range(2):
        await one(transaction(f"{unique}{n}", idempotency_key=f"other-{unique}-{n}"), 409)
    for _ in range(2):
        await one(b'{"transaction_id": ', 400)
    async with fresh() as client:
        response = await client.post(URL, content=b"{}", headers={"content-type": "text/plain"})
        assert response.status_code == 415
        sent += 1
    # leave a key pending, as a concurrent first request would, then submit it
    settings = msgspec.structs.replace(stack, partner=server.partner)
    policy, rules = build_policy(settings)
    body = json.dumps(transaction(f"{unique}pending")).encode()
    redis = RedisPipeline(stack.redis_url, 2.0)
    store = SingleNodeStore(redis, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=60_000)
    intake = Intake(settings, policy, rules, store, None, None, time.time, None)  # type: ignore[arg-type]
    prepared = intake.prepare(server.partner, body, None)
    try:
        await store.reserve(prepared.reservation)
    finally:
        redis.close()
    await one(body, 409)

    # each worker publishes its tallies every PUBLISH_INTERVAL; the scraped worker also just before
    await asyncio.sleep(2 * PUBLISH_INTERVAL)
    samples = scrape(server)
    for outcome, count in expected.items():
        assert sample(samples, "settlement_intake_outcomes_total", outcome=outcome) == count, outcome
    assert sample(samples, "settlement_validation_errors_total", field="amount", code="amount_not_positive") == 3
    assert sample(samples, "settlement_validation_errors_total", field="source_currency") == 3
    assert sample(samples, "settlement_routing_decisions_total", window="t1", reason="requested") == 6
    route = "/api/v1/transactions"
    assert sample(samples, "http_server_request_duration_seconds_count", http_route=route) == sent
    assert (
        sample(samples, "http_server_request_duration_seconds_count", http_route=route, http_response_status_code="202")
        == 6
    )
    assert sample(samples, "http_server_request_duration_seconds_bucket", http_route=route, le="+Inf") == sent
    assert sample(samples, "settlement_kafka_delivery_duration_seconds_count") == 6
    assert sample(samples, "settlement_redis_script_duration_seconds_count", script="complete") == 6
    assert "settlement_kafka_queue_messages" in "".join(samples)


async def test_access_log_is_json_with_the_request_id_and_no_full_account(server, unique):
    body = transaction(unique)
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await post(client, body, **{"X-Request-ID": f"req-{unique}"})
        generated = await client.get("/health")
    assert response.status_code == 202
    assert response.headers["x-request-id"] == f"req-{unique}"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.log_lines() if f"req-{unique}" in line]
        if lines:
            break
        await asyncio.sleep(0.1)
    [line] = lines
    entry = json.loads(line)
    assert entry["request_id"] == f"req-{unique}" and entry["event"] == "request"
    assert entry["method"] == "POST" and entry["route"] == "/api/v1/transactions" and entry["status"] == 202
    assert entry["transaction_id"] == f"txn_{unique}" and entry["duration_ms"] > 0
    assert entry["level"] == "info" and entry["time"]
    assert body["source_account"] not in "\n".join(server.log_lines())


async def test_sigterm_under_load_loses_nothing_and_exits_in_time(stack, tmp_path, unique):
    grace = 10
    gateway = Server(server_env(stack, tmp_path), workers=2, kill_timeout=grace)
    since = end_offsets(stack.kafka_bootstrap, stack.topic("t1"))
    results: dict[str, int | str] = {}

    async def submit(client: httpx.AsyncClient, n: int) -> None:
        body = transaction(f"{unique}-{n}")
        try:
            response = await post(client, body)
            results[body["transaction_id"]] = response.status_code
        except httpx.TransportError as exc:  # refused or cut once the server is going away
            results[body["transaction_id"]] = type(exc).__name__

    async def load() -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=grace + 5, limits=limits) as client:
            tasks = []
            for n in range(2000):
                tasks.append(asyncio.create_task(submit(client, n)))
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)

    loader = asyncio.create_task(load())
    await asyncio.sleep(1.0)
    stopped_at = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(gateway.process.wait, grace + 5)
    exit_time = time.monotonic() - stopped_at
    await asyncio.wait_for(loader, timeout=grace + 10)  # no request hangs
    gateway.stop()

    accepted = {txn for txn, status in results.items() if status == 202}
    assert accepted, "the load never reached the gateway"
    assert exit_time <= grace + 1, f"exited after {exit_time:.1f}s, grace is {grace}s"
    assert exit_code is not None
    assert set(results.values()) <= {202, 503, "ConnectError", "RemoteProtocolError", "ReadError"}, set(
        results.values()
    )
    in_kafka = {
        json.loads(record.value())["transaction"]["transaction_id"]
        for record in read_topic(stack.kafka_bootstrap, stack.topic("t1"), since=since)
        if json.loads(record.value())["partner"] == gateway.partner
    }
    assert accepted <= in_kafka, f"{len(accepted - in_kafka)} accepted transactions are not in Kafka"


@pytest.mark.parametrize("value", ["acct_usa_88", "ab"])
def test_mask_hides_all_but_the_tail(value):
    from settlement.logs import mask

    masked = mask(value)
    assert (len(masked) == len(value) and value not in masked) or len(value) <= 4
    assert masked.endswith(value[-4:]) if len(value) > 4 else set(masked) == {"*"}


def test_settings_used_here_exist():
    assert Settings().access_log is True and Settings().ready_cache_ms == 1000


async def test_a_bulk_request_counts_each_transaction_by_its_outcome(server, unique):
    """Outcomes, routing and Kafka deliveries per transaction; one request, two Redis scripts."""
    items = [transaction(f"{unique}{n}") for n in range(5)] + [
        transaction(f"{unique}bad", amount=-1),
        transaction(f"{unique}0"),  # the first one again: still in flight
        transaction(f"{unique}1", idempotency_key=f"other-{unique}"),  # its id under another key
    ]
    await asyncio.sleep(2 * PUBLISH_INTERVAL)
    before = scrape(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.post(
            "/api/v1/transactions/bulk", content=json.dumps(items), headers={"content-type": "application/json"}
        )
    assert response.status_code == 207, response.text
    assert [r["status"] for r in response.json()["results"]] == [202] * 5 + [422, 409, 409]
    await asyncio.sleep(2 * PUBLISH_INTERVAL)
    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    for outcome, count in {
        "accepted": 5,
        "validation_failed": 1,
        "request_in_flight": 1,
        "transaction_id_conflict": 1,
    }.items():
        assert grew("settlement_intake_outcomes_total", outcome=outcome) == count, outcome
    assert grew("settlement_validation_errors_total", field="amount", code="amount_not_positive") == 1
    assert grew("settlement_routing_decisions_total", window="t1", reason="requested") == 5
    assert grew("settlement_kafka_delivery_duration_seconds_count") == 5
    assert grew("settlement_redis_script_duration_seconds_count", script="reserve_all") == 1
    assert grew("settlement_redis_script_duration_seconds_count", script="complete_all") == 1
    route = "/api/v1/transactions/bulk"
    assert grew("http_server_request_duration_seconds_count", http_route=route, http_response_status_code="207") == 1


async def test_metrics_are_served_on_the_operations_port_only_and_summed_over_both_workers(server, unique):
    """/metrics names every partner and its volumes: it is not a route of the partners' port. The operations
    listener binds loopback by default, every worker holds it (SO_REUSEPORT), and whichever worker a scrape
    reaches answers with the count of both."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert "/metrics" not in (await client.get("/docs/openapi.json")).json()["paths"]
    assert set(listening_sockets(server.ops_port).values()) == {"127.0.0.1"}
    deadline = time.monotonic() + 30  # the second worker may still be starting
    while server.listening_workers(server.ops_port) != server.workers() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    holders = server.listening_workers(server.ops_port)
    assert len(holders) == 2 and holders == server.workers()

    partner = server.partner
    before = sample(scrape(server), "settlement_intake_outcomes_total", partner=partner, outcome="accepted")
    for n in range(8):  # a new connection each: both workers take some
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await post(client, transaction(f"{unique}{n}"))).status_code == 202
    await asyncio.sleep(2 * PUBLISH_INTERVAL)
    counts = [
        sample(scrape(server), "settlement_intake_outcomes_total", partner=partner, outcome="accepted") - before
        for _ in range(12)
    ]
    assert counts == [8] * 12
    health = httpx.get(server.ops_url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert httpx.get(server.ops_url + "/api/v1/transactions/", timeout=10).status_code == 404


async def test_with_a_partner_registry_metrics_are_not_on_the_partners_port_either(stack, tmp_path, unique):
    registry = write_registry(tmp_path)
    gateway = Server(server_env(stack, tmp_path, GATEWAY_PARTNERS_FILE=str(registry.path)), workers=1)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 404
            assert (await client.get("/metrics", headers=registry.bearer("acme"))).status_code == 404
            accepted = await post(client, transaction(unique), **registry.bearer("acme"))
            assert accepted.status_code == 202, accepted.text
        await asyncio.sleep(2 * PUBLISH_INTERVAL)
        samples = scrape(gateway)
        assert sample(samples, "settlement_intake_outcomes_total", partner=registry.ids["acme"]) == 1
    finally:
        gateway.stop()
