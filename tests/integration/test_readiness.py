"""/health never touches dependencies; /ready really checks Redis and Kafka."""

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app


@pytest.fixture
async def client(stack):
    async with AsyncTestClient(create_app(stack)) as client:
        yield client


async def test_health_is_exactly_the_seed_answer(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "service": "settlement-engine", "version": "1.0.0"}


async def test_ready_with_both_up(client):
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"redis": "ok", "kafka": "ok"}


async def test_ready_names_redis_when_it_is_down(stack):
    down = msgspec.structs.replace(stack, redis_url="redis://127.0.0.1:1/0")
    async with AsyncTestClient(create_app(down)) as client:
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["checks"] == {"redis": "down", "kafka": "ok"}
        assert response.headers["retry-after"] == str(stack.retry_after_seconds)
        # RFC 9457, like every other error answer
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/not-ready") and response.json()["status"] == 503
        assert response.json()["detail"] == "redis is down"
        assert (await client.get("/health")).status_code == 200


async def test_ready_names_kafka_when_the_broker_is_stopped(client, kafka_outage):
    response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"redis": "ok", "kafka": "down"}
    assert any(problem.startswith("kafka:") for problem in body["problems"])
    assert (await client.get("/health")).status_code == 200
    kafka_outage()  # bring the broker back: /ready follows
    for _ in range(40):
        if (await client.get("/ready")).status_code == 200:
            break
    else:
        pytest.fail("/ready did not return to 200 after Kafka came back")


async def test_openapi_json_and_swagger_ui_are_served(client):
    document = await client.get("/docs/openapi.json")
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")
    ui = await client.get("/docs")
    assert ui.status_code == 200 and "swagger" in ui.text.lower()
