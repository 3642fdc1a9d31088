"""Two gateway processes whose clocks differ by 8 s (one runs under faketime) share one Redis and one
Kafka: a delivery in doubt on the slow one is retried on the other, and the log still decides. A
reservation's age is Redis's, never a gateway's own, and the resolver reads the log from far enough
back to find a record stamped by a slow clock: never a release of a record that is then written."""

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from tests.conftest import KAFKA_PIDFILE, transaction
from tests.e2e.conftest import server_env
from tests.servers import Server

URL = "/api/v1/transactions/"
SKEW_S = 8


def _post(server: Server, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.url + URL, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def skewed(stack, tmp_path):
    """Gateway `slow` with its clock 8 s behind the machine's (and Redis's), gateway `fast` on it."""
    if shutil.which("faketime") is None:
        pytest.fail("faketime is needed (deploy/test.sh installs it from apt)", pytrace=False)
    partner = f"skew-{uuid.uuid4().hex[:8]}"

    def start(name: str, prefix: tuple[str, ...]) -> Server:
        env = server_env(
            stack,
            tmp_path / name,
            GATEWAY_PARTNER=partner,
            GATEWAY_DELIVERY_TIMEOUT_MS="2000",
            GATEWAY_IN_DOUBT_MARGIN_MS="1000",
        )
        (tmp_path / name).mkdir()
        return Server(env, workers=1, prefix=prefix)

    # both at once: a gateway under faketime takes several seconds more to start than one without
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(start, "slow", ("faketime", "-f", f"-{SKEW_S}s")), pool.submit(start, "fast", ())]
    servers = [future.result() for future in starting if future.exception() is None]
    try:
        for future in starting:
            future.result()  # a server that did not start fails the test, once the other is stopped below
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_doubt_is_settled_by_the_log_whatever_the_gateways_clocks_say(stack, skewed, log, unique):
    slow, fast = skewed
    for server, name in ((slow, "warm-slow"), (fast, "warm-fast")):
        status, answer = _post(server, transaction(f"{unique}-{name}"))
        assert status == 202, answer
        behind = time.time() - datetime.fromisoformat(answer["metadata"]["accepted_at"]).timestamp()
        assert (SKEW_S - 2 < behind < SKEW_S + 2) if server is slow else (abs(behind) < 2), (server.url, behind)
    if not KAFKA_PIDFILE.exists():
        pytest.fail("this test pauses Kafka, so it needs the local stack's broker (deploy/kafka.sh)", pytrace=False)
    broker = int(KAFKA_PIDFILE.read_text())
    body = transaction(unique)
    statuses: list[int] = []
    os.kill(broker, signal.SIGSTOP)
    try:
        # the slow gateway's delivery goes in doubt: its record may sit in the frozen broker's socket
        sent_at = time.time()
        status, answer = _post(slow, body)
        assert status == 503, answer
        frozen_until = time.monotonic() + 6  # past the in-doubt horizon (3.5 s) as Redis counts it
        while time.monotonic() < frozen_until:
            status, answer = _post(fast, body)
            statuses.append(status)
            assert status == 409, answer  # never released on a guess, whoever's clock is ahead
            time.sleep(0.5)
    finally:
        os.kill(broker, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while status not in (200, 202):
        assert time.monotonic() < deadline, statuses
        time.sleep(0.5)
        status, answer = _post(fast, body)
        statuses.append(status)
        assert status in (200, 202, 409, 503), answer
    records = log.records(body["transaction_id"])
    assert len(records) == 1, statuses  # never a second record of one transaction
    assert (answer["metadata"]["partition"], answer["metadata"]["offset"]) == (
        records[0].partition(),
        records[0].offset(),
    )
    _, stamped_ms = records[0].timestamp()
    if status == 200:  # written while in doubt, and found in the log
        assert answer["status"] == "deduped"
        # stamped by the slow clock when the slow gateway produced it: 8 s before the reservation's Redis
        # time, outside a scan that would start only 5 s before it
        assert stamped_ms / 1000 < sent_at - SKEW_S + 2, (stamped_ms, sent_at)
