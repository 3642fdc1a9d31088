"""Servers the tests and the benchmarks start: a process with a log of its own, ready once an HTTP path
answers, stopped with SIGTERM and, after a grace, SIGKILL. `ServerProcess` is any such process (the
benchmarks' gateways, peer and ceiling); `Server` is the gateway as the end-to-end tests run it, through
the one launcher (`python -m gateway serve`, as `make run` and the image start it) on free ports."""

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the interpreter's folder: the launcher becomes Granian, which it finds on PATH (this one's, first)
BIN = Path(sys.executable).parent
READY_SECONDS = 60.0  # how long a server may take to answer its readiness path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def launcher_command(port: int, workers: int, *options: str) -> list[str]:
    """The gateway's one launcher on loopback, `port` and `workers`, then Granian's `options`."""
    launcher = [str(BIN / "python"), "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return [*launcher, "--workers", str(workers), *options]


def launcher_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this interpreter's folder first on PATH, where the launcher finds Granian."""
    return {**env, "PATH": f"{BIN}:{env.get('PATH', os.environ.get('PATH', ''))}"}


def http_status(url: str, timeout: float = 2, context: ssl.SSLContext | None = None) -> int | None:
    """The status a GET of `url` answers; None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, http.client.HTTPException):
        return None


def is_ok(status: int) -> bool:
    return status == 200


class StartFailed(RuntimeError):
    """A server exited while starting, or did not become ready in time; the message ends with its log."""


class ServerProcess:
    """One server process (and whatever it starts): its command run with `env`, its output in `log_path`.
    With `own_session` it leads a process group of its own, and `stop` signals the whole group."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        own_session: bool = True,
        append: bool = False,
    ) -> None:
        """`append`: add to the log (a process that takes over from an earlier one) instead of starting it."""
        self.name = name
        self.log_path = log_path
        self._group = own_session
        self._log = log_path.open("ab" if append else "wb")
        self.process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(
        self,
        url: str,
        *,
        ready: Callable[[int], bool] = is_ok,
        seconds: float = READY_SECONDS,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Return once a GET of `url` answers a status `ready` accepts (200 by default). When the process
        exits first, or `seconds` pass, stop it and raise StartFailed with the tail of its log."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise StartFailed(f"{self.name} exited ({self.process.returncode}) at start-up: {self.log_tail()}")
            status = http_status(url, context=context)
            if status is not None and ready(status):
                return
            time.sleep(0.2)
        self.stop()
        raise StartFailed(f"{self.name} was not ready in {seconds:g} s ({url}): {self.log_tail()}")

    def log_lines(self) -> list[str]:
        """What the server wrote so far, a line each."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace").splitlines()

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the log, after the path it is in."""
        with contextlib.suppress(OSError):
            return f"{self.log_path}:\n{self.log_path.read_text(errors='replace')[-characters:]}"
        return f"{self.log_path}: not readable"

    def workers(self) -> set[int]:
        """Process ids of the worker processes: the children of the server's main process."""
        pids: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the thread or the process just ended
                pids.update(int(pid) for pid in children.read_text().split())
        return pids

    def stop(self, grace: float = 20) -> int:
        """SIGTERM, then SIGKILL when it has not ended within `grace` seconds; its exit status. With a
        session of its own, the rest of its group too, whatever became of the server itself."""
        self._signal(signal.SIGTERM)
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.process.wait()
        finally:
            if self._group:
                self._wait_group(grace)
            self._log.close()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def _wait_group(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class Server(ServerProcess):
    """The gateway on free ports, started by the launcher and ready: its partners' address and its
    operations address."""

    def __init__(
        self,
        env: Mapping[str, str],
        workers: int = 2,
        kill_timeout: int = 10,
        ready_path: str = "/ready",
        prefix: tuple[str, ...] = (),
        ops_port: int | None = None,
    ) -> None:
        """`env` names the log (E2E_LOG) and the partner (GATEWAY_PARTNER). `prefix`: a command the server
        runs under (e.g. faketime, which runs it as its child: the server then gets a session of its own,
        and `stop` signals the whole group). `ops_port`: the operations listener's (/metrics); a free one
        of its own by default, 0 for none. With GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE in `env` it
        serves HTTPS, as deploy/run.sh does, and `context` trusts its certificate."""
        self.port = free_port()
        self.ops_port = free_port() if ops_port is None else ops_port
        env = {**env, "GATEWAY_OPS_PORT": str(self.ops_port)}
        self.ops_url = f"http://127.0.0.1:{self.ops_port}"
        certificate, key = env.get("GATEWAY_TLS_CERT_FILE"), env.get("GATEWAY_TLS_KEY_FILE")
        tls = bool(certificate and key)  # the launcher serves HTTPS then
        self.context = ssl.create_default_context(cafile=certificate) if tls else None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.partner = env["GATEWAY_PARTNER"]
        command = [*prefix, *launcher_command(self.port, workers, "--kill-timeout", str(kill_timeout))]
        log_path = Path(env["E2E_LOG"])
        super().__init__("gateway", command, launcher_env(env), log_path, cwd=ROOT, own_session=bool(prefix))
        self.wait_ready(self.url + ready_path, context=self.context)

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
