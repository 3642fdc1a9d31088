"""Liveness and readiness probes for operators and orchestrators."""

import asyncio
import time

import msgspec
from litestar import Request, Response, get

from gateway import SERVICE_NAME, __version__
from gateway.metrics import CONTENT_TYPE
from gateway.producer import SettlementProducer
from gateway.redis_pipeline import RedisUnavailable, ReplyError
from gateway.settings import Settings

_HEALTHY = msgspec.json.encode({"status": "healthy", "service": SERVICE_NAME, "version": __version__})


@get("/health", summary="Liveness", tags=["operations"], include_in_schema=True)
async def health() -> Response[bytes]:
    """Liveness: the process serves HTTP. Never touches Redis or Kafka."""
    return Response(_HEALTHY, media_type="application/json")


async def _check_redis(request: Request, timeout: float) -> list[str]:
    try:
        await asyncio.wait_for(request.app.state.redis.ping(), timeout)
    except (RedisUnavailable, ReplyError, TimeoutError) as exc:
        return [f"redis: {exc or type(exc).__name__}"]
    return []


async def _check_kafka(producer: SettlementProducer, timeout: float) -> list[str]:
    return await asyncio.to_thread(producer.check, timeout)


class Readiness:
    """The last readiness verdict, kept for GATEWAY_READY_CACHE_MS so probes do not load the dependencies."""

    def __init__(self, cache_seconds: float) -> None:
        self.cache_seconds = cache_seconds
        self.shutting_down = False
        self._checked_at = -1e9
        self._verdict: tuple[int, bytes] = (503, b"")
        self._lock = asyncio.Lock()

    async def verdict(self, request: Request) -> tuple[int, bytes]:
        """(status, body) from cache, or from a fresh check of Redis and Kafka."""
        if self.shutting_down:
            return 503, msgspec.json.encode({"status": "shutting_down"})
        async with self._lock:  # concurrent probes share one check
            if time.monotonic() - self._checked_at < self.cache_seconds:
                return self._verdict
            settings: Settings = request.app.state.settings
            timeout = settings.ready_timeout_ms / 1000
            redis_problems, kafka_problems = await asyncio.gather(
                _check_redis(request, timeout), _check_kafka(request.app.state.producer, timeout)
            )
            checks = {"redis": "down" if redis_problems else "ok", "kafka": "down" if kafka_problems else "ok"}
            problems = redis_problems + kafka_problems
            if problems:
                body = {"status": "unavailable", "checks": checks, "problems": problems}
                self._verdict = (503, msgspec.json.encode(body))
            else:
                self._verdict = (200, msgspec.json.encode({"status": "ready", "checks": checks}))
            self._checked_at = time.monotonic()
            return self._verdict


@get("/ready", summary="Readiness", tags=["operations"])
async def ready(request: Request) -> Response[bytes]:
    """Readiness: Redis answers PING and a Kafka broker serves metadata with the window topics; 503 as
    soon as shutdown begins."""
    status, body = await request.app.state.readiness.verdict(request)
    headers = {"Retry-After": str(request.app.state.settings.retry_after_seconds)} if status != 200 else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


@get("/metrics", summary="Prometheus metrics", tags=["operations"], media_type=CONTENT_TYPE)
async def metrics(request: Request) -> Response[bytes]:
    """Prometheus text format, summed over every worker process."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
