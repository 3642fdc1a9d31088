"""The peer: the same HTTP contract built the way the brief's original stack would build it.

    GATEWAY_REDIS_URL=... GATEWAY_KAFKA_BOOTSTRAP=... \
    uvicorn benchmarks.peers.fastapi_peer:app --workers 2 --loop uvloop --http httptools --no-access-log

FastAPI with a Pydantic v2 model, redis.asyncio for idempotency (SET NX to claim the key, then the
stored answer), aiokafka with acks=all and idempotence, and the 202 only after the broker's
acknowledgement: the same guarantees, written the straightforward way, with the best settings the
stack offers (uvloop, httptools, one producer per worker). Routing is the requested window
(t1 when absent): the peer pays nothing for calendars.
"""

import hashlib
import json
import os
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import redis.asyncio as redis
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Header, Response
from fastapi.responses import JSONResponse

from benchmarks.peers.pydantic_model import TransactionModel

REDIS_URL = os.environ.get("GATEWAY_REDIS_URL", "redis://127.0.0.1:16379/0")
BOOTSTRAP = os.environ.get("GATEWAY_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
TOPIC_PREFIX = os.environ.get("PEER_TOPIC_PREFIX", "settlement.")
PENDING_MS, DONE_MS = 30_000, int(os.environ.get("GATEWAY_IDEMPOTENCY_TTL_SECONDS", 86_400)) * 1000

state: dict = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    state["redis"] = redis.Redis.from_url(REDIS_URL)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    state["kafka"] = producer
    yield
    await producer.stop()
    await state["redis"].aclose()


app = FastAPI(lifespan=lifespan)


def problem(status: int, title: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"title": title, "status": status}, status_code=status, headers=headers, media_type="application/problem+json"
    )


@app.post("/api/v1/transactions/", status_code=202)
async def submit(transaction: TransactionModel, response: Response, idempotency_key: str | None = Header(None)):
    key = transaction.idempotency_key or idempotency_key
    if key is None:
        return problem(422, "idempotency_key is required")
    fingerprint = hashlib.sha256(transaction.model_dump_json(exclude={"idempotency_key"}).encode()).hexdigest()
    r: redis.Redis = state["redis"]
    idem_key = f"peer:idem:{hashlib.sha256(key.encode()).hexdigest()}"
    if not await r.set(idem_key, json.dumps({"fp": fingerprint}), nx=True, px=PENDING_MS):
        stored = json.loads(await r.get(idem_key) or b"{}")
        if stored.get("fp") != fingerprint:
            return problem(422, "idempotency key reused with another payload")
        if "response" not in stored:
            return problem(409, "request in flight", {"Retry-After": "1"})
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        return stored["response"]
    window = transaction.settlement_window or "t1"
    event = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "idempotency_key": key,
        "transaction": transaction.model_dump(mode="json"),
        "routing": {"window": window},
    }
    try:
        record = await state["kafka"].send_and_wait(
            TOPIC_PREFIX + window, json.dumps(event).encode(), key=transaction.source_account.encode()
        )
    except Exception:
        await r.delete(idem_key)
        return problem(503, "kafka unavailable", {"Retry-After": "1"})
    body = {
        "status": "submitted",
        "message": "Transaction queued for processing",
        "transaction_id": transaction.transaction_id,
        "metadata": {"window": window, "topic": record.topic, "partition": record.partition, "offset": record.offset},
    }
    replay = {**body, "status": "deduped", "message": "Transaction already processed"}
    await r.set(idem_key, json.dumps({"fp": fingerprint, "response": replay}), px=DONE_MS)
    return body
