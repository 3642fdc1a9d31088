"""The servers `make bench` measures (benchmarks/run.py, cost.py, profile.py): the gateway authenticated
and open (and open on the cluster stack), the peer (FastAPI, Pydantic, uvicorn) and the ceiling (bare
Granian), each a `Contender`: how to start it, where it listens, what its load sends. Starting, waiting
for readiness and stopping are tests/servers.py's, as for the tests' gateways."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from gateway.partners.registry import new_key
from tests.servers import BIN, ServerProcess, StartFailed, launcher_command, launcher_env

# a gateway's operations listener (/metrics) is this far above its port
OPS_PORT_OFFSET = 100


def answers(status: int) -> bool:
    """Ready for the bench: anything but a server error (the peer's /docs and the ceiling's / have no
    readiness of their own)."""
    return status < 500


@dataclass
class Contender:
    """One of the servers measured: how to start it, and where it listens."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    stateful: bool = True  # answers replays with 200 and invalid requests with 422
    authorization: str = ""  # the Authorization header every request of the load carries
    cwd: Path | None = None  # the working directory (None: this one)
    running: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's main process."""
        assert self.running is not None, f"{self.name} is not running"
        return self.running.pid

    def start(self, log_dir: Path) -> None:
        """Start it, its output in `log_dir`/<name>.log, and wait until it answers; SystemExit with the
        end of its log when it does not."""
        env = {**os.environ, **self.env}
        self.running = ServerProcess(self.name, self.command, env, log_dir / f"{self.name}.log", cwd=self.cwd)
        try:
            self.running.wait_ready(self.url + self.ready_path, ready=answers)
        except StartFailed as failed:  # stopped already
            self.running = None
            raise SystemExit(str(failed)) from None

    def workers(self) -> list[int]:
        """Process ids of the worker processes (children of the server's main process)."""
        return sorted(self.running.workers()) if self.running else []

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop(30)
            self.running = None


def bench_registry(directory: Path) -> tuple[Path, str]:
    """A registry with one partner whose limit (GCRA, checked on every request) the load never reaches;
    its path and the partner's key."""
    key, digest = new_key()
    path = directory / "partners.toml"
    path.write_text(
        f'[partners.bench]\nrate = 1000000\nburst = 1000000\nkeys = [{{ id = "bench", sha256 = "{digest}" }}]\n'
    )
    return path, f"Bearer {key}"


def cluster_env() -> dict[str, str]:
    """The GATEWAY_* variables of the cluster stack (deploy/bench.sh puts `STACK=cluster deploy/stack.sh
    env` in BENCH_CLUSTER_ENV); empty when there is none."""
    return dict(line.split("=", 1) for line in os.environ.get("BENCH_CLUSTER_ENV", "").splitlines() if "=" in line)


def gateway_command(port: int, workers: int) -> list[str]:
    """The gateway as `make run` and the image start it, the launcher (`python -m gateway serve`: a worker
    that dies is replaced, and the rest of Granian's options), on loopback and quieter."""
    return launcher_command(port, workers, "--log-level", "warning")


def granian_command(workers: int) -> list[str]:
    """Granian serving another ASGI app (the ceiling) on loopback with `workers` workers (the port and app
    follow)."""
    command = [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1", "--workers", str(workers)]
    return [*command, "--no-ws", "--log-level", "warning"]


def servers(workers: int, port_base: int, scratch: Path) -> dict[str, Contender]:
    """The gateway (authenticated, and open), the peer (FastAPI, Pydantic, uvicorn, redis.asyncio,
    aiokafka) and the ceiling."""
    ttl = {"GATEWAY_IDEMPOTENCY_TTL_SECONDS": "300"}  # keys of a run expire instead of filling Redis
    granian = granian_command(workers)
    registry, authorization = bench_registry(scratch)

    def gateway(name: str, port: int, env: dict[str, str], authorization: str = "") -> Contender:
        command = gateway_command(port, workers)
        # an operations listener of its own, OPS_PORT_OFFSET above its port (several gateways run at once)
        metrics = {
            "PROMETHEUS_MULTIPROC_DIR": str(scratch / f"metrics-{name}"),
            "GATEWAY_OPS_PORT": str(port + OPS_PORT_OFFSET),
        }
        return Contender(
            name, command, port, "/ready", launcher_env({**ttl, **metrics, **env}), authorization=authorization
        )

    return {
        "gateway": gateway("gateway", port_base + 1, {"GATEWAY_PARTNERS_FILE": str(registry)}, authorization),
        "gateway-open": gateway("gateway-open", port_base + 4, {}),
        # the open gateway again, on the cluster stack (BENCH_CLUSTER_ENV, set by deploy/bench.sh)
        "gateway-cluster": gateway("gateway-cluster", port_base + 5, cluster_env()),
        "peer": Contender(
            "peer",
            [
                str(BIN / "uvicorn"),
                "benchmarks.peers.fastapi_peer:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port_base + 2),
                "--workers",
                str(workers),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            port_base + 2,
            "/docs",
            {**ttl, "PEER_TOPIC_PREFIX": "peer."},
        ),
        "ceiling": Contender(
            "ceiling",
            [*granian, "--port", str(port_base + 3), "benchmarks.peers.bare_granian:app"],
            port_base + 3,
            "/",
            stateful=False,
        ),
    }
