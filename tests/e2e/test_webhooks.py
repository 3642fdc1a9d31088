"""Webhooks end to end, with real receivers on loopback: transactions submitted over HTTP to a gateway, a
processor folding them into PostgreSQL on a fixed clock (rtgs, open: batched, then settled at the next
step) and the deliverer (`python -m processor deliver`) sending each subscribed partner its events,
signed. The receivers answer as they are told: 2xx, 500, too late, or not at all (closed).

Every partner of the module has a receiver of its own; the deliverer retries every 0.3 s, times out
after 0.5 s to connect and 1 s to answer, opens a partner's breaker after 3 failures in a row."""

import http.server
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from gateway.partners.registry import new_key
from settlement.webhooks import new_secret
from tests.conftest import transaction
from tests.e2e.conftest import server_env
from tests.servers import Server, ServerProcess, free_port

FIXED = "2026-12-01T12:00:00Z"  # a Tuesday at noon in London: rtgs is open for GBP
PARTNERS = ("fine", "flaky", "dead", "killed", "cut-off")
TRANSACTION_EVENTS = '["transaction.batched", "transaction.settled"]'


class Received(NamedTuple):
    at: float
    headers: dict[str, str]
    body: bytes
    answered: int | None  # the status it was answered with; None: held until the deliverer gave up


class Receiver:
    """An HTTP receiver on a loopback port of its own. Each request takes the next of `plan` (then
    "ok"): "ok" answers 204, "500" answers 500, "hang" holds the request past the deliverer's timeout.
    down() closes the port (connections refused) and up() opens it again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.plan: list[str] = []
        self.received: list[Received] = []
        self.arrived = threading.Event()  # set on every request
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/settlement"

    def up(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver._lock:
                    action = receiver.plan.pop(0) if receiver.plan else "ok"
                headers = {k.lower(): v for k, v in self.headers.items()}
                if action == "hang":
                    receiver._record(Received(time.time(), headers, body, None))
                    time.sleep(2.0)
                    return
                status = 500 if action == "500" else 204
                receiver._record(Received(time.time(), headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)
        self.arrived.set()

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in the order they arrived."""
        with self._lock:
            return [r for r in self.received if r.answered == 204]


class Setup(NamedTuple):
    env: dict[str, str]
    gateway: Server
    keys: dict[str, str]  # role -> API key
    ids: dict[str, str]  # role -> partner id
    secrets: dict[str, str]  # role -> webhook secret
    receivers: dict[str, Receiver]
    logs: Path
    running: dict[str, ServerProcess]  # the processor and the deliverer

    def submit(self, role: str, count: int) -> list[str]:
        """`count` rtgs transactions of the partner over HTTP; their ids."""
        ids = []
        for _ in range(count):
            body = transaction(uuid.uuid4().hex[:12], settlement_window="rtgs", source_currency="GBP")
            body["destination_currency"] = "GBP"
            answer = httpx.post(
                f"{self.gateway.url}/api/v1/transactions/",
                json=body,
                headers={"authorization": f"Bearer {self.keys[role]}"},
                timeout=10,
            )
            assert answer.status_code == 202, answer.text
            ids.append(body["transaction_id"])
        return ids

    def deliverer(self, name: str = "deliverer") -> ServerProcess:
        port = free_port()
        process = ServerProcess(
            name,
            [sys.executable, "-m", "processor", "deliver"],
            {**self.env, "PROCESSOR_DELIVER_METRICS_PORT": str(port)},
            self.logs / "deliverer.log",
            append=True,
        )
        process.wait_ready(f"http://127.0.0.1:{port}/ready")
        process.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
        return process

    def outbox(self, role: str) -> list[tuple]:
        with psycopg.connect(self.env["GATEWAY_DATABASE_URL"], autocommit=True) as conn:
            conn.execute(f"SET search_path TO {self.env['GATEWAY_DATABASE_SCHEMA']}")
            return conn.execute(
                "SELECT event_id, event_type, subject, state, attempts, recorded_at FROM webhook_events"
                " WHERE partner = %s ORDER BY sequence",
                (self.ids[role],),
            ).fetchall()


