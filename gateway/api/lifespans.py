"""What each worker starts and stops: its clients and services, in the order Litestar runs them (and ends
them in reverse). Every client is made here, none at import time."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from litestar import Litestar

import fastcore
from gateway.api.edge import Edge
from gateway.api.fast_lane import FastLane
from gateway.api.operations import HEALTHY, Readiness
from gateway.api.operations_port import OperationsPort
from gateway.idempotency.factory import open_store
from gateway.intake.flow import Intake
from gateway.intake.in_doubt import DoubtResolver, LogReader
from gateway.intake.ledger import Ledger
from gateway.kafka.producer import SettlementProducer, ensure_topics
from gateway.partners.authentication import Authenticator
from gateway.partners.registry import Registry
from gateway.partners.reload import RegistryWatcher
from gateway.settings import Settings
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import CONTENT_TYPE, Metrics
from settlement.errors import ConfigurationError

log = logging.getLogger("gateway")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def warn_if_open(settings: Settings) -> None:
    """Open mode serves anyone as the default partner: say so, louder when reachable from elsewhere."""
    log.warning(
        "open mode: no GATEWAY_PARTNERS_FILE, so every request is partner %r without authentication; "
        "fine on a laptop, never in production",
        settings.partner,
    )
    if settings.host and settings.host not in LOOPBACK:
        log.warning(
            "open mode on %s: GATEWAY_HOST exposes an unauthenticated gateway beyond this machine", settings.host
        )


Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


class Lifespans:
    """The lifespans of one worker, sharing what create_app built once."""

    def __init__(
        self,
        settings: Settings,
        policy: fastcore.Policy,
        rules: fastcore.Rules,
        registry: Registry | None,
        authenticator: Authenticator,
        metrics: Metrics,
        access_log: AccessLog,
        readiness: Readiness,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.rules = rules
        self.registry = registry
        self.authenticator = authenticator
        self.metrics = metrics
        self.access_log = access_log
        self.readiness = readiness
        self.fast_lane: FastLane | None = None  # set once the app is built; the intake hands it the edge

    def in_order(self) -> list[Lifespan]:
        return [
            self.telemetry,
            self.operations_listener,
            self.redis_client,
            self.kafka_producer,
            self.status_database,
            self.in_doubt_resolver,
            self.intake_service,
        ]

    @asynccontextmanager
    async def telemetry(self, app: Litestar) -> AsyncIterator[None]:
        self.metrics.start_publishing()
        try:
            yield
        finally:  # the last lifespan to end: whatever the others counted or logged goes out
            self.metrics.stop_publishing()
            self.access_log.flush()

    @asynccontextmanager
    async def operations_listener(self, app: Litestar) -> AsyncIterator[None]:
        # /metrics apart from the partners' port: it names every partner. Each worker binds the same
        # address (SO_REUSEPORT) and answers on its own loop, where its tallies may be published.
        if not self.settings.ops_port:
            yield
            return
        port = OperationsPort(
            {
                "/metrics": lambda: (CONTENT_TYPE, self.metrics.exposition()),
                "/health": lambda: ("application/json", HEALTHY),
            },
            self.settings.ops_host,
            self.settings.ops_port,
        )
        try:
            await port.start()
        except OSError as exc:
            raise ConfigurationError(
                f"the operations listener cannot bind {self.settings.ops_host}:{self.settings.ops_port} "
                f"(GATEWAY_OPS_HOST, GATEWAY_OPS_PORT; 0 for none): {exc.strerror or exc}"
            ) from None
        app.state.operations_port = port
        log.info("operations listener (/metrics, /health) on %s:%d", *port.address)
        try:
            yield
        finally:
            await port.close()

    @asynccontextmanager
    async def redis_client(self, app: Litestar) -> AsyncIterator[None]:
        store = app.state.idempotency = open_store(self.settings, self.metrics)  # one node or a cluster
        try:
            yield
        finally:
            # completions still on their way (Redis was down or slow) go out before the connection closes
            await store.drain(self.settings.redis_timeout_ms / 1000 + 2)
            store.close()

    @asynccontextmanager
    async def kafka_producer(self, app: Litestar) -> AsyncIterator[None]:
        try:
            created = await asyncio.to_thread(ensure_topics, self.settings)
            if created:
                log.info("created topics %s", ", ".join(created))
        except Exception as exc:  # the broker may come later; /ready reports it meanwhile
            log.warning("could not ensure the window topics at start-up: %s", exc)
        producer = SettlementProducer(self.settings, self.metrics)
        producer.start()
        app.state.producer = producer
        try:
            yield
        finally:
            left = await asyncio.to_thread(producer.close, self.settings.delivery_timeout_ms / 1000)
            if left:
                log.error("shutdown: %d records were not confirmed by Kafka", left)

    @asynccontextmanager
    async def status_database(self, app: Litestar) -> AsyncIterator[None]:
        # the pool fills in the background: the intake never waits for PostgreSQL
        app.state.ledger = store = Ledger(self.settings)
        await store.open()
        try:
            yield
        finally:
            await store.close()

    @asynccontextmanager
    async def in_doubt_resolver(self, app: Litestar) -> AsyncIterator[None]:
        resolver = DoubtResolver(self.settings, app.state.idempotency, self.metrics, LogReader(self.settings))
        app.state.idempotency.on_doubt = resolver.watch
        resolver.start()
        app.state.in_doubt = resolver
        try:
            yield
        finally:
            await resolver.close()

    @asynccontextmanager
    async def intake_service(self, app: Litestar) -> AsyncIterator[None]:
        app.state.intake = Intake(
            self.settings,
            self.policy,
            self.rules,
            app.state.idempotency,
            app.state.producer,
            self.metrics,
            self.settings.clock(),
            app.state.ledger,
        )
        assert self.fast_lane is not None, "create_app sets the fast lane before the app starts"
        app.state.edge = self.fast_lane.edge = Edge(
            self.authenticator,
            app.state.intake,
            app.state.idempotency,
            self.metrics,
            self.settings.retry_after_seconds,
            self.settings.bulk_max_items,
        )
        if self.registry is None:
            warn_if_open(self.settings)
        watcher = RegistryWatcher(
            Path(self.settings.partners_file), self.authenticator, self.settings.partners_reload_seconds, self.metrics
        )
        self.readiness.partner_registry = watcher  # a failed reload is a warning of /ready
        if self.registry is not None:
            watcher.start()
        # What start-up made lives as long as the worker: keep it out of every garbage collection.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # The first lifespan to end: from here /ready answers 503 while in-flight requests
            # finish and the producer flushes.
            self.readiness.shutting_down = True
            log.info("shutdown: self.readiness now 503; flushing the producer")
            await watcher.close()
