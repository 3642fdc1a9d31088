"""The running server: Granian with two workers, the way `make run` serves, on a free port."""

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

ROOT = Path(__file__).resolve().parents[2]


# `python -m gateway serve`, as `make run` and the image start the gateway; it becomes Granian, which it
# finds on PATH (this interpreter's, first)
LAUNCHER = (sys.executable, "-m", "gateway", "serve")
BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A gateway process tree, its partners' address and its operations address."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 2,
        kill_timeout: int = 10,
        ready_path: str = "/ready",
        prefix: tuple[str, ...] = (),
        ops_port: int | None = None,
    ) -> None:
        """`prefix`: a command the server runs under (e.g. faketime, which runs it as its child: the server
        then gets a session of its own, and `stop` signals the whole group). `ops_port`: the operations
        listener's (/metrics); a free one of its own by default, 0 for none. With GATEWAY_TLS_CERT_FILE and
        GATEWAY_TLS_KEY_FILE in `env` it serves HTTPS, as deploy/run.sh does, and `context` trusts its
        certificate."""
        self._group = bool(prefix)
        self.port = free_port()
        self.ops_port = free_port() if ops_port is None else ops_port
        env = {**env, "GATEWAY_OPS_PORT": str(self.ops_port)}
        self.ops_url = f"http://127.0.0.1:{self.ops_port}"
        certificate, key = env.get("GATEWAY_TLS_CERT_FILE"), env.get("GATEWAY_TLS_KEY_FILE")
        tls = bool(certificate and key)  # the launcher serves HTTPS then
        self.context = ssl.create_default_context(cafile=certificate) if tls else None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.partner = env["GATEWAY_PARTNER"]
        self.log_path = Path(env["E2E_LOG"])
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *prefix, *LAUNCHER, "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
                "--kill-timeout", str(kill_timeout),
            ],
            env={**env, "PATH": f"{BIN}:{env.get('PATH', os.environ.get('PATH', ''))}"},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=self._group,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2, context=self.context) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gateway not ready in 60s: {self.log_path.read_text()[-2000:]}")

    def workers(self) -> set[int]:
        """Process ids of the worker processes: the children of Granian's main process."""
        pids: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the thread or the process just ended
                pids.update(int(pid) for pid in children.read_text().split())
        return pids

    def listening_workers(self, port: int | None = None) -> set[int]:
        """The workers that hold a socket listening on `port`, the partners' by default (each binds its own,
        SO_REUSEPORT)."""
        sockets = {f"socket:[{inode}]" for inode in listening_sockets(port or self.port)}
        listening = set()
        for pid in self.workers():
            try:
                if any(os.readlink(fd) in sockets for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    listening.add(pid)
            except OSError:  # the worker just ended, or one of its descriptors closed while read
                pass
        return listening

    def log_lines(self) -> list[str]:
        """What the gateway wrote so far, a line each."""
        self._log.flush()
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self, timeout: float = 20) -> int:
        self._signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.process.wait()
        finally:
            if self._group:  # what the prefix started, whatever became of the prefix itself
                self._wait_group(timeout)
            self._log.close()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def _wait_group(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def listening_sockets(port: int) -> dict[str, str]:
    """The sockets listening on TCP `port`, as {inode: the address bound}, from /proc/net/tcp and tcp6."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                sockets[fields[9]] = _address(address)
    return sockets


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address (32-bit words in host byte order, little-endian here) as text."""
    raw = b"".join(int(hex_address[i : i + 8], 16).to_bytes(4, "little") for i in range(0, len(hex_address), 8))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def server_env(stack, tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a gateway on the test stack, with a partner namespace of its own."""
    env = {
        **os.environ,
        "GATEWAY_PARTNER": f"e2e-{uuid.uuid4().hex[:8]}",
        "E2E_LOG": str(tmp_path / "gateway.log"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(stack, tmp_path_factory):
    gateway = Server(server_env(stack, tmp_path_factory.mktemp("gateway")))
    yield gateway
    gateway.stop()


def accepted_per_worker(metrics_dir: Path, partner: str) -> dict[int, float]:
    """How many transactions of `partner` each worker accepted, by pid, read from each worker's own
    multiprocess metrics file (a scrape would sum them)."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _metric, name, labels, _help = json.loads(key)
            if name == "settlement_intake_outcomes_total" and labels == {"partner": partner, "outcome": "accepted"}:
                counts[int(path.stem.removeprefix("counter_"))] = value
    return counts
