"""A Redis that fills up: /ready warns well before it is full, the gauge follows, and once full every
submission fails closed (503 with Retry-After, nothing in Kafka); an evicting or unlimited Redis is
named as the risk it is. Against a redis-server of the test's own (maxmemory 8 MB, noeviction)."""

import subprocess
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from gateway.api.app import create_app
from tests.conftest import transaction
from tests.servers import free_port

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


@pytest.fixture
def small_redis(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxmemory", "8mb", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(10)


async def _fill(redis: Redis, share: float) -> None:
    """Add 64 KB strings until used_memory passes `share` of maxmemory."""
    n = 0
    while True:
        memory = await redis.info("memory")
        if memory["used_memory"] >= share * memory["maxmemory"]:
            return
        try:
            await redis.set(f"filler:{n}", b"x" * 65_536)
        except OutOfMemoryError:
            return  # full
        n += 1


async def test_a_filling_redis_is_warned_of_and_a_full_one_fails_closed(stack, small_redis, log, unique):
    ops_port = free_port()
    settings = msgspec.structs.replace(
        stack, redis_url=small_redis, ready_cache_ms=0, partner=f"mem-{unique}", ops_port=ops_port
    )
    redis = Redis.from_url(small_redis)
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            ready = (await client.get("/ready")).json()
            assert "Redis" not in (ready.get("warning") or "")
            assert (await client.post(URL, json=transaction(f"{unique}-before"), headers=JSON)).status_code == 202
            await _fill(redis, 0.85)
            ready = await client.get("/ready")
            assert ready.status_code == 200  # still serving: a warning, well before it is full
            assert "Redis memory at 8" in ready.json()["warning"], ready.text
            async with httpx.AsyncClient() as operations:  # the operations listener, not the partners' port
                exposition = (await operations.get(f"http://127.0.0.1:{ops_port}/metrics")).text
            gauge = [line for line in exposition.splitlines() if "redis_memory_used" in line]
            assert any(float(line.split()[-1]) >= 0.85 for line in gauge if not line.startswith("#")), gauge
            await _fill(redis, 1.0)
            used = (await redis.info("memory"))["used_memory"]
            await redis.config_set("maxmemory", used - 1_048_576)  # and stays full, whatever frees a little
            refused = await client.post(URL, json=transaction(f"{unique}-full"), headers=JSON)
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
            assert refused.json()["type"].endswith("dependency-unavailable")
            bulk = await client.post("/api/v1/transactions/bulk", json=[transaction(f"{unique}-bulk")])
            assert bulk.status_code == 503, bulk.text
            await redis.config_set("maxmemory-policy", "allkeys-lru")
            assert "evicts keys (maxmemory-policy allkeys-lru)" in (await client.get("/ready")).json()["warning"]
            await redis.config_set("maxmemory", 0)
            assert "no maxmemory" in (await client.get("/ready")).json()["warning"]
    finally:
        await redis.aclose()
    assert log.records(f"txn_{unique}-full") == [] and log.records(f"txn_{unique}-bulk") == []
    assert len(log.records(f"txn_{unique}-before")) == 1
