"""The partner registry changed under a running two-worker gateway, as an operator changes it: a partner's
only key revoked in the file is refused by every worker within the reload interval; a file written in
place is never served half-written without a log line and the metric saying what it lost; a bad file is
an error in /ready and the metrics until a good one is served; a file renamed over the old one is seen.

Requests are status queries (404 once the key is accepted, 401 when refused), each on a fresh connection
so both workers answer them; the metrics are read from the workers' own files."""

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.partners.registry import new_key
from tests.e2e.conftest import server_env
from tests.servers import Server

INTERVAL = 1.0  # GATEWAY_PARTNERS_RELOAD_SECONDS of this server
SLACK = 0.5  # a worker's look, read and parse on a loaded two-core machine


class Partners(NamedTuple):
    path: Path
    ids: dict[str, str]  # role -> partner id
    keys: dict[str, str]  # role -> API key
    digests: dict[str, str]

    def text(self, revoked: frozenset[str] = frozenset(), without: frozenset[str] = frozenset()) -> str:
        """The registry: one partner per role, each with one key, `revoked` ones revoked, `without` left out."""
        tables = [
            f'[partners.{self.ids[role]}]\nkeys = [{{ id = "k1", sha256 = "{self.digests[role]}"'
            f"{', revoked = true' if role in revoked else ''} }}]\n"
            for role in self.ids
            if role not in without
        ]
        return "# the partners of one e2e run\n" + "\n".join(tables)

    def rename_into_place(self, text: str) -> None:
        """The documented way: a new file beside the old one, renamed over it."""
        new = self.path.with_name(self.path.name + ".new")
        new.write_text(text)
        os.replace(new, self.path)


@pytest.fixture(scope="module")
def partners(tmp_path_factory) -> Partners:
    directory = tmp_path_factory.mktemp("registry")
    suffix = uuid.uuid4().hex[:8]
    roles = ("acme", "zeta", "globex")
    made = {role: new_key() for role in roles}
    found = Partners(
        directory / "partners.toml",
        {role: f"{role}-{suffix}" for role in roles},
        {role: key for role, (key, _) in made.items()},
        {role: digest for role, (_, digest) in made.items()},
    )
    found.path.write_text(found.text())
    return found


@pytest.fixture(scope="module")
def gateway(stack, partners):
    directory = partners.path.parent
    env = server_env(
        stack,
        directory,
        GATEWAY_PARTNERS_FILE=str(partners.path),
        GATEWAY_PARTNERS_RELOAD_SECONDS=str(INTERVAL),
    )
    server = Server(env)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def every_partner_served(gateway, partners):
    """Each test starts from the whole registry, served by both workers."""
    partners.rename_into_place(partners.text())
    # 12 fresh connections a partner, all accepted: both workers serve it (one lagging refuses zeta, say)
    until(lambda: all(status(gateway, partners.keys[role]) == 404 for role in partners.ids for _ in range(12)), 30)


