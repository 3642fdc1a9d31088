"""The application factory. No import-time side effects: every client is made in a lifespan."""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components

import fastcore
from gateway import __version__
from gateway.api.bulk import bulk_submission
from gateway.api.docs import assets_router, swagger_ui
from gateway.api.edge import Edge, EdgeRefusal, edge_refusal, partner_of
from gateway.api.fast_lane import FastLane
from gateway.api.openapi import SECURITY_SCHEMES
from gateway.api.operations import HEALTHY, Readiness, health, ready
from gateway.api.operations_port import OperationsPort
from gateway.api.problems import EXCEPTION_HANDLERS
from gateway.api.status import batch, batches, transaction_status
from gateway.api.transactions import submit_transaction
from gateway.idempotency.factory import open_store
from gateway.intake.flow import Intake
from gateway.intake.in_doubt import DoubtResolver, LogReader
from gateway.intake.ledger import Ledger
from gateway.kafka.producer import SettlementProducer, ensure_topics
from gateway.partners.authentication import Authenticator
from gateway.partners.registry import PARTNER_ID, Registry
from gateway.partners.reload import RegistryWatcher
from gateway.settings import Settings
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import CONTENT_TYPE, Metrics
from gateway.telemetry.observability import RequestObservability, RequestRecorder
from settlement.errors import ConfigurationError
from settlement.logs import configure_logging
from settlement.rules import compile_policy, compile_rules, default_rules_path, load_rules_file

log = logging.getLogger("gateway")


