"""The webhook outbox (migration 0006, processor/webhooks/outbox.py) against the real Kafka and PostgreSQL: the
fold and the lifecycle step write the events of the subscribed partners, in the transaction of the
change, once each, with bodies the status API would give at that moment."""

import os
from datetime import UTC, datetime

import jsonschema_rs
import msgspec
import psycopg
from litestar.testing import TestClient
from psycopg import sql

from gateway.api.app import create_app
from processor.webhooks.outbox import channel
from tests.integration.settlement import Setup, accepted, another_instruction, fold_until, produce, produce_to

ALL = frozenset(
    {
        "transaction.batched",
        "transaction.moved",
        "transaction.settled",
        "transaction.conflict",
        "batch.closed",
        "batch.settled",
    }
)


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def subscribe(setup: Setup, path, subscriptions: dict[str, frozenset[str]]) -> None:
    """A registry at `path` subscribing each partner to its event types, and the setup's processor on it."""
    path.write_text(
        "".join(
            f'[partners.{partner}]\nrate = 10\nwebhook = {{ url = "http://127.0.0.1:9/hook", secret = "{SECRET}",'
            f" events = {sorted(kinds)} }}\n"
            for partner, kinds in subscriptions.items()
        )
    )
    setup.settings = msgspec.structs.replace(setup.settings, partners_file=str(path))


def _events(setup: Setup) -> list[tuple]:
    return setup.sql("SELECT partner, event_type, subject, event_id, payload FROM webhook_events ORDER BY sequence")


def test_a_batch_s_life_writes_each_subscribed_partner_s_events_once_shaped_like_the_status_api(setup, tmp_path):
    partner, other, silent = setup.gateway.partner, f"{setup.gateway.partner}-b", f"{setup.gateway.partner}-c"
    events = [accepted(partner, n, amount=f"{n}.50") for n in (1, 2)]
    events += [accepted(other, 3), accepted(silent, 4)]
    produce(setup, events)
    now = [datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()]
    batch, next_batch = "t1-20261201-GBP", "t1-20261202-GBP"
    subscribe(
        setup, tmp_path / "partners.toml", {partner: ALL, other: frozenset({"batch.settled", "transaction.settled"})}
    )
    with setup.processor(lambda: now[0]) as processor:
        processor.follow_registry()  # as run() does before its first fold
        fold_until(processor, lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] == 4, "folded")
        processor.tick()
        assert sorted((p, t, s) for p, t, s, *_ in _events(setup)) == [  # in the order the partitions were read
            (partner, "transaction.batched", "transactions/txn-1"),
            (partner, "transaction.batched", "transactions/txn-2"),
        ]
        now[0] = datetime(2026, 12, 1, 0, 1, 1, tzinfo=UTC).timestamp()  # closed (midnight + grace)
        processor.tick()
        produce(setup, [accepted(partner, 5, amount="5.00")])  # read after its batch closed: moved
        fold_until(processor, lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] == 5, "late one")
        now[0] = datetime(2026, 12, 1, 16, 0, tzinfo=UTC).timestamp()  # settled
        processor.tick()
        processor.tick()  # a second step at the same time writes nothing twice
    written = _events(setup)
    assert [(p, t, s) for p, t, s, *_ in written[2:]] == [
        (partner, "batch.closed", f"batches/{batch}"),
        (partner, "transaction.moved", "transactions/txn-5"),
        (partner, "transaction.settled", "transactions/txn-1"),
        (partner, "transaction.settled", "transactions/txn-2"),
        (other, "transaction.settled", "transactions/txn-3"),
        (partner, "batch.settled", f"batches/{batch}"),
        (other, "batch.settled", f"batches/{batch}"),
    ]
    assert len({event_id for *_, event_id, _ in written}) == len(written)
    # the bodies: {type, timestamp, data}, data as the status API answered at the change
    bodies = {(p, t, s): body for p, t, s, _, body in written}
    settled = bodies[(partner, "transaction.settled", "transactions/txn-1")]
    assert (settled["type"], settled["timestamp"]) == ("transaction.settled", "2026-12-01T16:00:00.000Z")
    moved = bodies[(partner, "transaction.moved", "transactions/txn-5")]["data"]
    assert (moved["status"], moved["late"], moved["batch"], moved["routed_batch"]) == (
        "batched",
        True,
        next_batch,
        batch,
    )
    with TestClient(create_app(setup.gateway)) as client:
        assert client.get("/api/v1/transactions/txn-1").json() == settled["data"]
        batch_view = client.get(f"/api/v1/batches/{batch}").json()
    assert bodies[(partner, "batch.settled", f"batches/{batch}")]["data"] == batch_view
    assert batch_view["transaction_count"] == 2 and batch_view["late_transactions"] == ["txn-5"]
    closed = bodies[(partner, "batch.closed", f"batches/{batch}")]["data"]
    assert (closed["status"], closed["settled_at"], closed["totals"]) == ("closed", None, {"USD": "4.00"})
    other_share = bodies[(other, "batch.settled", f"batches/{batch}")]["data"]
    assert (other_share["transaction_count"], other_share["totals"]) == (1, {"USD": "10.00"})
    assert setup.sql("SELECT count(*) FROM webhook_events WHERE partner = %s", silent) == [(0,)]
    _valid_as_documented(setup, written)
    setup.invariants()
    setup.assert_replay_matches()  # the outbox is no part of the digest: the replay notifies nobody


