"""One answer per transaction for as long as the ledger knows it, against the real Redis, Kafka and
PostgreSQL: a transaction id once accepted is never accepted again, its exact resubmission gets its
original answer however old it is and whatever changed since (the partner's grant, the amount limits,
the calendar's horizon)."""

import asyncio
import re
import time
import uuid

import msgspec
from litestar.testing import AsyncTestClient

from gateway.api import app as app_module
from gateway.api.app import create_app
from gateway.partners.registry import new_key
from settlement.rules import default_rules_path
from tests.conftest import transaction
from tests.integration.settlement import stop_process
from tests.kafka_log import headers_of, read_topic

URL = "/api/v1/transactions/"
JSON = {"content-type": "application/json"}


async def _until_batched(setup, transaction_id: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not setup.sql("SELECT 1 FROM transactions WHERE transaction_id = %s", transaction_id):
        assert time.monotonic() < deadline, f"{transaction_id} not batched within {seconds}s"
        await asyncio.sleep(0.05)


def _records(settings, transaction_id: str) -> list:
    """Every record of `transaction_id` in the test's own topics."""
    return [
        record
        for window in ("rtgs", "t0", "t1")
        for record in read_topic(settings.kafka_bootstrap, settings.topic(window))
        if headers_of(record)["ce_subject"] == transaction_id.encode()
    ]


async def test_an_id_is_answered_from_the_ledger_once_its_key_has_expired(setup, unique):
    """Keys kept 2 s: after that the id's guard and the ledger answer. The exact resubmission gets its
    original 200 byte for byte (then from Redis again); the same id with another amount is a conflict
    and the ledger keeps the first amount; the same payment under a new key is answered too."""
    settings = msgspec.structs.replace(
        setup.gateway,
        idempotency_ttl_seconds=2,
        pending_ttl_seconds=2,
        delivery_timeout_ms=1000,
        in_doubt_margin_ms=100,
        transaction_id_ttl_seconds=3600,
    )
    body = transaction(unique)
    setup.store().close()
    processor = setup.start()
    try:
        async with AsyncTestClient(create_app(settings)) as client:
            accepted = await client.post(URL, json=body, headers=JSON)
            assert accepted.status_code == 202, accepted.text
            replay = await client.post(URL, json=body, headers=JSON)
            assert replay.status_code == 200, replay.text
            await _until_batched(setup, body["transaction_id"])
            await asyncio.sleep(2.2)  # the idempotency key has expired; the id is still guarded
            late = await client.post(URL, json=body, headers=JSON)
            assert late.status_code == 200, late.text
            assert late.content == replay.content and late.headers["idempotent-replayed"] == "true"
            again = await client.post(URL, json=body, headers=JSON)  # completed again: Redis answers
            assert again.status_code == 200 and again.content == replay.content
            await asyncio.sleep(2.2)
            other = {**body, "idempotency_key": f"new-{unique}", "amount": 999.99}
            conflict = await client.post(URL, json=other, headers=JSON)
            assert conflict.status_code == 409, conflict.text
            assert conflict.json()["type"].endswith("transaction-id-conflict")
            same = await client.post(URL, json={**body, "idempotency_key": f"newer-{unique}"}, headers=JSON)
            assert same.status_code == 200 and same.content == replay.content, same.text
            status = (await client.get(f"/api/v1/transactions/{body['transaction_id']}")).json()
            # in bulk too: the replay is 200, the conflict 409, each from the ledger
            await asyncio.sleep(2.2)
            bulk = await client.post(
                "/api/v1/transactions/bulk", json=[body, {**other, "idempotency_key": f"bulk-{unique}"}]
            )
            assert [item["status"] for item in bulk.json()["results"]] == [200, 409], bulk.text
            assert msgspec.json.encode(bulk.json()["results"][0]["body"]) == replay.content
    finally:
        stop_process(processor)
    assert status["status"] == "batched" and status["amount"] == "250.00"
    assert setup.sql("SELECT amount::text FROM transactions WHERE transaction_id = %s", body["transaction_id"]) == [
        ("250.00",)
    ]
    assert len(_records(settings, body["transaction_id"])) == 1  # one record, whatever was asked since


def _registry(path, partner: str, key_digest: str, windows: list[str]) -> None:
    path.write_text(
        f'[partners.{partner}]\nwindows = {windows}\nkeys = [{{ id = "k1", sha256 = "{key_digest}" }}]\n'.replace(
            "'", '"'
        )
    )


def _rules(path, usd_maximum: int) -> str:
    """The shipped rules with the USD maximum changed."""
    text = default_rules_path().read_text()
    text, count = re.subn(
        r"^USD = \{ high_value = *[\d_]+, max_amount = *[\d_]+ \}",
        f"USD = {{ high_value = {usd_maximum}, max_amount = {usd_maximum} }}",
        text,
        flags=re.M,
    )
    assert count == 1
    path.write_text(text)
    return str(path)


def _compiled_long_ago(monkeypatch) -> None:
    """Gateways whose calendar was compiled when they started, years ago (GATEWAY_FIXED_TIME now lies
    past its horizon): what a gateway running long past its rules' years_ahead meets."""
    build_policy = app_module.build_policy

    def started_long_ago(settings):
        return build_policy(msgspec.structs.replace(settings, fixed_time="2020-06-01T12:00:00Z"))

    monkeypatch.setattr(app_module, "build_policy", started_long_ago)


async def test_a_replay_gets_its_original_answer_whatever_changed_since(stack, tmp_path, log, monkeypatch, unique):
    """Accepted under a grant of t1 and t0, today's rules and clock; replayed after the grant was
    narrowed to t0, the USD maximum lowered under its amount and the clock moved past the calendar's
    horizon: 200 with the original answer, single and bulk, while a new transaction is refused by each."""
    partner, (key, digest) = f"p-{uuid.uuid4().hex[:8]}", new_key()
    auth = {**JSON, "authorization": f"Bearer {key}"}
    before, after = tmp_path / "before.toml", tmp_path / "after.toml"
    _registry(before, partner, digest, ["t1", "t0"])
    _registry(after, partner, digest, ["t0"])
    later = "2027-06-01T12:00:00Z"  # past the horizon of a calendar compiled in 2020 (503)
    body = transaction(unique)  # USD 250.00 in t1
    then = msgspec.structs.replace(stack, partners_file=str(before), partners_reload_seconds=0)
    async with AsyncTestClient(create_app(then)) as client:
        accepted = await client.post(URL, json=body, headers=auth)
        assert accepted.status_code == 202, accepted.text
        original = await client.post(URL, json=body, headers=auth)
        assert original.status_code == 200
    lowered = _rules(tmp_path / "max.toml", usd_maximum=100)
    changed = {
        "grant": msgspec.structs.replace(then, partners_file=str(after)),
        "maximum": msgspec.structs.replace(then, rules_path=lowered),
        "clock": msgspec.structs.replace(then, fixed_time=later),
        "all": msgspec.structs.replace(then, partners_file=str(after), rules_path=lowered, fixed_time=later),
    }
    refusals = {"grant": 403, "maximum": 422, "clock": 503, "all": 422}
    for change, settings in changed.items():
        if change == "clock":
            _compiled_long_ago(monkeypatch)
        async with AsyncTestClient(create_app(settings)) as client:
            fresh = transaction(f"{unique}-{change}")
            refused = await client.post(URL, json=fresh, headers=auth)
            assert refused.status_code == refusals[change], (change, refused.text)
            replay = await client.post(URL, json=body, headers=auth)
            assert replay.status_code == 200, (change, replay.text)
            assert replay.content == original.content, change
            bulk = await client.post("/api/v1/transactions/bulk", json=[body, fresh], headers=auth)
            results = bulk.json()["results"]
            assert [r["status"] for r in results] == [200, refusals[change]], (change, bulk.text)
            assert msgspec.json.encode(results[0]["body"]) == original.content
    assert len(log.records(body["transaction_id"])) == 1