def build_policy(settings: Settings) -> tuple[fastcore.Policy, fastcore.Rules]:
    """Compile the validation limits and routing rules of the one rules file into fastcore;
    ConfigurationError when unusable."""
    today = datetime.fromtimestamp(settings.clock()(), UTC).date()
    path = settings.rules_file() or default_rules_path()
    source = f"settlement rules file {path}"
    rules = load_rules_file(path)
    return compile_policy(rules, settings.blocked_currency_pairs, source), compile_rules(rules, today, source)


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def load_partners(settings: Settings) -> Registry | None:
    """The partner registry (None: open mode); ConfigurationError names the line of a bad file."""
    if not PARTNER_ID.match(settings.partner):
        raise ConfigurationError("GATEWAY_PARTNER must be 1-64 of a-z, 0-9, '_' and '-'")
    if not settings.partners_file:
        return None
    return Registry.load(Path(settings.partners_file))


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


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the gateway; settings default to the environment (GATEWAY_*)."""
    settings = settings or Settings.from_env()
    policy, rules = build_policy(settings)
    registry = load_partners(settings)
    configure_logging(settings.log_level)
    authenticator = Authenticator(registry, settings.partner, time.time)
    metrics = Metrics()
    access_log = AccessLog(settings.access_log)
    recorder = RequestRecorder(metrics, access_log)
    readiness = Readiness(settings.ready_cache_ms / 1000, open_mode=registry is None)

    @asynccontextmanager
    async def telemetry(app: Litestar) -> AsyncIterator[None]:
        metrics.start_publishing()
        try:
            yield
        finally:  # the last lifespan to end: whatever the others counted or logged goes out
            metrics.stop_publishing()
            access_log.flush()

    @asynccontextmanager
    async def operations_listener(app: Litestar) -> AsyncIterator[None]:
        # /metrics apart from the partners' port: it names every partner. Each worker binds the same
        # address (SO_REUSEPORT) and answers on its own loop, where its tallies may be published.
        if not settings.ops_port:
            yield
            return
        port = OperationsPort(
            {
                "/metrics": lambda: (CONTENT_TYPE, metrics.exposition()),
                "/health": lambda: ("application/json", HEALTHY),
            },
            settings.ops_host,
            settings.ops_port,
        )
        try:
            await port.start()
        except OSError as exc:
            raise ConfigurationError(
                f"the operations listener cannot bind {settings.ops_host}:{settings.ops_port} "
                f"(GATEWAY_OPS_HOST, GATEWAY_OPS_PORT; 0 for none): {exc.strerror or exc}"
            ) from None
        app.state.operations_port = port
        log.info("operations listener (/metrics, /health) on %s:%d", *port.address)
        try:
            yield
        finally:
            await port.close()

    @asynccontextmanager
    async def redis_client(app: Litestar) -> AsyncIterator[None]:
        store = app.state.idempotency = open_store(settings, metrics)  # one node or a cluster
        try:
            yield
        finally:
            # completions still on their way (Redis was down or slow) go out before the connection closes
            await store.drain(settings.redis_timeout_ms / 1000 + 2)
            store.close()

    @asynccontextmanager
    async def kafka_producer(app: Litestar) -> AsyncIterator[None]:
        try:
            created = await asyncio.to_thread(ensure_topics, settings)
            if created:
                log.info("created topics %s", ", ".join(created))
        except Exception as exc:  # the broker may come later; /ready reports it meanwhile
            log.warning("could not ensure the window topics at start-up: %s", exc)
        producer = SettlementProducer(settings, metrics)
        producer.start()
        app.state.producer = producer
        try:
            yield
        finally:
            left = await asyncio.to_thread(producer.close, settings.delivery_timeout_ms / 1000)
            if left:
                log.error("shutdown: %d records were not confirmed by Kafka", left)

    @asynccontextmanager
    async def status_database(app: Litestar) -> AsyncIterator[None]:
        # the pool fills in the background: the intake never waits for PostgreSQL
        app.state.ledger = store = Ledger(settings)
        await store.open()
        try:
            yield
        finally:
            await store.close()

    @asynccontextmanager
    async def in_doubt_resolver(app: Litestar) -> AsyncIterator[None]:
        resolver = DoubtResolver(settings, app.state.idempotency, metrics, LogReader(settings))
        app.state.idempotency.on_doubt = resolver.watch
        resolver.start()
        app.state.in_doubt = resolver
        try:
            yield
        finally:
            await resolver.close()

    @asynccontextmanager
    async def intake_service(app: Litestar) -> AsyncIterator[None]:
        app.state.intake = Intake(
            settings,
            policy,
            rules,
            app.state.idempotency,
            app.state.producer,
            metrics,
            settings.clock(),
            app.state.ledger,
        )
        app.state.edge = fast_lane.edge = Edge(
            authenticator,
            app.state.intake,
            app.state.idempotency,
            metrics,
            settings.retry_after_seconds,
            settings.bulk_max_items,
        )
        if registry is None:
            warn_if_open(settings)
        watcher = RegistryWatcher(
            Path(settings.partners_file), authenticator, settings.partners_reload_seconds, metrics
        )
        readiness.partner_registry = watcher  # a failed reload is a warning of /ready
        if registry is not None:
            watcher.start()
        # What start-up made lives as long as the worker: keep it out of every garbage collection.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # The first lifespan to end: from here /ready answers 503 while in-flight requests
            # finish and the producer flushes.
            readiness.shutting_down = True
            log.info("shutdown: readiness now 503; flushing the producer")
            await watcher.close()

    app = Litestar(
        route_handlers=[
            submit_transaction,
            bulk_submission(settings.bulk_max_items, settings.bulk_max_body_bytes),
            transaction_status,
            batch,
            batches,
            health,
            ready,
            assets_router(),
        ],
        middleware=[RequestObservability(recorder)],
        lifespan=[
            telemetry,
            operations_listener,
            redis_client,
            kafka_producer,
            status_database,
            in_doubt_resolver,
            intake_service,
        ],
        exception_handlers={EdgeRefusal: edge_refusal, **EXCEPTION_HANDLERS},  # type: ignore[dict-item]
        dependencies={"partner": Provide(partner_of)},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Settlement gateway",
            version=__version__,
            description="Payment instructions in; validated, de-duplicated, routed and durably written to Kafka.",
            path="/docs",
            components=Components(security_schemes=SECURITY_SCHEMES),
            render_plugins=[swagger_ui()],
        ),
        logging_config=None,  # settlement.logs owns logging: JSON lines
        debug=False,
    )
    # Well-formed submissions skip Litestar's routing and request machinery (see gateway.api.fast_lane).
    fast_lane = FastLane(app.asgi_handler, recorder, settings.max_body_bytes, settings.bulk_max_body_bytes)
    app.asgi_handler = fast_lane
    app.state.settings = settings
    app.state.policy = policy
    app.state.rules = rules
    app.state.metrics = metrics
    app.state.readiness = readiness
    return app