def test_another_instruction_under_a_transaction_id_is_a_conflict_event_after_the_batched_one(setup, tmp_path):
    partner = setup.gateway.partner
    first = accepted(partner, 1, amount="10.00")
    second = another_instruction(first, "99.00", at="2026-11-30T10:00:05.000Z")
    produce_to(setup, [(first, 0), (second, 0)])
    subscribe(setup, tmp_path / "partners.toml", {partner: frozenset({"transaction.batched", "transaction.conflict"})})
    with setup.processor(lambda: datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()) as processor:
        processor.follow_registry()
        fold_until(processor, lambda: setup.sql("SELECT count(*) FROM conflicts")[0][0] == 1, "the conflict")
    written = _events(setup)
    assert [(t, s) for _, t, s, *_ in written] == [
        ("transaction.batched", "transactions/txn-1"),
        ("transaction.conflict", "transactions/txn-1"),
    ]
    _valid_as_documented(setup, written)
    conflict = written[1][4]["data"]
    assert (conflict["amount"], conflict["status"]) == ("10.00", "batched")  # the transaction that stands
    assert (conflict["conflict"]["amount"], conflict["conflict"]["batch"]) == ("99.00", "t1-20261201-GBP")
    assert conflict["conflict"]["kafka"]["offset"] == 1


def _valid_as_documented(setup: Setup, written: list[tuple]) -> None:
    """Every body is what the OpenAPI document's `webhooks` says its type sends (formats checked too)."""
    document = create_app(setup.gateway).openapi_schema.to_schema()
    for _, event_type, _, _, body in written:
        media = document["webhooks"][event_type]["post"]["requestBody"]["content"]["application/json"]
        validator = jsonschema_rs.validator_for({**media["schema"], "components": document["components"]},
                                                validate_formats=True)  # fmt: skip
        errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, (event_type, errors)


def test_the_processor_follows_the_registry_file_s_subscriptions(setup, tmp_path):
    registry, partner = tmp_path / "partners.toml", setup.gateway.partner
    subscribe(setup, registry, {partner: frozenset({"transaction.batched"})})
    with setup.processor(lambda: datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()) as processor:
        processor.follow_registry()
        assert setup.sql("SELECT partner, event_type FROM webhook_subscriptions") == [(partner, "transaction.batched")]
        subscribe(setup, registry, {partner: frozenset({"batch.settled", "transaction.settled"})})
        os.utime(registry, ns=(0, 10**9))  # a change the stamp sees, however coarse the file system's clock
        processor.follow_registry()
        assert setup.sql("SELECT event_type FROM webhook_subscriptions ORDER BY 1") == [
            ("batch.settled",),
            ("transaction.settled",),
        ]
        registry.write_text("[partners.x\n")  # broken: the last good subscriptions stay
        processor.follow_registry()
        assert len(setup.sql("SELECT * FROM webhook_subscriptions")) == 2


def test_the_fold_announces_its_events_when_it_commits_so_the_deliverer_need_not_poll(setup, tmp_path):
    partner = setup.gateway.partner
    subscribe(setup, tmp_path / "partners.toml", {partner: frozenset({"transaction.batched"})})
    listener = psycopg.connect(setup.database, autocommit=True)
    listener.execute(sql.SQL("LISTEN {}").format(channel(setup.settings.database_schema)))
    produce(setup, [accepted(partner, 1), accepted(f"{partner}-unsubscribed", 2)])
    try:
        with setup.processor(lambda: datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()) as processor:
            processor.follow_registry()
            fold_until(processor, lambda: setup.sql("SELECT count(*) FROM transactions")[0][0] == 2, "folded")
        announced = list(listener.notifies(timeout=5, stop_after=1))
    finally:
        listener.close()
    assert len(announced) == 1 and announced[0].channel == f"webhook_events_{setup.settings.database_schema}"
    assert setup.sql("SELECT count(*) FROM webhook_events") == [(1,)]
