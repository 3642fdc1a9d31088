"""The fault suite: the real gateway and the settlement processor under steady load while their
dependencies die, then an audit of Kafka and of the processor's state.

    python -m tests.faults.chaos [--hold SECONDS] [--connections N] [--faults a,b] [--out DIR]

Many connections submit new transactions the way a careful partner does: a 503 or an in-flight 409
is retried with the same body after `Retry-After`, a lost connection or a timeout likewise, until a
202 or 200 settles it; now and then an acknowledged transaction is sent again (it must answer 200)
or its id is sent under a new idempotency key (it must answer 409). Meanwhile each fault in turn is
injected, held, and taken back with the project's own scripts: SIGKILL and SIGSTOP/SIGCONT of the
Kafka broker, SIGKILL of PostgreSQL with all its backends, SIGKILL of Redis, SIGKILL of a Granian
worker, and through Toxiproxy latency, resets and a dead peer between the gateway and Redis or Kafka.

The settlement processor (`python -m processor run`, tests/faults/settlement.py) folds everything the
gateway accepts for the whole run, on the run's own topics (`chaos-<tag>.rtgs|t0|t1`), into a schema
and consumer group of the run's own; it goes straight to Kafka and PostgreSQL, so the broker's and the
database's faults reach it, the Toxiproxy faults do not. It is never restarted.

Then every window topic is read from the start, and for each fault the report gives: acknowledged
(transactions answered 202 or 200), lost (acknowledged, not in Kafka at the coordinates given),
re-accepted (a second 202 for an acknowledged key or transaction id), duplicate records (one
transaction more than once in Kafka), unexpected answers (5xx other than 503 + Retry-After, any
status a submission must never get), hangs (answers slower than the delivery timeout plus one
second), the seconds until /ready answered 200 again after the dependency was back; and for the
processor: not folded (acknowledged, not in its `transactions` at the coordinates given nor recorded
as a duplicate there), whether it is still the same live process, the seconds until its /ready
answered 200 again after the dependency was back (target: 10), the seconds until it had folded
everything the log held at that moment (its lag then back to 0), the longest a transaction accepted
after the dependency's return (until the next fault) waited to be folded (a processor that says it
is ready but does not fold shows there), and what its /ready answered during the fault. After the
load, the processor must catch up (lag 0), its state must keep the invariants of DESIGN section 8
(checked again after a close-out: a second processor whose clock is 8 days ahead closes and settles
every batch), it must stop cleanly on SIGTERM, and `python -m processor replay` must rebuild the
same digest. Any failure fails the run (`failures`).

Needs the local stack (deploy/stack.sh) and Toxiproxy (deploy/toxiproxy.sh); `make chaos` and the
short suite in `make test` (tests/faults/test_faults.py) start what is missing.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.settlement import (
    READY_TARGET,
    SettlementProcessor,
    State,
    audit_ok,
    audit_state,
    fold_delays,
    future_instant,
    invariants,
    invariants_hold,
    log_ends,
    replay,
)
from tests.kafka_log import read_topic
from tests.processes import stop
from tests.stack import database_url
from tests.toxiproxy import Toxiproxy

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
WINDOWS = ("rtgs", "t0", "t1")
STEADY = ("warm-up", "before-", "after")  # the phases without a fault (prefixes)
STEADY_ROW = "steady load between faults"  # the report's row for all of them
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD")


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def is_fault(phase: str) -> bool:
    return not phase.startswith(STEADY) and phase != STEADY_ROW


# -- the partner's HTTP client ----------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; any failure closes it and the next request reconnects."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        try:
            async with asyncio.timeout(timeout):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
                assert self._reader is not None
                self._writer.write(
                    b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
                )
                head = await self._reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                payload = await self._reader.readexactly(int(headers["content-length"]))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None


# -- what happened ----------------------------------------------------------------------------------


@dataclass
class Answer:
    phase: str
    status: int
    seconds: float
    retry_after: bool
    problem: str
    sent_at: float = 0.0  # time.monotonic() when the request went out


@dataclass
class Acceptance:
    """A 202 or 200 for one transaction, with where the answer says the record is."""

    key: str
    status: int
    topic: str
    partition: int
    offset: int
    at: float = 0.0  # time.monotonic() when it was answered


@dataclass
class Ledger:
    """Everything the partners saw, per transaction and per answer."""

    answers: list[Answer] = field(default_factory=list)
    phase_of: dict[str, str] = field(default_factory=dict)  # transaction id -> phase it was first sent in
    accepted: dict[str, list[Acceptance]] = field(default_factory=lambda: defaultdict(list))
    refusals: Counter = field(default_factory=Counter)
    unsettled: set[str] = field(default_factory=set)
    connection_errors: Counter = field(default_factory=Counter)


class Partner:
    """Many connections submitting transactions as a careful partner does (see the module)."""

    def __init__(self, port: int, partner: str, connections: int, give_up_seconds: float, hang_seconds: float) -> None:
        self.port = port
        self.partner = partner
        self.connections = connections
        self.give_up = give_up_seconds
        self.timeout = hang_seconds + 5  # a client waits longer than a hang, so a hang is measured, not cut
        self.ledger = Ledger()
        self.phase = "warm-up"
        self.sending = True
        self.retrying: set[str] = set()  # transactions told to come back, not settled yet
        self._sequence = 0

    def _transaction(self) -> tuple[str, dict]:
        self._sequence += 1
        txn = f"{self.phase}-{self._sequence}-{uuid.uuid4().hex[:6]}"
        window = random.choice((*WINDOWS, None))
        body = {
            "transaction_id": txn,
            "amount": f"{random.randint(1, 99999)}.{random.randint(0, 99):02d}",
            "source_currency": "USD",
            "destination_currency": random.choice(CURRENCIES),
            "source_account": f"acct-{random.randint(1, 500)}",
            "destination_account": "acct-dest",
            "counterparty_id": "cparty-chaos",
            "idempotency_key": f"key-{txn}",
        }
        if window is not None:
            body["settlement_window"] = window
        return txn, body

    def _in_fault(self, txn: str) -> None:
        """A transaction sent or answered while a fault is on belongs to that fault."""
        if is_fault(self.phase) and not is_fault(self.ledger.phase_of[txn]):
            self.ledger.phase_of[txn] = self.phase

    async def _send(self, connection: Connection, body: dict) -> tuple[int, dict[str, str], dict]:
        self._in_fault(body["transaction_id"])
        started = time.monotonic()
        try:
            status, headers, payload = await connection.post(
                "/api/v1/transactions/", json.dumps(body).encode(), self.timeout
            )
        finally:
            self._in_fault(body["transaction_id"])  # sent before the fault, answered during it
        document = json.loads(payload) if payload else {}
        problem = document.get("type", "").rsplit("/", 1)[-1] if status >= 400 else ""
        self.ledger.answers.append(
            Answer(self.phase, status, time.monotonic() - started, "retry-after" in headers, problem, started)
        )
        return status, headers, document

    async def settle(self, connection: Connection, txn: str, body: dict) -> None:
        """Submit until a 202 or 200 (or a refusal a retry cannot change); give up after `give_up`."""
        deadline = time.monotonic() + self.give_up
        try:
            await self._settle(connection, txn, body, deadline)
        finally:
            self.retrying.discard(txn)

    async def _settle(self, connection: Connection, txn: str, body: dict, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                status, headers, document = await self._send(connection, body)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, KeyError, ValueError) as exc:
                self.ledger.connection_errors[self.phase] += 1
                self.ledger.answers.append(Answer(self.phase, 0, 0.0, False, type(exc).__name__, time.monotonic()))
                self.retrying.add(txn)
                await asyncio.sleep(0.5)
                continue
            if status in (200, 202):
                meta = document["metadata"]
                self.ledger.accepted[txn].append(
                    Acceptance(
                        body["idempotency_key"],
                        status,
                        meta["topic"],
                        meta["partition"],
                        meta["offset"],
                        time.monotonic(),
                    )
                )
                return
            if status == 503 or (status == 409 and document.get("type", "").endswith("request-in-flight")):
                self.retrying.add(txn)
                await asyncio.sleep(float(headers.get("retry-after", "1")))
                continue
            self.ledger.refusals[(self.phase, status, document.get("type", ""))] += 1
            return
        self.ledger.unsettled.add(txn)

    async def _connection_loop(self, index: int) -> None:
        connection = Connection(self.port)
        try:
            while self.sending:
                txn, body = self._transaction()
                self.ledger.phase_of[txn] = self.phase
                await self.settle(connection, txn, body)
                if not self.ledger.accepted.get(txn):
                    continue
                roll = random.random()
                if roll < 0.1:  # the exact resubmission: must answer 200, never a second 202
                    await self.settle(connection, txn, body)
                elif roll < 0.15:  # the same transaction id under a new key: must answer 409
                    await self.settle(connection, txn, {**body, "idempotency_key": f"again-{txn}"})
        finally:
            connection.close()

    async def settled(self, limit: float) -> float:
        """Wait until no transaction is being retried (at most `limit` seconds); return the seconds waited."""
        started = time.monotonic()
        while self.retrying and time.monotonic() - started < limit:
            await asyncio.sleep(0.1)
        return round(time.monotonic() - started, 2)

    async def run(self, until: asyncio.Event) -> None:
        loops = [asyncio.create_task(self._connection_loop(i)) for i in range(self.connections)]
        await until.wait()
        self.sending = False  # no new transactions; the ones in progress settle
        await asyncio.gather(*loops)


# -- the stack and its faults -----------------------------------------------------------------------


def _script(name: str, *command: str) -> str:
    done = subprocess.run([str(ROOT / "deploy" / f"{name}.sh"), *command], capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"deploy/{name}.sh {' '.join(command)} failed: {done.stderr[-2000:]}")
    return done.stdout


def _pid(name: str) -> int:
    return int((STACK_DIR / name / f"{name}.pid").read_text())


def gateway_workers(gateway_pid: int) -> list[int]:
    """The Granian worker processes of a gateway (its children)."""
    children: list[int] = []
    for task in Path(f"/proc/{gateway_pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(pid) for pid in text)
    return sorted(children)


@dataclass
class Fault:
    name: str
    what: str
    inject: Callable[[], object]
    recover: Callable[[], object]


def kill_postgres() -> str:
    """SIGKILL the PostgreSQL server and every backend of it at once (a crash: nothing flushed, no goodbye
    to clients; the next start recovers from the write-ahead log): the postmaster's children are collected
    before anything is killed. Returns once the server is gone, naming what it killed."""
    postmaster = int((STACK_DIR / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    found = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True, timeout=10)
    children = [int(pid) for pid in found.stdout.split()]
    for pid in [postmaster, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline and subprocess.run([str(ROOT / "deploy" / "postgres.sh"), "status"]).returncode == 0
    ):
        time.sleep(0.05)
    return f"postmaster {postmaster} and its {len(children)} children"


def faults(toxiproxy: Toxiproxy, gateway_pid: int, restarts: list[str], killed: dict[str, str]) -> list[Fault]:
    """Every fault the suite injects, in the order it runs them. A toxic whose removal hung Toxiproxy
    (tests/toxiproxy.py, Toxiproxy.reset) is lifted by restarting it, which resets every proxied connection
    as well; the proxy's name is then appended to `restarts`, so the report can say so. `killed` says, per
    fault, what it killed where that is more than one process."""

    def kill_database() -> None:
        killed["postgres-sigkill"] = kill_postgres()

    def kill_worker() -> None:
        os.kill(random.choice(gateway_workers(gateway_pid)), signal.SIGKILL)

    def toxic(proxy: str, kind: str, **attributes: int) -> tuple[Callable[[], None], Callable[[], None]]:
        def inject() -> None:
            toxiproxy.add_toxic(proxy, kind, attributes, stream="downstream")
            toxiproxy.add_toxic(proxy, kind, attributes, stream="upstream")

        def recover() -> None:
            if toxiproxy.reset():
                print(f"[chaos] Toxiproxy hung removing the {proxy} {kind} toxic: restarted it", file=sys.stderr)
                restarts.append(proxy)

        return inject, recover

    kafka_pid = lambda: _pid("kafka")  # noqa: E731 (read when the fault runs: a restart changes it)
    return [
        Fault("kafka-sigkill", "SIGKILL the broker, restart it", lambda: os.kill(kafka_pid(), signal.SIGKILL),
              lambda: _script("kafka", "start")),
        Fault("kafka-sigstop", "SIGSTOP the broker, SIGCONT it", lambda: stop(kafka_pid()),
              lambda: os.kill(kafka_pid(), signal.SIGCONT)),
        Fault("postgres-sigkill", "SIGKILL PostgreSQL and all its backends at once, restart it", kill_database,
              lambda: _script("postgres", "start")),
        Fault("redis-sigkill", "SIGKILL Redis, restart it", lambda: os.kill(_pid("redis"), signal.SIGKILL),
              lambda: _script("redis", "start")),
        Fault("worker-sigkill", "SIGKILL a Granian worker (respawned)", kill_worker, lambda: None),
        Fault("redis-latency", "Toxiproxy: +300 ms each way to Redis",
              *toxic("redis", "latency", latency=300, jitter=100)),
        Fault("redis-reset", "Toxiproxy: Redis connections reset", *toxic("redis", "reset_peer", timeout=0)),
        Fault("redis-dead-peer", "Toxiproxy: Redis stops answering", *toxic("redis", "timeout", timeout=0)),
        Fault("kafka-latency", "Toxiproxy: +300 ms each way to Kafka",
              *toxic("kafka", "latency", latency=300, jitter=100)),
        Fault("kafka-reset", "Toxiproxy: Kafka connections reset", *toxic("kafka", "reset_peer", timeout=0)),
        Fault("kafka-dead-peer", "Toxiproxy: Kafka stops answering", *toxic("kafka", "timeout", timeout=0)),
    ]  # fmt: skip


def busiest_leader(bootstrap: str, topic_prefix: str) -> tuple[int, str]:
    """The broker leading the window partition with the most records, and that partition's name."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-probe", "enable.auto.commit": False})
    try:
        sizes = []
        for window in WINDOWS:
            for number, partition in topics[topic_prefix + window].partitions.items():
                _, high = consumer.get_watermark_offsets(TopicPartition(topic_prefix + window, number), timeout=10)
                sizes.append((high, partition.leader, f"{topic_prefix}{window}[{number}]"))
    finally:
        consumer.close()
    _, leader, name = max(sizes)
    return leader, name


