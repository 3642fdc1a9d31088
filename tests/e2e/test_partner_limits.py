"""A partner's rate limit is one limit across the workers of a gateway (Redis holds it): measured on
the real two-worker server, each worker's own count read from its metrics file."""

import asyncio
import time

import httpx
import pytest

from tests.conftest import transaction
from tests.e2e.conftest import accepted_per_worker, server_env
from tests.partners import write_registry
from tests.servers import Server

URL = "/api/v1/transactions/"
RATE, BURST = 10, 10


@pytest.fixture(scope="module")
def limited(stack, tmp_path_factory):
    directory = tmp_path_factory.mktemp("limited")
    registry = write_registry(directory, slow_rate=RATE, slow_burst=BURST)
    gateway = Server(server_env(stack, directory, GATEWAY_PARTNERS_FILE=str(registry.path)))
    yield gateway, registry, directory / "metrics"
    gateway.stop()


async def test_the_limit_holds_across_two_workers(limited, unique):
    server, registry, metrics = limited
    headers = {"content-type": "application/json", **registry.bearer("slow")}
    statuses: list[int] = []

    async def sender(n: int) -> None:
        # a connection of its own per request, so Granian spreads them over both workers
        for i in range(30):
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                response = await client.post(URL, json=transaction(f"{unique}-{n}-{i}"), headers=headers)
            statuses.append(response.status_code)
            assert response.status_code in (202, 429), response.text

    started = time.monotonic()
    await asyncio.gather(*(sender(n) for n in range(12)))
    elapsed = time.monotonic() - started
    accepted = statuses.count(202)
    allowed = BURST + RATE * elapsed
    # one limit: never more than the burst plus the rate over the run (two limits of their own would
    # let the two workers take up to twice that), and not much less either
    assert statuses.count(429) > 0, (accepted, allowed, elapsed)
    assert accepted <= allowed + 1, (accepted, allowed, elapsed)
    assert accepted >= 0.8 * allowed, (accepted, allowed, elapsed)
    await asyncio.sleep(1.5)  # the workers publish their counts every 0.5 s
    per_worker = accepted_per_worker(metrics, registry.ids["slow"])
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == accepted
    print(f"limit {RATE}/s burst {BURST}: {len(statuses)} sent in {elapsed:.2f} s, {accepted} accepted "
          f"(bound {allowed:.1f}), per worker {sorted(per_worker.values())}")  # fmt: skip
