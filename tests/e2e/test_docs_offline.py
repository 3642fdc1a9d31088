"""/docs works without internet access: headless Chromium, with every host name but localhost made
unresolvable and every other address sent to a dead proxy, loads Swagger UI from the gateway's own
assets and lists every operation. `DOCS_SCREENSHOT=docs/swagger-ui.png deploy/test.sh -k docs_offline`
also keeps its screenshot (docs/swagger-ui.png)."""

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.servers import ROOT

# only the gateway on 127.0.0.1 is reachable: names do not resolve, addresses go to a closed port
OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
]
# Chromium's own traffic (time sync, component updates, …): not the page's, and not wanted in the log
QUIET = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-pings",
    "--disable-client-side-phishing-detection",
]


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed (make test installs it from apt)", pytrace=False)
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--window-size=1280,1600",
        *OFFLINE, *QUIET, *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


ASSETS = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css")


def page_requests(net_log: Path, site: str) -> list[str]:
    """The URLs the page (of `site`) requested, from Chromium's net log."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start_job and event.get("params", {}).get("network_isolation_key", "").startswith(site)
    ]


def test_docs_list_every_operation_offline(server, tmp_path):
    with urllib.request.urlopen(server.url + "/docs/openapi.json", timeout=5) as response:
        document = json.load(response)
    net_log = tmp_path / "net.json"
    run = chromium("--dump-dom", f"--log-net-log={net_log}", server.url + "/docs", tmp_path=tmp_path)
    dom = run.stdout
    assert "swagger-ui" in dom, run.stderr[-2000:]
    for path, operations in document["paths"].items():
        assert f'data-path="{path}"' in dom, f"{path} is not listed"
        for operation in operations.values():
            assert operation["summary"] in dom, operation["summary"]
    # everything the page asked for came from the gateway (the page's requests carry its site in their
    # network isolation key; Chromium's own background requests do not)
    page = page_requests(net_log, "http://127.0.0.1")
    assert {f"{server.url}/docs/assets/{name}" for name in ASSETS} <= set(page), page
    outside = sorted(url for url in page if not url.startswith(server.url))
    assert outside == [], outside
    # and what it looks like
    shot = tmp_path / "docs.png"
    chromium(f"--screenshot={shot}", server.url + "/docs", tmp_path=tmp_path)
    assert shot.stat().st_size > 20_000
    if os.environ.get("DOCS_SCREENSHOT"):
        (ROOT / os.environ["DOCS_SCREENSHOT"]).write_bytes(shot.read_bytes())
