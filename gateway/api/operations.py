"""Liveness and readiness probes for operators and orchestrators. Metrics are not served here, on the
partners' port: see gateway.api.operations_port."""

import asyncio
import time
from typing import Literal

import msgspec
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from gateway import SERVICE_NAME, __version__
from gateway.api.openapi import DocumentedOperation, documented
from gateway.api.problems import CAUSES, MEDIA_TYPE, PROBLEM_BASE
from gateway.intake.schemas import ENCODER
from gateway.kafka.producer import SettlementProducer
from gateway.partners.reload import RegistryWatcher
from gateway.settings import Settings
from settlement.errors import DependencyUnavailable

CheckResult = Literal["ok", "down"]


class Health(msgspec.Struct, frozen=True):
    """200 from /health."""

    status: Literal["healthy"]
    service: str
    version: str


class Checks(msgspec.Struct, frozen=True):
    """What /ready found of each dependency."""

    redis: CheckResult
    kafka: CheckResult


OPEN_MODE_WARNING = "open mode: no partner registry (GATEWAY_PARTNERS_FILE); every request is the default partner's"


class Ready(msgspec.Struct, frozen=True, omit_defaults=True):
    """200 from /ready. `partners` says how callers are identified: `registry` (API keys) or `open`
    (no registry: every request is the single default partner's). `warning`: what needs an operator
    before it breaks (open mode, Redis filling up or able to evict, a partner registry that failed to reload)."""

    status: Literal["ready"]
    checks: Checks
    partners: Literal["registry", "open"]
    warning: str | None = None


class NotReady(msgspec.Struct, frozen=True, omit_defaults=True):
    """503 from /ready: RFC 9457 problem details; `checks` and `problems` name what is down (absent when
    the reason is that shutdown has begun)."""

    type: str
    title: str
    status: int
    detail: str
    checks: Checks | None = None
    problems: list[str] | None = None


def not_ready(cause: str, detail: str, checks: Checks | None = None, problems: list[str] | None = None) -> NotReady:
    status, title = CAUSES[cause]
    return NotReady(PROBLEM_BASE + cause, title, status, detail, checks, problems)


HEALTHY = ENCODER.encode(Health("healthy", SERVICE_NAME, __version__))  # also the operations port's
_SHUTTING_DOWN = ENCODER.encode(not_ready("shutting-down", "the gateway is shutting down"))


@get(
    "/health",
    summary="Liveness",
    tags=["operations"],
    operation_class=DocumentedOperation,
    responses={
        200: documented(Health, "The process serves HTTP", "healthy", Health("healthy", SERVICE_NAME, __version__))
    },
)
async def health() -> Response[bytes]:
    """Liveness: the process serves HTTP. Never touches Redis or Kafka."""
    return Response(HEALTHY, media_type="application/json")


async def _check_redis(request: Request, timeout: float) -> tuple[list[str], str | None]:
    """What is wrong with Redis (it is down), and what to warn of (it fills up, or may evict)."""
    try:
        memory = await asyncio.wait_for(request.app.state.idempotency.memory(), timeout)
    except DependencyUnavailable as exc:
        return [f"redis: {exc.detail}"], None
    except TimeoutError:
        return ["redis: TimeoutError"], None
    request.app.state.metrics.redis_memory.set(memory.used_ratio)
    return [], memory.warning(request.app.state.settings.redis_memory_warning)


async def _check_kafka(producer: SettlementProducer, timeout: float) -> list[str]:
    return await asyncio.to_thread(producer.check, timeout)


class Readiness:
    """The last readiness verdict, kept for GATEWAY_READY_CACHE_MS so probes do not load the dependencies."""

    def __init__(self, cache_seconds: float, open_mode: bool = False) -> None:
        self.cache_seconds = cache_seconds
        self.open_mode = open_mode
        self.shutting_down = False
        self.partner_registry: RegistryWatcher | None = None  # its failed reload is a warning
        self._checked_at = -1e9
        self._verdict: tuple[int, bytes] = (503, b"")
        self._lock = asyncio.Lock()

    async def verdict(self, request: Request) -> tuple[int, bytes]:
        """(status, body) from cache, or from a fresh check of Redis and Kafka."""
        if self.shutting_down:
            return 503, _SHUTTING_DOWN
        async with self._lock:  # concurrent probes share one check
            if time.monotonic() - self._checked_at < self.cache_seconds:
                return self._verdict
            settings: Settings = request.app.state.settings
            timeout = settings.ready_timeout_ms / 1000
            (redis_problems, redis_warning), kafka_problems = await asyncio.gather(
                _check_redis(request, timeout), _check_kafka(request.app.state.producer, timeout)
            )
            checks = Checks("down" if redis_problems else "ok", "down" if kafka_problems else "ok")
            down = [name for name, problems in (("redis", redis_problems), ("kafka", kafka_problems)) if problems]
            if down:
                detail = f"{' and '.join(down)} {'is' if len(down) == 1 else 'are'} down"
                body = not_ready("not-ready", detail, checks, redis_problems + kafka_problems)
                self._verdict = (503, ENCODER.encode(body))
            else:
                reload_warning = self.partner_registry.warning if self.partner_registry is not None else None
                warnings = [
                    w for w in (OPEN_MODE_WARNING if self.open_mode else None, redis_warning, reload_warning) if w
                ]
                ready = Ready("ready", checks, "open" if self.open_mode else "registry", "; ".join(warnings) or None)
                self._verdict = (200, ENCODER.encode(ready))
            self._checked_at = time.monotonic()
            return self._verdict


_DOWN_EXAMPLE = not_ready(
    "not-ready",
    "kafka is down",
    Checks("ok", "down"),
    ["kafka: Failed to get metadata: Local: Broker transport failure"],
)


@get(
    "/ready",
    summary="Readiness",
    tags=["operations"],
    operation_class=DocumentedOperation,
    responses={
        200: documented(
            Ready, "Redis and Kafka answer", "ready", Ready("ready", Checks("ok", "ok"), "open", OPEN_MODE_WARNING)
        ),
        503: ResponseSpec(
            data_container=NotReady,
            description="Redis or Kafka is down, or shutdown has begun (with Retry-After)",
            media_type=MEDIA_TYPE,
            generate_examples=False,
            examples=[
                Example(summary=_DOWN_EXAMPLE.title, value=_DOWN_EXAMPLE),
                Example(summary="Shutting down", value=not_ready("shutting-down", "the gateway is shutting down")),
            ],
        ),
    },
)
async def ready(request: Request) -> Response[bytes]:
    """Readiness: Redis answers INFO memory (every master of a cluster) and a Kafka broker serves metadata
    with the window topics; 503 as soon as shutdown begins."""
    status, body = await request.app.state.readiness.verdict(request)
    if status == 200:
        return Response(body, media_type="application/json")
    headers = {"Retry-After": str(request.app.state.settings.retry_after_seconds)}
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)
