"""The gateway's Redis Cluster client and cluster store against a real Redis Cluster (3 masters, 3
replicas): slot routing, MOVED and ASK redirects, a master killed and replaced, the partner spread."""

import asyncio
import hashlib
import time
from collections import Counter

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from gateway.api.app import create_app
from gateway.idempotency.cluster import ClusterStore
from gateway.idempotency.reservation import Reservation
from gateway.idempotency.store import Decision
from gateway.partners.admission import unlimited
from gateway.redis.cluster import RedisCluster, is_cluster_url, key_slot, seeds_of
from gateway.redis.errors import RedisUnavailable
from gateway.redis.pipeline import Script
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable
from tests.conftest import transaction

ECHO_KEY = Script("return {KEYS[1], redis.call('INCR', KEYS[1])}")


@pytest.fixture
async def cluster(redis_cluster):
    client = RedisCluster(redis_cluster.url, 2.0)
    await client.connect()
    yield client
    client.close()


def _node(port: int) -> Redis:
    return Redis(host="127.0.0.1", port=port)


async def _node_id(port: int) -> str:
    async with _node(port) as node:
        return (await node.execute_command("CLUSTER", "MYID")).decode()


def test_cluster_urls():
    assert is_cluster_url("redis://a:1,b:2") and not is_cluster_url("redis://a:1/0")
    assert seeds_of("rediss://user:pw@a:1,[::1]:2/0") == ("rediss://user:pw@", [("a", 1), ("::1", 2)])
    with pytest.raises(ValueError, match="only database 0"):
        seeds_of("redis://a:1,b:2/3")


async def test_slot_of_every_kind_of_key_is_the_clusters(cluster):
    keys = ["plain", "{tag}x", "x{tag}", "{}whole", "{a}{b}", "{{nested}}", "idem:{p.7}:abc", "é{ü}", "a{}b{c}"]
    for key in keys:
        assert key_slot(key) == await cluster.execute("CLUSTER", "KEYSLOT", key), key


async def test_commands_reach_every_master_in_order(cluster, unique):
    keys = [f"{{k{n}}}-{unique}" for n in range(300)]
    assert len({cluster._owners[key_slot(k)] for k in keys}) == 3  # every master takes a share
    replies = await asyncio.gather(*(cluster.run_script(ECHO_KEY, [k], []) for k in keys for _ in range(3)))
    assert [count for _, count in replies] == [1, 2, 3] * 300
    assert [key.decode() for key, _ in replies] == [k for k in keys for _ in range(3)]


async def test_moved_and_ask_redirects_are_followed(cluster, redis_cluster, unique):
    """A slot migrated from one master to another, as a resharding does: during the migration a key
    already moved is answered through ASK; afterwards the stale map meets MOVED and is corrected."""
    await _settled(redis_cluster)
    key = f"moving-{unique}"
    slot = key_slot(key)
    source = cluster._owners[slot][1]
    target = next(port for _, port in cluster.masters if port != source)
    source_id, target_id = await _node_id(source), await _node_id(target)
    async with _node(source) as src, _node(target) as dst:
        await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        try:
            # the key is not on the source, so the source answers ASK and the target runs it after ASKING
            assert await cluster.run_script(ECHO_KEY, [key], []) == [key.encode(), 1]
            assert await cluster.execute("GET", key) == b"1"  # a plain command follows ASK too
            for node in (dst, src):
                await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            assert await dst.get(key) == b"1"  # the script ran on the target
            assert cluster._owners[slot][1] == source  # the client's map is stale now
            assert await cluster.run_script(ECHO_KEY, [key], []) == [key.encode(), 2]  # MOVED, followed
            assert cluster._owners[slot][1] == target
        finally:  # the slot goes home, empty, the same way
            await dst.delete(key)
            await src.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", target_id)
            await dst.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", source_id)
            for node in (src, dst):
                await node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", source_id)
    await _settled(redis_cluster)