def cluster_faults(bootstrap: str, topic_prefix: str, killed: dict[str, str]) -> list[Fault]:
    """The cluster's faults (STACK=cluster): a broker and a Redis master die under load and stay dead
    for the hold, and the cluster must carry on without them; then each is started again and rejoins.
    `killed` says, per fault, what it killed."""
    victims: dict[str, str] = {}  # script -> the node it killed

    def kill(script: str, fault: str, choose: Callable[[], tuple[str, str]]) -> Callable[[], None]:
        def inject() -> None:
            victims[script], killed[fault] = choose()
            _script(script, "kill-node", victims[script])

        return inject

    def leader() -> tuple[str, str]:
        node, partition = busiest_leader(bootstrap, topic_prefix)
        return str(node), f"Kafka node {node}, leader of {partition}"

    def master() -> tuple[str, str]:
        port = _script("redis-cluster", "masters").split()[0]
        return port, f"Redis master 127.0.0.1:{port}"

    def restart(script: str) -> Callable[[], object]:
        return lambda: _script(script, "start-node", victims[script])

    return [
        Fault("kafka-leader-sigkill", "SIGKILL the leader of the busiest partition (RF 3, min ISR 2), restart it",
              kill("kafka-cluster", "kafka-leader-sigkill", leader), restart("kafka-cluster")),
        Fault("redis-master-sigkill", "SIGKILL a Redis master (its replica takes over), restart it as a replica",
              kill("redis-cluster", "redis-master-sigkill", master), restart("redis-cluster")),
    ]  # fmt: skip


