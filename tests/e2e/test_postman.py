"""The Postman collection (postman/) run by newman against live gateways: the open one of the e2e
suite, and one with a partner registry whose Redis is down (401 and 503). One pytest result per
request of the collection, so newman's assertions count in the test summary."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import server_env
from tests.partners import write_registry
from tests.servers import ROOT, Server

COLLECTION = ROOT / "postman" / "settlement-gateway.postman_collection.json"
ENVIRONMENT = ROOT / "postman" / "local.postman_environment.json"


def request_names(items: list) -> list[str]:
    names = []
    for item in items:
        names += request_names(item["item"]) if "item" in item else [item["name"]]
    return names


REQUESTS = request_names(json.loads(COLLECTION.read_text())["item"])


@pytest.fixture(scope="module")
def newman_run(server, stack, tmp_path_factory) -> dict[str, list[dict]]:
    newman = os.environ.get("NEWMAN") or shutil.which("newman")
    if newman is None or not Path(newman).exists():
        pytest.fail("newman is not installed (make test installs it with npm)", pytrace=False)
    directory = tmp_path_factory.mktemp("postman")
    registry = write_registry(directory)
    env = server_env(
        stack, directory, GATEWAY_PARTNERS_FILE=str(registry.path), GATEWAY_REDIS_URL="redis://127.0.0.1:1/0"
    )
    degraded = Server(env, workers=1, ready_path="/health")
    report = directory / "newman.json"
    try:
        run = subprocess.run(
            [
                newman, "run", str(COLLECTION), "-e", str(ENVIRONMENT),
                "--env-var", f"base_url={server.url}", "--env-var", f"ops_url={server.ops_url}",
                "--env-var", f"degraded_url={degraded.url}",
                "--env-var", f"partner_key={registry.keys['acme']}",
                "--reporters", "cli,json", "--reporter-json-export", str(report), "--timeout-request", "10000",
            ],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        degraded.stop()
    assert report.exists(), run.stdout[-3000:] + run.stderr[-2000:]
    results: dict[str, list[dict]] = {}
    for execution in json.loads(report.read_text())["run"]["executions"]:
        name = execution["item"]["name"]
        results.setdefault(name, []).extend(execution.get("assertions", []))
        if "requestError" in execution:
            results[name].append({"assertion": "request sent", "error": execution["requestError"]})
    return results


@pytest.mark.parametrize("name", REQUESTS)
def test_postman_request(newman_run, name):
    assertions = newman_run.get(name)
    assert assertions, f"newman did not run {name!r}"
    failed = [f"{a['assertion']}: {a['error'].get('message', a['error'])}" for a in assertions if "error" in a]
    assert failed == [], failed