async def _settled(redis_cluster, timeout: float = 30.0) -> None:
    """Until every running node agrees on the slot map and says cluster_state:ok."""
    deadline = time.monotonic() + timeout
    while True:
        views = set()
        for port in redis_cluster.ports:
            try:
                async with _node(port) as node:
                    info = (await node.execute_command("CLUSTER", "INFO")).decode()
                    slots = await node.execute_command("CLUSTER", "SLOTS")
            except Exception:
                continue
            if "cluster_state:ok" not in info:
                break
            views.add(tuple(sorted((start, end, master[1]) for start, end, master, *_ in slots)))
        else:
            if len(views) == 1:
                return
        assert time.monotonic() < deadline, "the cluster did not settle"
        await asyncio.sleep(0.2)


async def test_bulk_claims_spread_one_partner_over_every_master(cluster, unique):
    store = ClusterStore(cluster, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=60_000)
    partner = f"p-{unique}"

    def reservation(key: str, txn: str, payload: str = "fp") -> Reservation:
        fp = hashlib.sha256(payload.encode()).hexdigest()
        return Reservation(partner, f"{key}-{unique}", f"{txn}-{unique}", fp, "ev", "t", layout=store.layout)

    first = [reservation(f"k{n}", f"t{n}") for n in range(600)]
    assert (await store.reserve(first[0]))[0] is Decision.NEW
    await store.complete(first[0], b"stored")
    bulk = [
        *first,
        reservation("k1", "t1"),  # a second copy in the same request: in flight
        reservation("k2", "t2", "other"),  # the key with another payload
        reservation("other", "t3", "other"),  # an id taken by another key and payload in the same request
    ]
    refused, quota, decisions = await store.reserve_all(bulk, unlimited(partner), len(bulk))
    assert refused is None and quota.remaining == -1
    assert decisions[0] == (Decision.REPLAY, b"stored")
    assert Counter(d for d, _ in decisions[1:600]) == {Decision.NEW: 599}
    assert [d for d, _ in decisions[600:]] == [Decision.IN_FLIGHT, Decision.MISMATCH, Decision.TXN_TAKEN]
    masters = Counter(cluster._owners[key_slot(r.idem_key)] for r in first)
    assert len(masters) == 3 and min(masters.values()) > 120  # about a third each, not one shard
    assert await cluster.execute("EXISTS", bulk[-1].idem_key) == 0  # the double spend held nothing


async def test_a_master_failing_the_id_step_rolls_back_what_the_others_took(cluster, unique):
    """Keys held on two masters, ids taken there too, and one id on a third master that does not answer
    in time (paused): the request fails as a whole (503), what the two took is dropped again, and the
    ones whose master may still take them late go to the in-doubt resolver, which releases them once
    the log confirms their records were never written."""
    store = ClusterStore(cluster, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=60_000)
    handed: list[Reservation] = []
    store.on_doubt = lambda r, pending: handed.append(r)
    fp, partner = hashlib.sha256(b"fp").hexdigest(), f"p-{unique}"
    masters = sorted(cluster.masters)
    late = masters[2]
    candidates = [Reservation(partner, f"k{n}", f"t{n}", fp, f"e{n}", "t", layout=store.layout) for n in range(600)]

    def owner(key: str):
        return cluster._owners[key_slot(key)]

    elsewhere = [r for r in candidates if owner(r.idem_key) != late and owner(r.txn_key) != late][:20]
    on_late = [r for r in candidates if owner(r.idem_key) != late and owner(r.txn_key) == late][:1]
    paused = _node(late[1])
    await paused.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        with pytest.raises(DependencyUnavailable):
            await store.reserve_all([*elsewhere, *on_late], unlimited(partner), 21)
        held = [k for r in elsewhere for k in (r.idem_key, r.txn_key)] + [on_late[0].idem_key]
        assert sum([await cluster.execute("EXISTS", key) for key in held]) == 0  # rolled back
        assert handed == on_late  # its id may still be taken when the master wakes: the resolver decides
    finally:
        await paused.execute_command("CLIENT", "UNPAUSE")
        await paused.aclose()


