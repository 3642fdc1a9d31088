"""The reserve, complete and release Lua scripts against the real Redis."""

import pytest
from redis.asyncio import Redis

from gateway.idempotency.redis_pipeline import RedisPipeline
from gateway.idempotency.store import Decision, IdempotencyStore, Reservation
from gateway.telemetry.metrics import Metrics


@pytest.fixture
async def store(stack):
    # the gateway's own pipelined connection runs the scripts; redis-py is the independent observer
    pipeline, client = RedisPipeline(stack.redis_url, 2.0), Redis.from_url(stack.redis_url)
    yield IdempotencyStore(pipeline, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=86_400_000), client
    pipeline.close()
    await client.aclose()


def _reservation(unique: str, key: str = "key", txn: str = "txn", fingerprint: str = "fp-1") -> Reservation:
    return Reservation(f"partner-{unique}", f"{key}-{unique}", f"{txn}-{unique}", fingerprint)


async def test_reserve_complete_replay(store, unique):
    ids, redis = store
    r = _reservation(unique)
    assert await ids.reserve(r) == (Decision.NEW, None)
    assert await ids.reserve(r) == (Decision.IN_FLIGHT, None)
    assert await ids.complete(r, b'{"status":"deduped"}') is True
    assert await ids.reserve(r) == (Decision.REPLAY, b'{"status":"deduped"}')
    # the keys carry the partner in a hash tag, so both live in one cluster slot
    assert "{partner-" in r.idem_key and "{partner-" in r.txn_key
    assert 86_000 < await redis.ttl(r.idem_key) <= 86_400
    assert await redis.hget(r.idem_key, "state") == b"done"


async def test_reserve_detects_payload_mismatch_and_double_spend(store, unique):
    ids, _ = store
    r = _reservation(unique)
    assert (await ids.reserve(r))[0] is Decision.NEW
    assert (await ids.reserve(_reservation(unique, fingerprint="fp-2")))[0] is Decision.MISMATCH
    # same transaction id under another idempotency key: double spend, in flight or done
    assert (await ids.reserve(_reservation(unique, key="other")))[0] is Decision.TXN_TAKEN
    await ids.complete(r, b"{}")
    assert (await ids.reserve(_reservation(unique, key="other")))[0] is Decision.TXN_TAKEN


async def test_release_frees_key_and_transaction_id(store, unique):
    ids, redis = store
    r = _reservation(unique)
    await ids.reserve(r)
    assert 0 < await redis.pttl(r.idem_key) <= 30_000
    assert await ids.release(r) is True
    assert await redis.exists(r.idem_key, r.txn_key) == 0
    assert (await ids.reserve(_reservation(unique, key="other")))[0] is Decision.NEW


async def test_release_never_drops_a_completed_entry_or_another_payload(store, unique):
    ids, redis = store
    r = _reservation(unique)
    await ids.reserve(r)
    await ids.complete(r, b"{}")
    assert await ids.release(r) is False
    assert await redis.exists(r.idem_key, r.txn_key) == 2
    assert await ids.release(_reservation(unique, fingerprint="fp-2")) is False


async def test_complete_refuses_an_entry_of_another_payload(store, unique):
    ids, _ = store
    r = _reservation(unique)
    await ids.reserve(r)
    assert await ids.complete(_reservation(unique, fingerprint="fp-2"), b"{}") is False
    assert await ids.complete(r, b"{}") is True
    assert await ids.complete(r, b"{}") is False  # already done


async def test_scripts_survive_script_flush(store, unique):
    ids, redis = store
    await redis.script_flush()
    r = _reservation(unique)
    assert (await ids.reserve(r))[0] is Decision.NEW  # NOSCRIPT is answered by reloading, not by an error
    await redis.script_flush()
    assert await ids.complete(r, b"{}") is True
    await redis.script_flush()
    assert (await ids.reserve(r))[0] is Decision.REPLAY
