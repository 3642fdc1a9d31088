"""`make run` (deploy/run.sh) refuses a port that is already served, before it starts anything, and
starts the settlement processor and the webhook deliverer beside the gateway, stopping them with it.

Granian binds with SO_REUSEPORT, so without the check a second gateway would share the port with the
first and the kernel would split the partners' connections between them. The processor's and the
deliverer's operations ports are checked too: a second one would die at start-up in the background."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.servers import ROOT, ServerProcess, free_port, http_status


def run_script(tmp_path: Path, port: int, **extra: str) -> tuple[subprocess.CompletedProcess, float, dict]:
    """deploy/run.sh on `port`, with a stack of its own (STACK_DIR and ports) that it must not start."""
    # none of the caller's stack, gateway or metrics settings: run.sh empties PROMETHEUS_MULTIPROC_DIR
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "STACK_", "PROMETHEUS_"))}
    env.update(
        GATEWAY_PORT=str(port),
        STACK_DIR=str(tmp_path / "stack"),
        STACK_REDIS_PORT=str(free_port()),
        STACK_KAFKA_PORT=str(free_port()),
        STACK_KAFKA_CONTROLLER_PORT=str(free_port()),
        STACK_POSTGRES_PORT=str(free_port()),
        # the processor's and the deliverer's operations ports: not those of a `make run` of this machine
        PROCESSOR_METRICS_PORT=str(free_port()),
        PROCESSOR_DELIVER_METRICS_PORT=str(free_port()),
    )
    env.update(extra)
    started = time.monotonic()
    process = subprocess.Popen(
        [str(ROOT / "deploy" / "run.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # it went on to start the stack and the gateway
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    finally:  # stop whatever it started of its own stack (the pid files are under its STACK_DIR)
        subprocess.run([str(ROOT / "deploy" / "stack.sh"), "down"], env=env, capture_output=True, timeout=120)
    took = time.monotonic() - started
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), took, env


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", int(port))) == 0


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def occupied():
    """A port this test process listens on as a running gateway does: with SO_REUSEPORT, so a second
    Granian would bind it too without a word."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("ss") is None, reason="naming the process needs ss (iproute2)")
@pytest.mark.parametrize("host", [None, "127.0.0.1"])
def test_a_served_port_is_refused_naming_the_process_and_nothing_is_started(tmp_path, occupied, host):
    extra = {"GATEWAY_HOST": host} if host else {}
    result, took, env = run_script(tmp_path, occupied, **extra)

    assert result.returncode != 0
    assert took < 10, f"took {took:.1f}s"
    name = Path("/proc/self/comm").read_text().strip()
    assert f":{occupied} is already served by {name} (pid {os.getpid()})" in result.stderr, result.stderr
    assert not (tmp_path / "stack").exists(), "it started part of the stack"
    assert not listening(env["STACK_REDIS_PORT"]) and not listening(env["STACK_KAFKA_PORT"])
    assert not listening(env["STACK_POSTGRES_PORT"])


@pytest.mark.parametrize(("registry", "host"), [(False, "127.0.0.1"), (True, "0.0.0.0")])
def test_without_ss_the_refusal_still_names_the_port(tmp_path, occupied, registry, host):
    # an `ss` that finds nothing, as where iproute2 is missing: the port still answers connections.
    # The address it names is the default one: loopback in open mode, every address with a registry.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ss").write_text("#!/bin/sh\nexit 127\n")
    (bin_dir / "ss").chmod(0o755)
    extra = {"GATEWAY_PARTNERS_FILE": str(tmp_path / "partners.toml")} if registry else {}
    result, took, _ = run_script(tmp_path, occupied, PATH=f"{bin_dir}:{os.environ['PATH']}", **extra)

    assert result.returncode != 0 and took < 10
    assert f"{host}:{occupied} already accepts connections" in result.stderr, result.stderr
    assert ("open mode" in result.stderr) is not registry, result.stderr
    assert not (tmp_path / "stack").exists()


