"""Liveness and readiness probes for operators and orchestrators."""

import asyncio

import msgspec
from litestar import Request, Response, get
from redis.exceptions import RedisError

from gateway import SERVICE_NAME, __version__
from gateway.producer import SettlementProducer
from gateway.settings import Settings

_HEALTHY = msgspec.json.encode({"status": "healthy", "service": SERVICE_NAME, "version": __version__})


@get("/health", summary="Liveness", tags=["operations"], include_in_schema=True)
async def health() -> Response[bytes]:
    """Liveness: the process serves HTTP. Never touches Redis or Kafka."""
    return Response(_HEALTHY, media_type="application/json")


async def _check_redis(request: Request, timeout: float) -> list[str]:
    try:
        await asyncio.wait_for(request.app.state.redis.ping(), timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        return [f"redis: {type(exc).__name__}"]
    return []


async def _check_kafka(producer: SettlementProducer, timeout: float) -> list[str]:
    return await asyncio.to_thread(producer.check, timeout)


@get("/ready", summary="Readiness", tags=["operations"])
async def ready(request: Request) -> Response[bytes]:
    """Readiness: Redis answers PING and a Kafka broker serves metadata with the window topics."""
    settings: Settings = request.app.state.settings
    timeout = settings.ready_timeout_ms / 1000
    redis_problems, kafka_problems = await asyncio.gather(
        _check_redis(request, timeout), _check_kafka(request.app.state.producer, timeout)
    )
    checks = {"redis": "down" if redis_problems else "ok", "kafka": "down" if kafka_problems else "ok"}
    problems = redis_problems + kafka_problems
    if problems:
        body = {"status": "unavailable", "checks": checks, "problems": problems}
        return Response(
            msgspec.json.encode(body),
            status_code=503,
            media_type="application/json",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    return Response(msgspec.json.encode({"status": "ready", "checks": checks}), media_type="application/json")
