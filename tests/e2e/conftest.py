"""The running server: Granian with two workers, the way `make run` serves, on a free port."""

import json
import os
import uuid
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.servers import Server


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