async def test_a_killed_master_fails_its_share_then_its_replica_takes_over(cluster, redis_cluster, unique):
    """SIGKILL a master: requests for its slots get 503 (never a wrong answer) until the cluster
    promotes its replica; the same client then routes there by itself, and what the master had
    replicated (a completed entry) still answers as a replay."""
    store = ClusterStore(cluster, Metrics(), pending_ttl_ms=30_000, done_ttl_ms=60_000)
    victim = cluster.masters[0][1]
    fp = hashlib.sha256(b"fp").hexdigest()
    candidates = [Reservation(f"p-{unique}", f"k{n}", f"t{n}", fp, layout=store.layout) for n in range(400)]
    on_victim = [
        r for r in candidates if {cluster._owners[key_slot(k)][1] for k in (r.idem_key, r.txn_key)} == {victim}
    ]
    done, *waiting = on_victim[:3]
    assert (await store.reserve(done))[0] is Decision.NEW and await store.complete(done, b"kept") is True
    # WAIT on the connection that wrote: its replica has the completed entry
    assert await cluster._node(("127.0.0.1", victim)).execute("WAIT", 1, 5000) == 1
    redis_cluster.kill(victim)
    try:
        started, failures = time.monotonic(), 0
        while True:
            try:
                decision = await store.reserve(waiting[0])
            except DependencyUnavailable:
                failures += 1
                assert time.monotonic() - started < 30, "the replica was not promoted"
                await asyncio.sleep(0.1)
                continue
            break
        took = time.monotonic() - started
        assert decision == (Decision.NEW, None)
        assert failures > 0 and took > 1.0  # refused while no master served those slots
        assert victim not in redis_cluster.masters()
        assert await store.reserve(done) == (Decision.REPLAY, b"kept")  # replicated before the kill
        with pytest.raises(RedisUnavailable):
            await cluster._node(("127.0.0.1", victim)).execute("PING")
    finally:
        redis_cluster.start(victim)
    await _settled(redis_cluster)
    assert (await store.reserve(waiting[1]))[0] is Decision.NEW  # the old master is a replica now


async def test_the_gateway_on_a_redis_cluster(stack, redis_cluster, log, unique):
    """The whole app with GATEWAY_REDIS_URL listing the cluster's seeds: single and bulk submissions,
    a replay, a double spend and the status API, with exactly one record per acceptance in Kafka."""
    settings = msgspec.structs.replace(stack, partner=f"cl-{unique}", redis_url=redis_cluster.url)
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/ready")).json()["checks"]["redis"] == "ok"
        first = transaction(unique)
        accepted = await client.post("/api/v1/transactions/", json=first)
        assert accepted.status_code == 202, accepted.text
        replay = await client.post("/api/v1/transactions/", json=first)
        assert (
            replay.status_code == 200 and replay.json()["metadata"]["offset"] == accepted.json()["metadata"]["offset"]
        )
        spent = await client.post("/api/v1/transactions/", json={**first, "idempotency_key": f"again-{unique}"})
        assert spent.status_code == 409 and spent.json()["type"].endswith("transaction-id-conflict"), spent.text
        items = [transaction(f"{unique}-{n}") for n in range(50)]
        answer = await client.post("/api/v1/transactions/bulk", json=[*items, first])
        assert answer.status_code == 207, answer.text
        assert [r["status"] for r in answer.json()["results"]] == [202] * 50 + [200]
        status = await client.get(f"/api/v1/transactions/txn_{unique}")
        assert status.status_code == 200 and status.json()["status"] in ("accepted", "batched", "settled"), status.text
    records = log.everything()
    assert {txn: len(found) for txn, found in records.items() if unique in txn} == {
        f"txn_{u}": 1 for u in [unique, *(f"{unique}-{n}" for n in range(50))]
    }