def status(server: Server, key: str) -> int:
    """The status of a status query with `key`, on a fresh connection."""
    request = urllib.request.Request(
        f"{server.url}/api/v1/transactions/txn_{uuid.uuid4().hex}", headers={"authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def until(condition: Callable[[], bool], timeout: float = 10 * INTERVAL) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def metric(partners: Partners, name: str, **labels: str) -> float:
    """A metric over the workers (counters summed, gauges as their multi-process mode says), read from the
    workers' own files (server_env puts them beside the registry)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(partners.path.parent / "metrics"))
    return registry.get_sample_value(name, labels) or 0.0


def ready_warning(server: Server) -> str:
    """The warning of /ready, which answers 200 throughout ("" when there is none), on a fresh connection:
    either worker's."""
    with urllib.request.urlopen(server.url + "/ready", timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read()).get("warning") or ""


def every_worker_warns(server: Server, warns: bool) -> bool:
    """Whether 6 answers of /ready in a row (both workers, very likely) warn of a failed reload, or none does."""
    return all(("partner registry reload failed" in ready_warning(server)) is warns for _ in range(6))


def test_a_partners_only_key_revoked_in_the_file_is_refused_by_every_worker_within_the_interval(gateway, partners):
    zeta = partners.keys["zeta"]
    lines_before = len(gateway.log_lines())
    partners.path.write_text(partners.text(revoked=frozenset({"zeta"})))  # in place, as an editor saves it
    written = time.monotonic()
    answers: list[tuple[float, int]] = []
    while time.monotonic() - written < INTERVAL + SLACK + 1.5:
        answers.append((time.monotonic() - written, status(gateway, zeta)))
    accepted = [at for at, code in answers if code != 401]
    last_accepted = max(accepted, default=0.0)
    print(f"revoked: last accepted {last_accepted:.3f} s after the write, {len(answers)} queries")
    assert {code for _, code in answers} <= {401, 404}, answers
    assert last_accepted < INTERVAL + SLACK, answers
    assert sum(1 for at, code in answers if at >= INTERVAL + SLACK and code == 401) >= 10
    assert status(gateway, partners.keys["acme"]) == 404  # everyone else is served as before
    logged = "\n".join(gateway.log_lines()[lines_before:])
    # each worker says it, naming the partner and key id and never the digest
    assert logged.count(f"partner {partners.ids['zeta']} has no active key: it is locked out") == 2, logged
    assert logged.count(f"partner registry reload revokes keys {partners.ids['zeta']}/k1") == 2, logged
    assert partners.digests["zeta"] not in logged
    assert "partner registry" not in ready_warning(gateway)


def test_a_file_renamed_into_place_is_served(gateway, partners):
    zeta_new, zeta_new_digest = new_key()
    text = partners.text().replace(partners.digests["zeta"], zeta_new_digest)
    partners.rename_into_place(text)
    written = time.monotonic()
    # both workers serve it: the new key accepted and the old one refused, 12 fresh connections each in a
    # row (the kernel spreads them over the two workers; one lagging worker answers the old key 404)
    until(
        lambda: all(
            status(gateway, zeta_new) == 404 and status(gateway, partners.keys["zeta"]) == 401 for _ in range(12)
        ),
        INTERVAL + SLACK + 2,
    )
    print(f"renamed: served by both workers {time.monotonic() - written:.3f} s after the rename")


def test_a_file_written_in_place_is_never_served_half_written_unsaid(gateway, partners):
    removed = metric(partners, "settlement_partner_registry_removed_total", kind="partner")
    whole = partners.text()
    half = partners.text(without=frozenset({"globex"}))  # valid TOML: what a reader finds before the end
    assert whole.startswith(half)
    lines_before = len(gateway.log_lines())

    # written in two steps 0.1 s apart: within the settle time, so never served
    with partners.path.open("w") as file:
        file.write(half)
        file.flush()
        time.sleep(0.1)
        file.write(whole[len(half) :])
    time.sleep(2 * INTERVAL + SLACK)
    assert metric(partners, "settlement_partner_registry_removed_total", kind="partner") == removed
    assert "removes partners" not in "\n".join(gateway.log_lines()[lines_before:])
    assert status(gateway, partners.keys["globex"]) == 404

    # the writer stops half-way for longer than an interval: every worker serves the half, and says so
    with partners.path.open("w") as file:
        file.write(half)
        file.flush()
        time.sleep(INTERVAL + SLACK + 0.5)
        until(lambda: all(status(gateway, partners.keys["globex"]) == 401 for _ in range(12)), 2)
        file.write(whole[len(half) :])
    logged = "\n".join(gateway.log_lines()[lines_before:])
    assert logged.count(f"partner registry reload removes partners {partners.ids['globex']}") == 2, logged
    assert partners.digests["globex"] not in logged
    assert metric(partners, "settlement_partner_registry_removed_total", kind="partner") == removed + 2
    until(lambda: all(status(gateway, partners.keys["globex"]) == 404 for _ in range(6)), 2 * INTERVAL + 2)


def test_a_failed_reload_is_in_ready_and_the_metrics_until_a_good_one(gateway, partners):
    failed = metric(partners, "settlement_partner_registry_reloads_total", outcome="failed")
    assert metric(partners, "settlement_partner_registry_reload_failed") == 0
    loaded_at = metric(partners, "settlement_partner_registry_loaded_timestamp_seconds")
    assert loaded_at > 0
    partners.rename_into_place(partners.text() + "\n[partners.broken\n")

    until(lambda: every_worker_warns(gateway, True))
    warning = ready_warning(gateway)
    assert "partner registry reload failed at 20" in warning, warning
    assert f": partner registry {partners.path}: " in warning and "line" in warning, warning
    assert "; serving the registry loaded at 20" in warning, warning
    until(lambda: metric(partners, "settlement_partner_registry_reload_failed") == 1)
    until(lambda: metric(partners, "settlement_partner_registry_reloads_total", outcome="failed") == failed + 2)
    assert status(gateway, partners.keys["acme"]) == 404  # the previous registry serves

    partners.rename_into_place(partners.text(revoked=frozenset({"acme"})))
    until(lambda: status(gateway, partners.keys["acme"]) == 401 and every_worker_warns(gateway, False))
    until(lambda: metric(partners, "settlement_partner_registry_reload_failed") == 0)
    assert metric(partners, "settlement_partner_registry_loaded_timestamp_seconds") > loaded_at
