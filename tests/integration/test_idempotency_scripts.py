"""The reserve, complete and release Lua scripts against the real Redis: one node, and a Redis Cluster
(where the same decisions are taken in steps by the sharded store)."""

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterObserver

from gateway.idempotency.redis_cluster import RedisCluster, key_slot
from gateway.idempotency.redis_pipeline import RedisPipeline
from gateway.idempotency.sharded import ShardedIdempotencyStore
from gateway.idempotency.store import Decision, IdempotencyStore, Reservation
from gateway.telemetry.metrics import Metrics


@pytest.fixture(params=["one node", "cluster"])
async def store(request, stack):
    # the gateway's own pipelined connections run the scripts; redis-py is the independent observer
    if request.param == "one node":
        client, observer = RedisPipeline(stack.redis_url, 2.0), Redis.from_url(stack.redis_url)
        ids = IdempotencyStore(client, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=86_400_000)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        client, observer = RedisCluster(cluster.url, 2.0), ClusterObserver.from_url(cluster.url.split(",")[0])
        ids = ShardedIdempotencyStore(client, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=86_400_000)
    yield ids, observer
    client.close()
    await observer.aclose()


def _reservation(ids, unique: str, key: str = "key", txn: str = "txn", fingerprint: str = "fp-1") -> Reservation:
    return Reservation(f"partner-{unique}", f"{key}-{unique}", f"{txn}-{unique}", fingerprint, layout=ids.layout)


async def test_reserve_complete_replay(store, unique):
    ids, redis = store
    r = _reservation(ids, unique)
    assert await ids.reserve(r) == (Decision.NEW, None)
    assert await ids.reserve(r) == (Decision.IN_FLIGHT, None)
    assert await ids.complete(r, b'{"status":"deduped"}') is True
    assert await ids.reserve(r) == (Decision.REPLAY, b'{"status":"deduped"}')
    # the keys carry the partner in a hash tag: on one node both in the partner's slot, so one script
    # decides them; on a cluster each in one of the partner's 64 entry or id slots
    assert r.idem_key.startswith(f"idem:{{partner-{unique}") and r.txn_key.startswith(f"txn:{{partner-{unique}")
    if ids.layout.spread:
        assert "}" in r.idem_key.split(".", 1)[1] and "}" in r.txn_key.split(".", 1)[1]
    else:
        assert key_slot(r.idem_key) == key_slot(r.txn_key)
    assert 86_000 < await redis.ttl(r.idem_key) <= 86_400
    assert await redis.hget(r.idem_key, "state") == b"done"


async def test_reserve_detects_payload_mismatch_and_double_spend(store, unique):
    ids, redis = store
    r = _reservation(ids, unique)
    assert (await ids.reserve(r))[0] is Decision.NEW
    assert (await ids.reserve(_reservation(ids, unique, fingerprint="fp-2")))[0] is Decision.MISMATCH
    # same transaction id under another idempotency key: double spend, in flight or done; the other
    # key is left unclaimed (a cluster holds it for a moment, then drops it)
    other = _reservation(ids, unique, key="other")
    assert (await ids.reserve(other))[0] is Decision.TXN_TAKEN
    await ids.complete(r, b"{}")
    assert (await ids.reserve(other))[0] is Decision.TXN_TAKEN
    assert await redis.exists(other.idem_key) == 0


async def test_release_frees_key_and_transaction_id(store, unique):
    ids, redis = store
    r = _reservation(ids, unique)
    await ids.reserve(r)
    assert 0 < await redis.pttl(r.idem_key) <= 30_000
    assert await ids.release(r) is True
    assert await redis.exists(r.idem_key, r.txn_key) == 0
    assert (await ids.reserve(_reservation(ids, unique, key="other")))[0] is Decision.NEW


async def test_release_never_drops_a_completed_entry_or_another_payload(store, unique):
    ids, redis = store
    r = _reservation(ids, unique)
    await ids.reserve(r)
    await ids.complete(r, b"{}")
    assert await ids.release(r) is False
    assert await redis.exists(r.idem_key, r.txn_key) == 2
    assert await ids.release(_reservation(ids, unique, fingerprint="fp-2")) is False


async def test_complete_refuses_an_entry_of_another_payload(store, unique):
    ids, _ = store
    r = _reservation(ids, unique)
    await ids.reserve(r)
    assert await ids.complete(_reservation(ids, unique, fingerprint="fp-2"), b"{}") is False
    assert await ids.complete(r, b"{}") is True
    assert await ids.complete(r, b"{}") is False  # already done


async def test_scripts_survive_script_flush(store, unique):
    ids, redis = store
    await redis.script_flush()
    r = _reservation(ids, unique)
    assert (await ids.reserve(r))[0] is Decision.NEW  # NOSCRIPT is answered by reloading, not by an error
    await redis.script_flush()
    assert await ids.complete(r, b"{}") is True
    await redis.script_flush()
    assert (await ids.reserve(r))[0] is Decision.REPLAY
