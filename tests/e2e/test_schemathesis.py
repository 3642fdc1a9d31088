"""Schemathesis against the running gateway (two Granian workers, the real Redis and Kafka), driven by
the OpenAPI document the gateway serves: in open mode, and with a partner registry (a partner's bearer
key on every request).

Two `st run`s go at once, one per core, with the same seed: positive mode (what the document allows:
its examples, the coverage phase's boundary values, then fuzzing) and negative mode (what it
forbids: wrong types, missing and unknown fields, broken patterns, other media types). Every answer is
checked for a server error and against the document: its status, media type, headers and body. The
test fails on any such failure, on a run that did not complete, on fewer than MIN_REQUESTS requests,
on an operation no request reached, and on a 4xx/5xx answer that is not RFC 9457 problem+json.
"""

import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import server_env
from tests.partners import write_registry
from tests.servers import Server

SEED = 20261129
MAX_EXAMPLES = 1000  # fuzzed cases per operation in each mode; only the POST has that many to give
MIN_REQUESTS = 2000
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MODES = ("positive", "negative")
PROBLEM_MEDIA_TYPE = "application/problem+json"


def start_run(
    url: str, mode: str, out: Path, max_examples: int = MAX_EXAMPLES, headers: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`st run` in the background, with `headers` ("Name: value") on every request; its JSON run report
    and NDJSON event stream go to `out`."""
    out.mkdir()
    command = [
        str(Path(sys.executable).with_name("st")), "run", url + "/docs/openapi.json",
        "--checks", ",".join(CHECKS),
        "--mode", mode,
        "--seed", str(SEED),
        "--max-examples", str(max_examples),
        *(option for header in headers for option in ("--header", header)),
        "--generation-database", "none",  # nothing replayed from earlier runs: the seed alone decides
        "--request-timeout", "10",
        "--no-color",
        "--report", "json,ndjson",
        "--report-json-path", str(out / "run.json"),
        "--report-ndjson-path", str(out / "events.ndjson"),
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interactions(events: Path) -> list[dict]:
    """Every request the run sent and the answer it got, with the operation it was made for."""
    sent = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        for interaction in recorder.get("interactions", {}).values():  # none in a skipped scenario
            sent.append({"operation": recorder["label"], **interaction})
    return sent


def documented_operations(url: str) -> set[str]:
    """'METHOD /path' of every operation in the served document."""
    with urllib.request.urlopen(url + "/docs/openapi.json", timeout=10) as response:
        document = json.load(response)
    return {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}


def body_of(response: dict) -> bytes:
    content = response.get("content") or {}
    if "$base64" in content:
        return base64.b64decode(content["$base64"])
    return (content.get("string") or "").encode()


def run_both_modes(
    url: str, out: Path, timeout: float, max_examples: int = MAX_EXAMPLES, headers: tuple[str, ...] = ()
) -> tuple[list[dict], float]:
    """Both modes at once against `url`, each checked to have run complete and found nothing: every
    request sent and its answer, and the wall time."""
    operations = documented_operations(url)
    started = time.monotonic()
    runs: dict[str, subprocess.Popen] = {}
    outputs = {}
    try:
        for mode in MODES:
            runs[mode] = start_run(url, mode, out / mode, max_examples, headers)
        for mode, process in runs.items():
            outputs[mode], _ = process.communicate(timeout=timeout)
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.monotonic() - started

    sent: list[dict] = []
    for mode, process in runs.items():
        output = outputs[mode]
        report = json.loads((out / mode / "run.json").read_text())
        assert process.returncode == 0 and report["exit_code"] == 0, f"schemathesis, {mode} mode:\n{output[-12000:]}"
        assert report["complete"] and report["seed"] == SEED, output[-4000:]
        assert report["failures"] == [] and report["errors"] == [], output[-12000:]
        assert report["operations"]["errored"] == 0 and report["operations"]["selected"] == len(operations)
        sent += interactions(out / mode / "events.ndjson")
    return sent, elapsed


def check_answers(sent: list[dict], operations: set[str], min_requests: int, submit_statuses: set[int]) -> str:
    """Every operation reached and answered, no server error, the submission's `submit_statuses`
    among its answers, every error answer a problem; a summary of the run."""
    # every operation got requests of its own method, and answers
    exercised = Counter(i["operation"] for i in sent if i["operation"].startswith(i["request"]["method"] + " "))
    assert set(exercised) == operations, (operations, exercised)
    assert len(sent) >= min_requests, f"only {len(sent)} requests: {exercised}"
    unanswered = [i["request"] for i in sent if i["response"] is None]
    assert not unanswered, unanswered[:3]

    statuses = Counter((i["operation"], i["response"]["status_code"]) for i in sent)
    server_errors = {key: n for key, n in statuses.items() if key[1] >= 500}
    assert not server_errors, server_errors
    # the happy path and the partner's mistakes were both reached
    submit = "POST /api/v1/transactions"
    assert submit_statuses <= {status for operation, status in statuses if operation == submit}, statuses

    # RFC 9457: every error answer, whichever operation or method, is a problem naming its own status
    for interaction in sent:
        response = interaction["response"]
        if response["status_code"] < 400:
            continue
        content_type = response["headers"].get("content-type", [""])[0]
        assert content_type.split(";")[0] == PROBLEM_MEDIA_TYPE, interaction
        problem = json.loads(body_of(response))
        assert problem["status"] == response["status_code"] and problem["type"] and problem["title"], interaction
        assert response["headers"].get("x-request-id"), interaction
    return (
        f"{len(sent)} requests, {len(exercised)} operations {dict(exercised)}, "
        f"statuses {dict(sorted(Counter(i['response']['status_code'] for i in sent).items()))}"
    )


# The two runs share two cores with the gateway, Redis and Kafka. One positive run alone took 192 s
# (the previous commit) and 213 s (this one) on 2026-11-30, so the pair needs more than the 240 s they
# had; a run that hangs still fails, at 540 s.
@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error_and_no_departure_from_the_document(server, tmp_path):
    sent, elapsed = run_both_modes(server.url, tmp_path, timeout=540)
    summary = check_answers(sent, documented_operations(server.url), MIN_REQUESTS, {202, 200, 400, 415, 422})
    print(f"schemathesis: {summary}, {elapsed:.1f} s")


# With a partner registry the same operations answer behind a bearer key, which every request carries
# (a non-signing partner without limits, so that the answers are the operations' own). The registry
# mode's own refusals (401, 403, 429) are checked by tests of their own (tests/integration/
# test_partners.py, test_partner_limits.py); this run checks that nothing else changes shape behind
# the key. make test is at its budget, so it fuzzes REGISTRY_MAX_EXAMPLES cases per operation and mode
# instead of MAX_EXAMPLES: the examples and the coverage phase are whole, and on 2026-12-07 the pair of
# runs sent 2,069 requests in 15 s (100 cases: 3,085 in 30 s; the open run takes over 200 s).
REGISTRY_MAX_EXAMPLES = 50
REGISTRY_MIN_REQUESTS = 1500


@pytest.fixture(scope="module")
def registry_server(stack, tmp_path_factory):
    directory = tmp_path_factory.mktemp("registry-gateway")
    registry = write_registry(directory)
    gateway = Server(server_env(stack, directory, GATEWAY_PARTNERS_FILE=str(registry.path)))
    yield gateway, registry
    gateway.stop()


@pytest.mark.timeout(300)
def test_schemathesis_behind_a_partner_key_finds_no_server_error_and_no_departure(registry_server, tmp_path):
    server, registry = registry_server
    key = f"Authorization: {registry.bearer('globex')['authorization']}"
    sent, elapsed = run_both_modes(
        server.url, tmp_path, timeout=240, max_examples=REGISTRY_MAX_EXAMPLES, headers=(key,)
    )
    summary = check_answers(sent, documented_operations(server.url), REGISTRY_MIN_REQUESTS, {202, 200, 400, 415, 422})
    print(f"schemathesis behind a partner key: {summary}, {elapsed:.1f} s")
