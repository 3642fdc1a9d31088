"""`make run` (deploy/run.sh) refuses a port that is already served, before it starts anything.

Granian binds with SO_REUSEPORT, so without the check a second gateway would share the port with the
first and the kernel would split the partners' connections between them."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port


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
        **extra,
    )
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