def test_a_free_port_is_not_refused(tmp_path):
    # run.sh goes on to the stack; with GATEWAY_REDIS_URL, GATEWAY_KAFKA_BOOTSTRAP and GATEWAY_DATABASE_URL
    # set it starts none, and `gateway check` then fails on the bad setting below: past the port check,
    # nothing started
    port = free_port()
    result, _, _ = run_script(
        tmp_path,
        port,
        GATEWAY_REDIS_URL="redis://127.0.0.1:1/0",
        GATEWAY_KAFKA_BOOTSTRAP="127.0.0.1:1",
        GATEWAY_DATABASE_URL="postgresql://settlement@127.0.0.1:1/settlement",
        GATEWAY_LOG_LEVEL="NOT-A-LEVEL",
    )
    assert result.returncode != 0
    assert "already" not in result.stderr
    assert "GATEWAY_LOG_LEVEL" in result.stderr + result.stdout, result.stderr
    assert not listening(port)


@pytest.mark.skipif(shutil.which("ss") is None, reason="naming the process needs ss (iproute2)")
@pytest.mark.parametrize("variable", ["PROCESSOR_METRICS_PORT", "PROCESSOR_DELIVER_METRICS_PORT"])
def test_a_served_processor_or_deliverer_port_is_refused_before_anything_starts(tmp_path, occupied, variable):
    # a processor or a deliverer left running: the new one would fail to bind, in the background
    result, took, _ = run_script(tmp_path, free_port(), **{variable: str(occupied)})

    assert result.returncode != 0 and took < 10
    assert f"127.0.0.1:{occupied} is already served by" in result.stderr, result.stderr
    assert f"set {variable} to a free port" in result.stderr, result.stderr
    assert not (tmp_path / "stack").exists(), "it started part of the stack"


def children(pid: int) -> set[int]:
    pids: set[int] = set()
    for listed in Path(f"/proc/{pid}/task").glob("*/children"):
        pids.update(int(child) for child in listed.read_text().split())
    return pids


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_it_runs_the_processor_and_the_deliverer_beside_the_gateway_and_stops_them_when_it_ends(
    tmp_path, stack, database
):
    """On the test stack (configured: run.sh starts none of it), in a schema and topics of its own."""
    tag = uuid.uuid4().hex[:8]
    ports = {name: free_port() for name in ("gateway", "ops", "processor", "deliverer")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "STACK_", "PROMETHEUS_", "PROCESSOR_"))}
    env.update(
        GATEWAY_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
        GATEWAY_REDIS_URL=stack.redis_url,
        GATEWAY_DATABASE_URL=database,
        GATEWAY_DATABASE_SCHEMA=f"run_{tag}",
        GATEWAY_TOPIC_PREFIX=f"run-{tag}.",
        GATEWAY_PARTNER=f"run-{tag}",
        GATEWAY_PORT=str(ports["gateway"]),
        GATEWAY_OPS_PORT=str(ports["ops"]),
        GATEWAY_WORKERS="1",
        PROCESSOR_GROUP=f"run-{tag}",
        PROCESSOR_METRICS_PORT=str(ports["processor"]),
        PROCESSOR_DELIVER_METRICS_PORT=str(ports["deliverer"]),
        STACK_DIR=str(tmp_path / "stack"),
    )
    run = ServerProcess("make run", [str(ROOT / "deploy" / "run.sh")], env, tmp_path / "run.log")
    try:
        run.wait_ready(f"http://127.0.0.1:{ports['deliverer']}/ready", seconds=90)
        run.wait_ready(f"http://127.0.0.1:{ports['processor']}/ready", seconds=90)
        run.wait_ready(f"http://127.0.0.1:{ports['ops']}/health", seconds=90)
        log = "\n".join(run.log_lines())
        said = re.search(r"webhook deliverer started \(pid (\d+); metrics and /ready on (\S+)\)", log)
        assert said and said.group(2) == f"http://127.0.0.1:{ports['deliverer']}", log
        assert http_status(f"http://127.0.0.1:{ports['deliverer']}/metrics") == 200
        assert Path(f"/proc/{said.group(1)}").exists()

        # the gateway alone stopped (Ctrl-C stops it too, with the whole group): the script ends, and its
        # trap stops what it started beside the gateway
        [gateway] = [pid for pid in children(run.pid) if "bin/granian" in command_line(pid)]
        os.kill(gateway, signal.SIGTERM)
        run.process.wait(60)
        deadline = time.monotonic() + 30
        while group_alive(run.pid) or any(listening(port) for port in ports.values()):
            assert time.monotonic() < deadline, {name: listening(port) for name, port in ports.items()}
            time.sleep(0.1)
        assert not Path(f"/proc/{said.group(1)}").exists(), "the deliverer outlived make run"
    finally:
        run.stop()
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"run_{tag}")))