def p99_recovery(answers: list[Answer], before: str, since: float, until: float) -> dict[str, Any]:
    """How the p99 of answers moved after a fault began at `since`, by the second they were sent: the
    steady p99 of phase `before`, the p99 of each second's trailing 3-second window up to `until`, the
    worst of them, and the seconds until every later window is back under twice the steady p99 (or under
    it plus 50 ms); 3-second windows hold enough answers that one slow request is not the p99. A window
    in which no request was sent (every connection waiting) counts as slow, shown as None."""

    def p99(seconds: list[float]) -> float | None:
        return sorted(seconds)[max(0, -(-len(seconds) * 99 // 100) - 1)] if seconds else None

    steady = p99([a.seconds for a in answers if a.phase == before and a.status]) or 0.0
    bound = max(2 * steady, steady + 0.05)
    per_second: dict[int, list[float]] = defaultdict(list)
    for a in answers:
        if a.status and since <= a.sent_at < until:
            per_second[int(a.sent_at - since)].append(a.seconds)
    last = int(until - since)
    windows = [p99([v for s in range(max(0, end - 2), end + 1) for v in per_second.get(s, [])]) for end in range(last)]
    back = max((end + 1 for end, value in enumerate(windows) if value is None or value > bound), default=0)
    measured = [value for value in windows if value is not None]
    return {
        "p99_before_ms": round(steady * 1000, 1),
        "p99_by_second_ms": [None if value is None else round(value * 1000, 1) for value in windows],
        "p99_worst_ms": round(max(measured, default=0.0) * 1000, 1),
        "seconds_to_p99": back if back < last else None,
    }


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


async def wait_ready(url: str, limit: float) -> float | None:
    """Seconds until /ready answers 200; None when it did not within `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await asyncio.to_thread(ready, url):
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.2)
    return None


# -- the audit --------------------------------------------------------------------------------------


Coordinates = tuple[str, int, int]  # topic, partition, offset


def read_log(
    partner: str, bootstrap: str, topic_prefix: str, stamps: dict[str, float] | None = None
) -> dict[str, list[Coordinates]]:
    """Every record of `partner` in every window topic, read from the start, by transaction id; and in
    `stamps`, when given, the timestamp (Unix seconds) of each transaction's first record."""
    records: dict[str, list[Coordinates]] = defaultdict(list)
    for window in WINDOWS:
        for record in read_topic(bootstrap, topic_prefix + window):
            try:
                event = json.loads(record.value())
            except ValueError:
                continue  # not an event of the gateway's (another test's record)
            if isinstance(event, dict) and event.get("partner") == partner:
                txn = event["transaction"]["transaction_id"]
                records[txn].append((record.topic(), record.partition(), record.offset()))
                if stamps is not None:
                    stamps[txn] = min(stamps.get(txn, float("inf")), record.timestamp()[1] / 1000)
    return records


def audit(ledger: Ledger, records: dict[str, list[Coordinates]], hang_seconds: float) -> dict[str, dict]:
    """Count, per fault, what the partners were promised against what Kafka holds."""
    counts = ("acknowledged", "lost", "re_accepted", "duplicate_records", "unexpected", "hangs", "unsettled")
    report: dict[str, dict] = defaultdict(lambda: {**dict.fromkeys(counts, 0), "answers": Counter()})
    for txn, phase in ledger.phase_of.items():
        row = report[phase]
        acceptances = ledger.accepted.get(txn, [])
        in_log = records.get(txn, [])
        if acceptances:
            row["acknowledged"] += 1
            if any((a.topic, a.partition, a.offset) not in in_log for a in acceptances):
                row["lost"] += 1
            if sum(a.status == 202 for a in acceptances) > 1:
                row["re_accepted"] += 1
        if len(in_log) > 1:
            row["duplicate_records"] += 1
        if txn in ledger.unsettled:
            row["unsettled"] += 1
    for answer in ledger.answers:
        row = report[answer.phase]
        row["answers"][answer.status] += 1
        expected = answer.status in (0, 200, 202, 409) or (answer.status == 503 and answer.retry_after)
        if not expected:
            row["unexpected"] += 1
        if answer.seconds > hang_seconds:
            row["hangs"] += 1
    for (phase, status, cause), count in ledger.refusals.items():
        # a transaction-id conflict is the expected answer to a second key; anything else is not
        if not (status == 409 and cause.endswith("transaction-id-conflict")):
            report[phase]["unexpected"] += count
    steady = report[STEADY_ROW]
    for phase in [p for p in report if not is_fault(p) and p != STEADY_ROW]:
        for name, value in report.pop(phase).items():
            steady[name] += value
    for row in report.values():
        row["answers"] = {str(k): v for k, v in sorted(row["answers"].items())}
    return dict(report)


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Options:
    hold: float = 4.0  # seconds each fault lasts
    steady: float = 3.0  # seconds of normal load before each fault
    connections: int = 24
    only: tuple[str, ...] = ()
    delivery_timeout_ms: int = 2000
    in_doubt_margin_ms: int = 1000
    replay_timeout: float = 120.0  # seconds `python -m processor replay` may take
    stack: str = "single"  # or "cluster": the cluster's faults, on GATEWAY_REDIS_URL and GATEWAY_KAFKA_BOOTSTRAP


async def run(options: Options, log_path: Path) -> dict:
    """Start a gateway (through Toxiproxy on the single stack) and a settlement processor beside it, run
    every fault under load, audit Kafka and the processor's state; return the report."""
    from tests.servers import Server

    cluster = options.stack == "cluster"
    toxiproxy = None if cluster else Toxiproxy()
    tag = uuid.uuid4().hex[:8]
    partner = f"chaos-{tag}"
    # topics, a schema and a consumer group of the run's own: the fold (and its replay) is the run's alone
    topic_prefix = f"chaos-{tag}."
    schema = f"chaos_{tag}"
    database = database_url()
    if toxiproxy is None:
        bootstrap = os.environ["GATEWAY_KAFKA_BOOTSTRAP"]
        routes = {"GATEWAY_REDIS_URL": os.environ["GATEWAY_REDIS_URL"], "GATEWAY_KAFKA_BOOTSTRAP": bootstrap}
    else:
        toxiproxy.reset()
        bootstrap = f"127.0.0.1:{_port('STACK_KAFKA_PORT', 19092)}"
        routes = {
            "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{_port('STACK_REDIS_PROXY_PORT', 16380)}/0",
            "GATEWAY_KAFKA_BOOTSTRAP": f"127.0.0.1:{_port('STACK_KAFKA_PROXY_PORT', 19095)}",
        }
    shared = {"GATEWAY_TOPIC_PREFIX": topic_prefix, "GATEWAY_DATABASE_URL": database, "GATEWAY_DATABASE_SCHEMA": schema}
    env = {
        **os.environ,
        **routes,
        **shared,
        "GATEWAY_PARTNER": partner,
        "GATEWAY_DELIVERY_TIMEOUT_MS": str(options.delivery_timeout_ms),
        "GATEWAY_IN_DOUBT_MARGIN_MS": str(options.in_doubt_margin_ms),
        "GATEWAY_READY_CACHE_MS": "0",
        "GATEWAY_ACCESS_LOG": "false",
        "E2E_LOG": str(log_path),
        "PROMETHEUS_MULTIPROC_DIR": str(log_path.parent / "metrics"),
    }
    # straight to the broker, not through Toxiproxy
    processor_env = {**os.environ, **shared, "GATEWAY_KAFKA_BOOTSTRAP": bootstrap, "PROCESSOR_GROUP": partner}
    processor_log = log_path.with_name(log_path.name.replace("gateway", "processor"))
    if processor_log == log_path:
        processor_log = log_path.with_suffix(".processor.log")
    topics = [topic_prefix + window for window in WINDOWS]
    state = State(database, schema)
    hang = options.delivery_timeout_ms / 1000 + 1.0
    server = Server(env)  # creates the window topics
    processor: SettlementProcessor | None = None
    try:
        processor = SettlementProcessor(processor_env, processor_log)
        await asyncio.to_thread(processor.started, 60)
    except BaseException:
        server.stop()
        if processor is not None:
            processor.stop()
        raise
    client = Partner(server.port, partner, options.connections, give_up_seconds=120, hang_seconds=hang)
    stop = asyncio.Event()
    load = asyncio.create_task(client.run(stop))
    watching = asyncio.Event()
    watch = asyncio.create_task(processor.watch(watching))
    recovery: dict[str, float | None] = {}
    settle: dict[str, float] = {}  # seconds after /ready until every retried transaction was settled
    killed: dict[str, str] = {}
    injected_at: dict[str, float] = {}
    recovered_at: dict[str, float] = {}
    # Unix seconds from a dependency's return to the next fault (and from the start of the load to the first)
    windows: dict[str, tuple[float, float]] = {STEADY_ROW: (time.time(), float("inf"))}
    restarts: list[str] = []  # a proxy's name each time lifting a toxic took a restart of Toxiproxy
    restarted: set[str] = set()  # the faults that were lifted so
    watched: dict[str, dict[str, Any]] = {}  # the processor through each fault
    catching_up: list[tuple[str, asyncio.Task]] = []  # the fault, until the processor folded the log of its end

    async def caught_up(name: str) -> float | None:
        """Seconds from the dependency's return until the processor had folded everything the log held then."""
        ends = None
        deadline = time.monotonic() + 30
        while ends is None and time.monotonic() < deadline:
            try:
                ends = await asyncio.to_thread(log_ends, bootstrap, topics)
            except Exception as exc:  # the broker just came back: ask again
                print(f"[chaos] {name}: the log's end offsets: {exc}", file=sys.stderr)
                await asyncio.sleep(0.5)
        if ends is None:
            return None
        if await state.caught_up(ends, 120) is None:
            return None
        return round(time.monotonic() - recovered_at[name], 2)

    async def end_of_phase() -> None:
        """The previous fault's catch-up has ended; is the processor still the same live process?"""
        while catching_up:
            name, task = catching_up.pop()
            watched[name]["processor_seconds_to_caught_up"] = await task
            watched[name]["processor_alive"] = processor.alive()

    chosen = (
        faults(toxiproxy, server.process.pid, restarts, killed)
        if toxiproxy
        else cluster_faults(bootstrap, topic_prefix, killed)
    )
    try:
        for fault in chosen:
            if options.only and fault.name not in options.only:
                continue
            client.phase = f"before-{fault.name}"
            if recovery:  # the previous fault's retries settle first, so each fault counts its own
                settle[list(recovery)[-1]] = await client.settled(90)
            await asyncio.sleep(options.steady)
            await end_of_phase()
            client.phase = fault.name
            last = list(windows)[-1]
            windows[last] = (windows[last][0], time.time())
            print(f"[chaos] {fault.name}: {fault.what}", file=sys.stderr, flush=True)
            injected_at[fault.name] = time.monotonic()  # the kill comes at the end of `inject`
            await asyncio.to_thread(fault.inject)
            await asyncio.sleep(options.hold)
            before = len(restarts)
            await asyncio.to_thread(fault.recover)
            recovered_at[fault.name] = back = time.monotonic()
            windows[fault.name] = (time.time(), float("inf"))
            if len(restarts) > before:
                restarted.add(fault.name)
            catching_up.append((fault.name, asyncio.create_task(caught_up(fault.name))))
            recovery[fault.name], ready_in = await asyncio.gather(
                wait_ready(server.url, 60), processor.seconds_to_ready(60)
            )
            watched[fault.name] = {
                "processor_alive": processor.alive(),
                "processor_seconds_to_ready": ready_in,
                "processor_ready_answers": processor.answers(injected_at[fault.name], back),
            }
            if fault.name == "worker-sigkill":  # a replacement worker serves again
                await asyncio.sleep(2)
        client.phase = "after"
        if recovery:
            settle[list(recovery)[-1]] = await client.settled(90)
        await asyncio.sleep(options.steady)
        await end_of_phase()
        last = list(windows)[-1]
        windows[last] = (windows[last][0], time.time())
    except BaseException:
        processor.stop()  # the run failed: no audit, and no processor left behind
        raise
    finally:
        if toxiproxy is None:  # whatever stopped the run, every node runs again
            for script in ("kafka-cluster", "redis-cluster"):
                await asyncio.to_thread(_script, script, "start")
        else:
            with contextlib.suppress(OSError, ValueError):
                os.kill(_pid("kafka"), signal.SIGCONT)  # never leave the broker paused
            toxiproxy.reset()
            if subprocess.run([str(ROOT / "deploy" / "postgres.sh"), "status"]).returncode != 0:
                await asyncio.to_thread(_script, "postgres", "start")
        stop.set()
        await load
        server.stop()
        for _, task in catching_up:
            task.cancel()
        await asyncio.gather(*(task for _, task in catching_up), return_exceptions=True)
        watching.set()
        await watch
        if not processor.alive():
            print(f"[chaos] the processor exited ({processor.exit_status}):\n{processor.log_tail()}", file=sys.stderr)
    print("[chaos] load stopped: the processor folds the rest of the log", file=sys.stderr, flush=True)
    try:
        final = await settle_processor(processor, state, bootstrap, topics)
    finally:
        final["exit_status"] = await asyncio.to_thread(processor.stop)
    stamps: dict[str, float] = {}  # when each transaction's record was stamped (its event time)
    records = read_log(partner, bootstrap, topic_prefix, stamps)
    report = audit(client.ledger, records, hang)
    acknowledged = {
        txn: [(a.topic, a.partition, a.offset) for a in acceptances]
        for txn, acceptances in client.ledger.accepted.items()
    }

    def phase_of(txn: str) -> str:
        phase = client.ledger.phase_of[txn]
        return phase if is_fault(phase) else STEADY_ROW

    print("[chaos] auditing Kafka and the processor's state", file=sys.stderr, flush=True)
    state_audit = await asyncio.to_thread(audit_state, state, partner, acknowledged, phase_of, records)
    delays, unfolded = await asyncio.to_thread(fold_delays, state, partner, windows, stamps)
    for row in report.values():
        row["not_folded"] = 0
    for phase, count in state_audit["not_folded_by_phase"].items():
        report[phase]["not_folded"] = count
    report[STEADY_ROW]["processor_longest_fold_wait"] = delays[STEADY_ROW]  # before the first fault
    report[STEADY_ROW]["processor_not_folded_in_window"] = unfolded.get(STEADY_ROW, 0)
    print("[chaos] close-out: a processor 8 days ahead closes and settles every batch", file=sys.stderr, flush=True)
    close_out = await close_out_batches(processor_env, processor_log, state)
    print("[chaos] python -m processor replay", file=sys.stderr, flush=True)
    replayed = await asyncio.to_thread(replay, processor_env, options.replay_timeout)
    for name, seconds in recovery.items():
        report[name]["seconds_to_ready"] = seconds
        report[name]["seconds_to_settle"] = settle.get(name)
        report[name].update(watched.get(name, {}))
        report[name]["processor_longest_fold_wait"] = delays.get(name)
        report[name]["processor_not_folded_in_window"] = unfolded.get(name, 0)
        at = injected_at[name]
        report[name].update(p99_recovery(client.ledger.answers, f"before-{name}", at, at + options.hold))
        if name in killed:
            report[name]["killed"] = killed[name]
        if name in restarted:
            report[name]["toxiproxy_restarted"] = True
    duplicates = {txn: coordinates for txn, coordinates in records.items() if len(coordinates) > 1}
    result = {
        "stack": options.stack,
        "re_accepted": re_accepted(client.ledger, injected_at),
        "partner": partner,
        "topic_prefix": topic_prefix,
        "gateway_log": str(log_path),
        "duplicates": dict(sorted(duplicates.items())[:50]),  # for explaining them: grep the gateway log
        "options": asdict(options),
        "connection_errors": dict(client.ledger.connection_errors),
        "faults": report,
        "processor": {
            "pid": processor.pid,
            "log": str(processor_log),
            "schema": schema,
            "group": partner,
            "fold_windows": {name: [round(start, 3), round(end, 3)] for name, (start, end) in windows.items()},
            "final": final,
            "audit": state_audit,
            "close_out": close_out,
            "replay": replayed,
        },
    }
    result["verdict"] = {"failures": failures(result)}
    return result


async def settle_processor(
    processor: SettlementProcessor, state: State, bootstrap: str, topics: list[str]
) -> dict[str, Any]:
    """After the load: the seconds until the processor has folded the whole log (lag 0 by the database's
    offsets), its own lag gauge then, and whether it is still the process the run started."""
    final: dict[str, Any] = {"alive": processor.alive(), "exited_with": processor.exit_status}
    try:
        ends = await asyncio.to_thread(log_ends, bootstrap, topics)
    except Exception as exc:
        final["error"] = f"the log's end offsets: {exc}"
        return final
    final["records"] = sum(ends.values())
    final["seconds_to_caught_up"] = await state.caught_up(ends, 120)
    final["lag"] = await asyncio.to_thread(state.behind, ends)
    final["lag_metric"] = None
    deadline = time.monotonic() + 10  # the gauge is set on the processor's next tick
    while time.monotonic() < deadline and processor.alive():
        final["lag_metric"] = await asyncio.to_thread(processor.lag)
        if final["lag_metric"] == 0:
            break
        await asyncio.sleep(0.5)
    final["alive"] = processor.alive()  # the same pid from the start: the run never restarts it
    final["exited_with"] = processor.exit_status
    return final


async def close_out_batches(env: dict[str, str], log_path: Path, state: State) -> dict[str, Any]:
    """A second processor on the same schema and group, its clock 8 days ahead: its watermark passes every
    cut-off, so it closes and settles every batch of the run; then the invariants again, now over closed
    and settled batches (the live run rarely spans a cut-off). Its lifecycle steps are part of the state
    the replay must rebuild."""
    fixed = future_instant(8)
    found: dict[str, Any] = {"clock": fixed}
    closer = SettlementProcessor(env, log_path, fixed_time=fixed)
    try:
        await asyncio.to_thread(closer.started, 60)
        started = time.monotonic()
        while time.monotonic() - started < 60 and closer.alive():
            if await asyncio.to_thread(state.count, "SELECT count(*) FROM batches WHERE status <> 'settled'") == 0:
                found["seconds_to_settled"] = round(time.monotonic() - started, 2)
                break
            await asyncio.sleep(0.5)
    except RuntimeError as exc:
        found["error"] = str(exc)[-2000:]
    finally:
        found["exit_status"] = await asyncio.to_thread(closer.stop)
    with state.connect() as connection:
        found["invariants"] = invariants(connection)
    return found


def failures(result: dict) -> list[str]:
    """Why the run failed, one line each; none when it passed."""
    found = []
    for name, row in result["faults"].items():
        for count in ("lost", "re_accepted", "unexpected", "hangs", "unsettled", "not_folded"):
            if row.get(count):
                found.append(f"{name}: {row[count]} {count.replace('_', ' ')}")
        if not is_fault(name):
            continue
        if not row.get("processor_alive", False):
            found.append(f"{name}: the processor is not alive")
        ready = row.get("processor_seconds_to_ready")
        if ready is None or ready > READY_TARGET:
            found.append(f"{name}: the processor's /ready was not 200 within {READY_TARGET:g} s ({ready})")
        if row.get("processor_seconds_to_caught_up") is None:
            found.append(f"{name}: the processor did not fold the log (lag back to 0) within 120 s")
    processor = result["processor"]
    final = processor["final"]
    if not final.get("alive"):
        found.append(f"the processor (pid {processor['pid']}) exited during the run: {final.get('exited_with')}")
    if final.get("lag") != 0 or final.get("lag_metric") != 0:
        found.append(f"the processor's lag after the load: {final.get('lag')} (its gauge: {final.get('lag_metric')})")
    if final.get("exit_status") != 0:
        found.append(f"the processor ended with {final.get('exit_status')} on SIGTERM")
    audit_ = processor["audit"]
    if not audit_ok(audit_):
        checks = ("not_folded", "misplaced", "records_unaccounted", "folded_not_in_log", "counted_twice")
        found.append(
            "the processor's state: "
            + ", ".join(f"{audit_[key]} {key.replace('_', ' ')}" for key in checks)
            + f"; invariants {'hold' if invariants_hold(audit_['invariants']) else 'broken'}"
        )
    close_out = processor["close_out"]
    if close_out.get("seconds_to_settled") is None or close_out.get("exit_status") != 0:
        found.append(f"the close-out did not settle every batch and stop cleanly: {close_out}")
    if not invariants_hold(close_out["invariants"]):
        found.append("the invariants are broken after the close-out")
    replayed = processor["replay"]
    if replayed["status"] is None:
        found.append(f"python -m processor replay did not end within {replayed['seconds']:g} s")
    elif replayed["status"] != 0:
        found.append(f"python -m processor replay exited {replayed['status']}")
    return found


def re_accepted(ledger: Ledger, injected_at: dict[str, float]) -> dict[str, dict]:
    """Each transaction accepted twice, for finding the cause: its phase, and when each 202 or 200 came,
    in seconds after its fault began (before it, when negative)."""
    found = {}
    for txn, acceptances in ledger.accepted.items():
        if sum(a.status == 202 for a in acceptances) > 1:
            phase = ledger.phase_of[txn]
            start = injected_at.get(phase)
            found[txn] = {
                "phase": phase,
                "answers": [
                    {"status": a.status, "offset": f"{a.topic}[{a.partition}]@{a.offset}"}
                    | ({"seconds_after_fault": round(a.at - start, 2)} if start else {})
                    for a in acceptances
                ],
            }
    return found


def table(result: dict) -> str:
    """The report as a Markdown table, one row per fault and one for the steady load between them."""
    rows = [
        "| fault | acknowledged | lost | re-accepted | duplicate records | unexpected 5xx/4xx | hangs | unsettled "
        "| s to ready | s to settle | p99 before → worst (ms) | s to p99 | answers | not folded "
        "| processor alive | processor s to ready | processor s to lag 0 | processor longest fold wait (s) "
        "| processor /ready during fault |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["faults"].items():
        answers = ", ".join(f"{k if k != '0' else 'no answer'}: {v}" for k, v in row["answers"].items())
        p99 = (
            f"{row['p99_before_ms']} → {row['p99_worst_ms']} | {row['seconds_to_p99']}"
            if "p99_before_ms" in row
            else "- | -"
        )
        if "processor_alive" in row:
            during = ", ".join(f"{k}: {v}" for k, v in row["processor_ready_answers"].items()) or "-"
            alive = "yes" if row["processor_alive"] else "**no**"
            ready, lag = row["processor_seconds_to_ready"], row.get("processor_seconds_to_caught_up")
            processor = f"{alive} | {ready} | {lag} | {fold_wait(row)} | {during}"
        else:
            processor = f"- | - | - | {fold_wait(row)} | -"
        if row.get("toxiproxy_restarted"):
            name += " (Toxiproxy restarted)"
        rows.append(
            f"| {name} | {row['acknowledged']} | {row['lost']} | {row['re_accepted']} "
            f"| {row['duplicate_records']} | {row['unexpected']} | {row['hangs']} | {row['unsettled']} "
            f"| {row.get('seconds_to_ready', '-')} | {row.get('seconds_to_settle', '-')} | {p99} | {answers} "
            f"| {row.get('not_folded', '-')} | {processor} |"
        )
    return "\n".join(rows)


def fold_wait(row: dict) -> str:
    """The longest fold wait of a row, with the transactions of its window never folded when there are any."""
    wait, unfolded = row.get("processor_longest_fold_wait", "-"), row.get("processor_not_folded_in_window")
    return f"≥ {wait} ({unfolded} never folded)" if unfolded else str(wait)


def summary(result: dict) -> str:
    """The processor's audit and the verdict, as Markdown lines under the table."""
    processor = result["processor"]
    final, audit_, close_out, replayed = (processor[k] for k in ("final", "audit", "close_out", "replay"))
    live, closed = audit_["invariants"], close_out["invariants"]

    def held(found: dict) -> str:
        return (
            f"{found['transactions']} transactions = {found['sum_of_batch_members']} batch members, "
            f"{found['outside_any_batch']} outside any batch, {found['batches_checked']} closed or settled batches "
            f"re-summed ({found['batches_wrong_count']} wrong), {found['unreadable']} unreadable; batches "
            + ", ".join(f"{status}: {n}" for status, n in found["batches"].items())
        )

    failed = result["verdict"]["failures"]
    lines = [
        f"Processor pid {processor['pid']} (schema `{processor['schema']}`, group `{processor['group']}`): "
        f"alive at the end: {'yes' if final.get('alive') else 'no'}; after the load, lag 0 in "
        f"{final.get('seconds_to_caught_up')} s (lag {final.get('lag')}, its gauge {final.get('lag_metric')}, "
        f"{final.get('records')} records); exit status on SIGTERM {final.get('exit_status')}.",
        "",
        f"- Ledger: {audit_['acknowledged']} acknowledged transactions, {audit_['folded']} folded, "
        f"{audit_['duplicates_recorded']} duplicate records recorded, {audit_.get('conflicts', 0)} conflicts; "
        f"{audit_['not_folded']} not folded, "
        f"{audit_['misplaced']} at other coordinates, {audit_['records_unaccounted']} records of the run "
        f"unaccounted for, {audit_['folded_not_in_log']} folded records not in the log, "
        f"{audit_['counted_twice']} counted twice.",
        f"- Invariants (live): {held(live)}.",
        f"- Close-out (clock {close_out['clock']}): every batch settled in {close_out.get('seconds_to_settled')} s, "
        f"exit status {close_out.get('exit_status')}; invariants: {held(closed)}.",
        f"- Replay (`python -m processor replay`, {closed['lifecycle_steps']} lifecycle steps to retake): exit status "
        f"{replayed['status']} in {replayed['seconds']} s"
        + (f" ({' / '.join(line.strip() for line in replayed['output'][-3:])})" if replayed["status"] != 0 else ""),
        f"- Verdict: {'passed' if not failed else 'FAILED: ' + '; '.join(failed)}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds each fault lasts")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of normal load before each fault")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--faults", default="", help="comma-separated subset of the faults")
    parser.add_argument("--delivery-timeout-ms", type=int, default=5000)
    parser.add_argument("--in-doubt-margin-ms", type=int, default=5000)
    parser.add_argument(
        "--replay-timeout", type=float, default=900.0, help="seconds python -m processor replay may take"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "faults" / "results")
    parser.add_argument(
        "--stack", choices=("single", "cluster"), default=os.environ.get("STACK", "single"), help="(default: $STACK)"
    )
    args = parser.parse_args()
    options = Options(
        hold=args.hold,
        steady=args.steady,
        connections=args.connections,
        only=tuple(filter(None, args.faults.split(","))),
        delivery_timeout_ms=args.delivery_timeout_ms,
        in_doubt_margin_ms=args.in_doubt_margin_ms,
        replay_timeout=args.replay_timeout,
        stack=args.stack,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = asyncio.run(run(options, args.out / f"{stamp}-gateway.log"))
    (args.out / f"{stamp}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = table(result) + "\n\n" + summary(result)
    (args.out / f"{stamp}.md").write_text(text + "\n")
    print(text)
    return 1 if result["verdict"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
