"""Against the running Granian server: the README's curl calls as written, replays across workers."""

import asyncio
import json
import re
import subprocess

import httpx

from tests.conftest import transaction
from tests.kafka_log import end_offsets, headers_of, read_topic
from tests.servers import ROOT

URL = "/api/v1/transactions/"
BULK = "/api/v1/transactions/bulk"


def readme_curl_calls() -> list[str]:
    """The shell commands of the README's 'Submit a transaction' block, exactly as written."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- seed-curl -->\s*```sh\n(.*?)```", readme, re.S)
    assert block, "README lost its seed curl block"
    lines = [line for line in block.group(1).splitlines() if not line.lstrip().startswith("#")]
    return [c.strip() for c in re.split(r"\n(?=curl )", "\n".join(lines)) if c.strip().startswith("curl")]


def test_readme_seed_calls_work_as_written(server, stack):
    calls = readme_curl_calls()
    assert len(calls) == 2
    since = end_offsets(stack.kafka_bootstrap, stack.topic("t1"))
    answers = []
    for call in calls:
        command = call.replace("http://localhost:8000", server.url) + " -s -w '\\n%{http_code}'"
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
        body, status = out.rsplit("\n", 1)
        answers.append((int(status), json.loads(body)))
    (first_status, first), (second_status, second) = answers
    assert first_status == 202 and first["status"] == "submitted" and first["metadata"]["window"] == "t1"
    assert first["message"] == "Transaction queued for processing" and first["transaction_id"] == "txn_001"
    assert second_status == 200 and second["status"] == "deduped"
    assert second["message"] == "Transaction already processed"
    assert second["metadata"]["original_batch"] == first["metadata"]["batch"]
    records = [
        r
        for r in read_topic(stack.kafka_bootstrap, stack.topic("t1"), since=since)
        if json.loads(r.value())["partner"] == server.partner
    ]
    assert len(records) == 1 and headers_of(records[0])["idempotency-key"] == b"idemp_key_101"


async def test_replays_are_identical_from_every_worker(server, unique):
    body = transaction(unique)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post(URL, json=body)).status_code == 202

    async def one_replay() -> bytes:
        # a fresh connection each time, so Granian spreads them over its workers
        async with httpx.AsyncClient(base_url=server.url) as fresh:
            response = await fresh.post(URL, json=body)
            assert response.status_code == 200 and response.headers["idempotent-replayed"] == "true"
            return response.content

    replays = await asyncio.gather(*(one_replay() for _ in range(40)))
    assert len(set(replays)) == 1


async def test_100_concurrent_identical_requests_over_many_connections(server, stack, unique):
    body = json.dumps(transaction(unique))
    since = end_offsets(stack.kafka_bootstrap, stack.topic("t1"))
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post(URL, content=body, headers={"content-type": "application/json"}) for _ in range(100))
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 1 and set(statuses) <= {200, 202, 409}, statuses
    records = [
        r
        for r in read_topic(stack.kafka_bootstrap, stack.topic("t1"), since=since)
        if headers_of(r).get("ce_subject") == f"txn_{unique}".encode()
    ]
    assert len(records) == 1


async def chunks_of(raw: bytes, size: int):
    """A body sent in pieces, without Content-Length (Transfer-Encoding: chunked)."""
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def chunks(raw: bytes):
    return chunks_of(raw, 50)


async def test_chunked_bulk_request_is_taken_by_the_general_route(server, stack, unique):
    raw = ("[" + ",".join(json.dumps(transaction(f"{unique}{i}")) for i in range(3)) + "]").encode()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.post(BULK, content=chunks(raw), headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        assert [item["status"] for item in response.json()["results"]] == [202, 202, 202]
        # over GATEWAY_BULK_MAX_BODY_BYTES (2 MiB), with no Content-Length to refuse it by
        huge = b"[" + b" " * 2_200_000 + b"]"
        too_large = await client.post(
            BULK, content=chunks_of(huge, 65_536), headers={"content-type": "application/json"}
        )
        assert too_large.status_code == 413, too_large.text
        assert too_large.json()["detail"] == "the body is larger than GATEWAY_BULK_MAX_BODY_BYTES"


async def test_chunked_body_is_taken_by_the_general_route(server, stack, unique):
    # the fast lane takes only bodies of declared length; this one goes through Litestar's route
    since = end_offsets(stack.kafka_bootstrap, stack.topic("t1"))
    raw = json.dumps(transaction(unique)).encode()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.post(URL, content=chunks(raw), headers={"content-type": "application/json"})
        assert response.status_code == 202, response.text
        assert response.headers["x-request-id"] and "kafka;dur=" in response.headers["server-timing"]
        replay = await client.post(URL, content=raw, headers={"content-type": "application/json"})
        assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    records = [
        r for r in read_topic(stack.kafka_bootstrap, stack.topic("t1"), since) if f"txn_{unique}".encode() in r.value()
    ]
    assert len(records) == 1