@pytest.fixture(scope="module")
def webhooks(stack, tmp_path_factory) -> Iterator[Setup]:
    logs = tmp_path_factory.mktemp("webhooks")
    tag = uuid.uuid4().hex[:8]
    receivers = {role: Receiver() for role in PARTNERS}
    keys, ids, secrets, tables = {}, {}, {}, []
    for role in PARTNERS:
        key, digest = new_key()
        keys[role], ids[role], secrets[role] = key, f"{role}-{tag}", new_secret()
        tables.append(
            f'[partners.{ids[role]}]\nkeys = [{{ id = "k1", sha256 = "{digest}" }}]\n'
            f'webhook = {{ url = "{receivers[role].url}", secret = "{secrets[role]}",'
            f" events = {TRANSACTION_EVENTS} }}\n"
        )
    registry = logs / "partners.toml"
    registry.write_text("\n".join(tables))
    env = server_env(
        stack,
        logs,
        GATEWAY_PARTNERS_FILE=str(registry),
        GATEWAY_FIXED_TIME=FIXED,
        GATEWAY_TOPIC_PREFIX=f"hooks-{tag}.",
        GATEWAY_DATABASE_SCHEMA=f"hooks_{tag}",
        PROCESSOR_GROUP=f"hooks-{tag}",
        PROCESSOR_TICK_SECONDS="0.2",
        PROCESSOR_METRICS_PORT=str(free_port()),
        PROCESSOR_WEBHOOK_RETRY_SCHEDULE="0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3",
        PROCESSOR_WEBHOOK_CONNECT_TIMEOUT_SECONDS="0.5",
        PROCESSOR_WEBHOOK_RESPONSE_TIMEOUT_SECONDS="1",
        PROCESSOR_WEBHOOK_BREAKER_FAILURES="3",
        PROCESSOR_WEBHOOK_BREAKER_SECONDS="0.3",
        PROCESSOR_WEBHOOK_POLL_SECONDS="0.1",
    )
    gateway = Server(env, workers=1)
    setup = Setup(env, gateway, keys, ids, secrets, receivers, logs, {})
    try:
        processor = ServerProcess("processor", [sys.executable, "-m", "processor", "run"], env, logs / "processor.log")
        setup.running["processor"] = processor
        processor.wait_ready(f"http://127.0.0.1:{env['PROCESSOR_METRICS_PORT']}/ready")
        setup.running["deliverer"] = setup.deliverer()
        yield setup
    finally:
        for running in setup.running.values():
            running.stop()
        gateway.stop()
        for receiver in receivers.values():
            receiver.down()


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def _events(received: list[Received]) -> list[tuple[str, str, str]]:
    """(webhook-id, type, transaction id) of each request."""
    out = []
    for r in received:
        body = json.loads(r.body)
        out.append((r.headers["webhook-id"], body["type"], body["data"]["transaction_id"]))
    return out


def _in_order_once_each(received: list[Received], ids: list[str]) -> None:
    """Each transaction's batched, then its settled, delivered; a repeat only ever with the same
    webhook-id and the same body."""
    bodies: dict[str, bytes] = {}
    for r in received:
        assert bodies.setdefault(r.headers["webhook-id"], r.body) == r.body  # a repeat is the same delivery
    delivered = _events(received)
    for txn in ids:
        kinds = [kind for _, kind, t in delivered if t == txn]
        first = list(dict.fromkeys(kinds))  # each kind's first delivery, in order
        assert first == ["transaction.batched", "transaction.settled"], (txn, kinds)
    distinct = {(event_id, kind, t) for event_id, kind, t in delivered}
    assert len(distinct) == 2 * len(ids) == len({event_id for event_id, *_ in distinct})


def test_a_submission_is_delivered_batched_then_settled_signed_as_standard_webhooks_says(webhooks):
    [txn] = webhooks.submit("fine", 1)
    receiver = webhooks.receivers["fine"]
    _wait(lambda: len(receiver.delivered()) >= 2, 30, "batched and settled delivered")
    batched, settled = receiver.delivered()
    verifier = Webhook(webhooks.secrets["fine"])
    for received, kind, status in (
        (batched, "transaction.batched", "batched"),
        (settled, "transaction.settled", "settled"),
    ):
        body = verifier.verify(received.body, received.headers)  # raises unless the v1 signature is the secret's
        assert (body["type"], body["data"]["transaction_id"], body["data"]["status"]) == (kind, txn, status)
        assert received.headers["content-type"] == "application/json"
        assert abs(int(received.headers["webhook-timestamp"]) - received.at) < 5  # the attempt's own time
    assert batched.headers["webhook-id"] != settled.headers["webhook-id"]
    # the body is the status API's answer at that change (the settled one is the answer now)
    now = httpx.get(
        f"{webhooks.gateway.url}/api/v1/transactions/{txn}",
        headers={"authorization": f"Bearer {webhooks.keys['fine']}"},
        timeout=10,
    ).json()
    assert json.loads(settled.body)["data"] == now
    # a signature under another secret, or of another body, is refused by the partner's check
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(settled.body, settled.headers)
    with pytest.raises(Exception, match="signature"):
        verifier.verify(settled.body.replace(b"settled", b"batched", 1), settled.headers)
    assert [row[3] for row in webhooks.outbox("fine")] == ["delivered", "delivered"]


