"""A worker that dies under load is replaced (Granian --respawn-failed-workers): the gateway stays up,
the other worker answers meanwhile, and every acknowledged transaction is in Kafka exactly once."""

import asyncio
import json
import os
import signal
import time
from collections import Counter

import httpx

from tests.conftest import transaction
from tests.e2e.conftest import accepted_per_worker, server_env
from tests.kafka_log import end_offsets, read_topic
from tests.servers import Server

URL = "/api/v1/transactions/"
CLIENTS = 8  # concurrent connections
REQUESTS_PER_CONNECTION = 25  # then a fresh connection, so connections keep spreading over the workers
LOAD_SECONDS = 40  # the bound of the load, well beyond what the test needs
REPLACED_WITHIN = 20  # seconds for a new worker to be up: start-up is 2-6 s on a loaded 2-core machine


def transaction_of(record, partner: str) -> str | None:
    """The transaction id of an event of `partner`; None for anything else (other tests write here too)."""
    try:
        event = json.loads(record.value())
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("partner") != partner:
        return None
    return event["transaction"]["transaction_id"]


async def until(condition, timeout: float, interval: float = 0.02) -> float | None:
    """Poll `condition` until it holds; the monotonic time it first did, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        await asyncio.sleep(interval)
    return None


async def test_a_killed_worker_is_replaced_and_nothing_is_lost_or_doubled(stack, tmp_path, unique):
    env = server_env(stack, tmp_path)
    gateway = Server(env, workers=2)
    try:
        assert await until(lambda: len(gateway.listening_workers()) == 2, 30), "both workers never listened"
        original = gateway.workers()
        assert len(original) == 2, original
        since = end_offsets(stack.kafka_bootstrap, stack.topic("t1"))

        results: dict[str, int | str] = {}  # transaction id -> final status, or the error that cut it
        accepted_at: list[float] = []
        stop = asyncio.Event()
        deadline = time.monotonic() + LOAD_SECONDS

        async def submit(http: httpx.AsyncClient, body: dict) -> None:
            txn = body["transaction_id"]
            content = json.dumps(body).encode()
            while time.monotonic() < deadline:
                try:
                    response = await http.post(URL, content=content, headers={"content-type": "application/json"})
                except httpx.ConnectError:  # never reached a worker: sending it again is safe
                    results[txn] = "ConnectError"
                    await asyncio.sleep(0.05)
                    continue
                except httpx.TransportError as exc:  # cut mid-request: the outcome is unknown, move on
                    results[txn] = type(exc).__name__
                    return
                results[txn] = response.status_code
                if response.status_code == 202:
                    accepted_at.append(time.monotonic())
                return

        async def client(c: int) -> None:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
                    for _ in range(REQUESTS_PER_CONNECTION):
                        if stop.is_set():
                            break
                        await submit(http, transaction(f"{unique}-{c}-{n}"))
                        n += 1
                        await asyncio.sleep(0.005)  # leave CPU for the replacement's start-up

        clients = [asyncio.create_task(client(c)) for c in range(CLIENTS)]
        try:
            assert await until(lambda: len(accepted_at) >= 100, 15), "the load never got going"
            victim, survivor = sorted(original)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()

            spawned_at = await until(lambda: bool(gateway.workers() - original), 5)
            granian_log = [line for line in gateway.log_lines() if line.startswith("[")]
            assert spawned_at is not None, f"no new worker: {granian_log}"
            [replacement] = gateway.workers() - original
            replaced_at = await until(lambda: replacement in gateway.listening_workers(), REPLACED_WITHIN)
            assert replaced_at is not None, f"the new worker {replacement} never listened"
            assert gateway.process.poll() is None, "the gateway exited"
            # the replacement serves submissions, not only listens
            served = await until(
                lambda: accepted_per_worker(tmp_path / "metrics", env["GATEWAY_PARTNER"]).get(replacement, 0) > 0,
                15,
                0.1,
            )
            assert served is not None, "the new worker accepted nothing"
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*clients)

        assert gateway.process.poll() is None, "the gateway exited"
        assert gateway.workers() == {survivor, replacement}
        assert spawned_at - killed_at < 3, f"replaced after {spawned_at - killed_at:.1f}s"
        during_gap = [t for t in accepted_at if killed_at < t < replaced_at]
        assert during_gap, "nothing was accepted while the dead worker was being replaced"

        statuses = Counter(results.values())
        cut = {txn for txn, status in results.items() if status in ("ReadError", "RemoteProtocolError", "WriteError")}
        accepted = {txn for txn, status in results.items() if status == 202}
        assert set(statuses) <= {202, "ReadError", "RemoteProtocolError", "WriteError"}, statuses
        # only the requests the dead worker held are cut, at most one per connection
        assert len(cut) <= CLIENTS, statuses

        records = read_topic(stack.kafka_bootstrap, stack.topic("t1"), since)
        in_kafka = Counter(txn for txn in (transaction_of(record, gateway.partner) for record in records) if txn)
        assert {txn for txn in accepted if in_kafka[txn] != 1} == set(), "202 but not in Kafka exactly once"
        assert set(in_kafka) <= accepted | cut, "in Kafka without having been acknowledged or cut"
        assert all(in_kafka[txn] <= 1 for txn in cut), "a cut transaction is in Kafka twice"
        print(
            f"{len(accepted)} accepted, {len(during_gap)} while replacing, {len(cut)} cut; new worker after "
            f"{spawned_at - killed_at:.2f}s, listening after {replaced_at - killed_at:.2f}s"
        )
    finally:
        gateway.stop()
