"""Shared fixtures. Integration and e2e tests use the real Redis and Kafka named by GATEWAY_* (make test
exports the local stack's), and the tests of the settlement processor the real PostgreSQL of
GATEWAY_DATABASE_URL (the `database` fixture); when one cannot be reached the run fails loudly instead of
skipping."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec
import psycopg
import pytest

from gateway.settings import Settings
from tests.processes import stop
from tests.stack import database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings the suite's in-process gateways use: the environment's, without an operations listener
    (each would bind 127.0.0.1:9101, a developer's own gateway's port; a test that scrapes one names a
    free port of its own)."""
    return msgspec.structs.replace(Settings.from_env(), ops_port=0)


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """The real Redis and Kafka, checked once; a failure here fails every test that needs them."""
    for service, address in (
        ("redis", settings.redis_url.split("//", 1)[1].split("/", 1)[0]),
        ("kafka", settings.kafka_bootstrap.split(",")[0]),
    ):
        probe = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "probe.py"), service, address], capture_output=True, timeout=30
        )
        if probe.returncode != 0:
            pytest.fail(f"{service} is not reachable at {address}: start the stack (make test does) ", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def database() -> str:
    """The URL of the real PostgreSQL (GATEWAY_DATABASE_URL, else the local stack's), checked once with a
    real login; a failure here fails every test that needs it."""
    url = database_url()
    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
        return url
    except psycopg.Error as exc:
        problem = str(exc)
    shown = re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)  # not the password
    pytest.fail(f"PostgreSQL is not reachable at {shown}: {problem} (start the stack: make test does)", pytrace=False)


@pytest.fixture
def unique() -> str:
    """A fresh suffix, so tests never see each other's keys or records."""
    return uuid.uuid4().hex[:12]


def _kafka_script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "deploy" / "kafka.sh"), command], capture_output=True, text=True, timeout=180)


KAFKA_PIDFILE = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "kafka" / "kafka.pid"


class Broker:
    """The local stack's broker, stopped, killed and started by tests (deploy/kafka.sh)."""

    @staticmethod
    def stop() -> None:
        stopped = _kafka_script("stop")
        assert stopped.returncode == 0, stopped.stderr

    @staticmethod
    def kill() -> None:
        """SIGKILL: the broker dies mid-request, with no chance to finish what it was doing."""
        os.kill(int(KAFKA_PIDFILE.read_text()), signal.SIGKILL)
        while _kafka_script("status").returncode == 0:
            time.sleep(0.05)

    @staticmethod
    def start() -> None:
        started = _kafka_script("start")
        assert started.returncode == 0, started.stderr


@pytest.fixture
def kafka_broker(stack: Settings):
    """The local stack's broker, to stop, kill and start in the middle of a test; running afterwards."""
    if _kafka_script("status").returncode != 0:
        pytest.fail("this test stops Kafka, so it needs the local stack's broker (deploy/kafka.sh)", pytrace=False)
    try:
        yield Broker
    finally:
        if _kafka_script("status").returncode != 0:
            Broker.start()


POSTGRES_PIDFILE = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "postgres" / "data" / "postmaster.pid"


def _postgres_script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "deploy" / "postgres.sh"), command], capture_output=True, text=True, timeout=180)


class Database:
    """The local stack's PostgreSQL, killed and started by tests (deploy/postgres.sh)."""

    @staticmethod
    def kill() -> None:
        """SIGKILL the server and every backend of it at once (a crash: nothing flushed, no goodbye to
        clients); the next start recovers from its write-ahead log."""
        postmaster = int(POSTGRES_PIDFILE.read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        for pid in [postmaster, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while _postgres_script("status").returncode == 0:
            time.sleep(0.05)

    @staticmethod
    def start() -> None:
        started = _postgres_script("start")
        assert started.returncode == 0, started.stderr


@pytest.fixture
def postgres_server(database: str):
    """The local stack's PostgreSQL, to kill and start in the middle of a test; running afterwards."""
    if not POSTGRES_PIDFILE.exists() or _postgres_script("status").returncode != 0:
        pytest.fail(
            "this test kills PostgreSQL, so it needs the local stack's server (deploy/postgres.sh)", pytrace=False
        )
    try:
        yield Database
    finally:
        if _postgres_script("status").returncode != 0:
            Database.start()


class LocalRedisCluster:
    """A Redis Cluster of the tests' own (deploy/redis-cluster.sh, 3 masters and 3 replicas) in a temporary
    folder, on ports apart from the STACK=cluster ones (nodes from TEST_REDIS_CLUSTER_PORT, 17201; their
    cluster bus 100 above): `url` lists the seeds the way GATEWAY_REDIS_URL does."""

    def __init__(self, home: Path, first_port: int) -> None:
        self.env = {
            **os.environ,
            "STACK_DIR": str(home),
            "STACK_REDIS_CLUSTER_PORT": str(first_port),
            "STACK_REDIS_CLUSTER_BUS_PORT": str(first_port + 100),
        }
        self.ports = list(range(first_port, first_port + 6))
        self.url = "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def run(self, *command: str) -> str:
        done = subprocess.run(
            [str(ROOT / "deploy" / "redis-cluster.sh"), *command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def masters(self) -> list[int]:
        return [int(port) for port in self.run("masters").split()]

    def kill(self, port: int) -> None:
        """SIGKILL one node: a master's replica takes over after cluster-node-timeout (2 s) and an election."""
        self.run("kill-node", str(port))

    def start(self, port: int) -> None:
        """Start a killed node again; a replaced master rejoins as its successor's replica."""
        self.run("start-node", str(port))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A Redis Cluster for the session (about 2 s to start), stopped at the end."""
    cluster = LocalRedisCluster(
        tmp_path_factory.mktemp("redis-cluster"), int(os.environ.get("TEST_REDIS_CLUSTER_PORT", 17201))
    )
    cluster.run("start")
    try:
        yield cluster
    finally:
        cluster.run("stop")


@pytest.fixture
def kafka_outage(kafka_broker: type[Broker]):
    """Stop the local stack's broker for the test body and start it again afterwards.

    Yields a function that brings the broker back early (for tests of recovery)."""
    kafka_broker.stop()
    yield kafka_broker.start


@pytest.fixture
def kafka_pause(stack: Settings):
    """Freeze the local stack's broker (SIGSTOP) for the test body: connections stay open and requests
    sit unanswered in its socket buffers. Yields a function that resumes it (SIGCONT); resumed after
    the test in any case."""
    if not KAFKA_PIDFILE.exists():
        pytest.fail("this test pauses Kafka, so it needs the local stack's broker (deploy/kafka.sh)", pytrace=False)
    pid = int(KAFKA_PIDFILE.read_text())
    stop(pid)

    def resume() -> None:
        os.kill(pid, signal.SIGCONT)

    try:
        yield resume
    finally:
        resume()


def transaction(unique: str, **changes) -> dict:
    """The seed's transaction with ids made unique to one test."""
    body = {
        "transaction_id": f"txn_{unique}",
        "amount": 250.00,
        "source_currency": "USD",
        "destination_currency": "GBP",
        "source_account": f"acct_usa_{unique}",
        "destination_account": "acct_uk_99",
        "counterparty_id": "cparty_london",
        "idempotency_key": f"idem_{unique}",
        "settlement_window": "t1",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}