def test_a_receiver_that_fails_times_out_and_is_down_still_gets_every_event_in_order(webhooks):
    receiver = webhooks.receivers["flaky"]
    receiver.plan = ["500", "500", "hang", "500", "hang"]
    ids = webhooks.submit("flaky", 6)
    _wait(lambda: not receiver.plan, 60, "the receiver's failures used up")
    receiver.down()  # down for several attempts
    count = len(receiver.received)
    time.sleep(2.0)
    assert len(receiver.received) == count
    receiver.up()
    _wait(lambda: len({r.headers["webhook-id"] for r in receiver.delivered()}) >= 12, 60, "every event delivered")
    _in_order_once_each(receiver.delivered(), ids)
    outbox = webhooks.outbox("flaky")
    assert {row[3] for row in outbox} == {"delivered"} and len(outbox) == 12
    assert max(row[4] for row in outbox) > 1  # some took several attempts


def test_a_dead_endpoint_does_not_delay_another_partner_s_deliveries(webhooks):
    dead, fine = webhooks.receivers["dead"], webhooks.receivers["fine"]
    dead.plan = ["hang"] * 200  # every request held past the timeout: its partner's slots stay taken
    webhooks.submit("dead", 8)
    _wait(lambda: len(dead.received) >= 2, 30, "the dead endpoint in use")
    before = len(fine.delivered())
    ids = webhooks.submit("fine", 5)
    _wait(lambda: len(fine.delivered()) >= before + 10, 30, "the other partner's events delivered")
    recorded = {(subject, kind): at.timestamp() for _, kind, subject, _, _, at in webhooks.outbox("fine")}
    delays = []
    for received in fine.delivered()[before:]:
        body = json.loads(received.body)
        delays.append(received.at - recorded[(f"transactions/{body['data']['transaction_id']}", body["type"])])
    assert max(delays) < 1.0, sorted(delays)
    _in_order_once_each(fine.delivered()[before:], ids)
    dead.plan = []
    dead.down()


def test_the_deliverer_killed_mid_delivery_loses_nothing_and_sends_it_again_with_the_same_id(webhooks):
    receiver = webhooks.receivers["killed"]
    receiver.plan = ["hang"]  # the first request is held: the deliverer is killed while it waits
    receiver.arrived.clear()
    [txn] = webhooks.submit("killed", 1)
    assert receiver.arrived.wait(30)
    [held] = receiver.received
    webhooks.running["deliverer"].process.send_signal(signal.SIGKILL)
    webhooks.running["deliverer"].stop()  # reaped
    webhooks.running["deliverer"] = webhooks.deliverer("deliverer after the kill")
    _wait(lambda: len(receiver.delivered()) >= 2, 30, "both events delivered after the restart")
    delivered = receiver.delivered()
    assert delivered[0].headers["webhook-id"] == held.headers["webhook-id"]  # the one held, again, same id
    assert delivered[0].body == held.body
    _in_order_once_each(delivered, [txn])


def test_postgres_killed_mid_delivery_the_deliverer_waits_and_records_every_attempt_once_it_is_back(
    webhooks, postgres_server
):
    receiver = webhooks.receivers["cut-off"]
    receiver.plan = ["hang"]  # an attempt under way when PostgreSQL goes: it ends while nothing can record it
    receiver.arrived.clear()
    ready = webhooks.running["deliverer"].metrics_url.replace("/metrics", "/ready")
    ids = webhooks.submit("cut-off", 3)
    assert receiver.arrived.wait(30)
    postgres_server.kill()
    _wait(lambda: httpx.get(ready, timeout=5).status_code == 503, 15, "the deliverer not ready without PostgreSQL")
    time.sleep(1.5)  # the held attempt times out meanwhile: unrecorded until PostgreSQL answers
    postgres_server.start()
    _wait(lambda: len({r.headers["webhook-id"] for r in receiver.delivered()}) >= 6, 60, "every event delivered")
    _in_order_once_each(receiver.delivered(), ids)
    _wait(lambda: {row[3] for row in webhooks.outbox("cut-off")} == {"delivered"}, 30, "every delivery recorded")
    assert httpx.get(ready, timeout=5).status_code == 200


def test_operators_see_deliveries_by_outcome_attempts_backlog_and_delay(webhooks):
    """Runs last: what the module's deliveries left in the metrics of the deliverer now running."""
    webhooks.submit("fine", 2)
    _wait(lambda: all(row[3] == "delivered" for row in webhooks.outbox("fine")), 30, "delivered")
    time.sleep(6)  # the backlog is counted every 5 s
    text = httpx.get(webhooks.running["deliverer"].metrics_url, timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    fine = webhooks.ids["fine"]
    assert samples[f'settlement_webhook_deliveries_total{{outcome="delivered",partner="{fine}"}}'] >= 4
    assert samples[f'settlement_webhook_attempts_total{{outcome="delivered",partner="{fine}"}}'] >= 4
    assert samples[f'settlement_webhook_backlog{{partner="{fine}"}}'] == 0
    assert samples["settlement_webhook_delivery_delay_seconds_count"] >= 4
    assert samples["settlement_webhook_attempts_per_delivery_count"] >= 4
    assert samples["settlement_webhook_ready"] == 1
