"""The application factory. No import-time side effects: every client is made in a lifespan."""

import logging
import time
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
from gateway.api.edge import EdgeRefusal, edge_refusal, partner_of
from gateway.api.fast_lane import FastLane
from gateway.api.lifespans import Lifespans
from gateway.api.openapi import SECURITY_SCHEMES
from gateway.api.operations import Readiness, health, ready
from gateway.api.problems import EXCEPTION_HANDLERS
from gateway.api.status import batch, batches, transaction_status
from gateway.api.transactions import submit_transaction
from gateway.api.webhook_events import WEBHOOKS
from gateway.api.webhooks import deliveries, resend
from gateway.partners.authentication import Authenticator
from gateway.partners.registry import PARTNER_ID, Registry
from gateway.settings import Settings
from gateway.telemetry.access_log import AccessLog
from gateway.telemetry.metrics import Metrics
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


def load_partners(settings: Settings) -> Registry | None:
    """The partner registry (None: open mode); ConfigurationError names the line of a bad file."""
    if not PARTNER_ID.match(settings.partner):
        raise ConfigurationError("GATEWAY_PARTNER must be 1-64 of a-z, 0-9, '_' and '-'")
    if not settings.partners_file:
        return None
    return Registry.load(Path(settings.partners_file))


OPENAPI = OpenAPIConfig(
    title="Settlement gateway",
    version=__version__,
    description="Payment instructions in; validated, de-duplicated, routed and durably written to Kafka.",
    path="/docs",
    components=Components(security_schemes=SECURITY_SCHEMES),
    webhooks=WEBHOOKS,  # what the deliverer POSTs to partners (gateway/api/webhook_events.py)
    render_plugins=[swagger_ui()],
)


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the gateway; settings default to the environment (GATEWAY_*)."""
    settings = settings or Settings.from_env()
    policy, rules = build_policy(settings)
    registry = load_partners(settings)
    configure_logging(settings.log_level)
    metrics = Metrics()
    access_log = AccessLog(settings.access_log)
    recorder = RequestRecorder(metrics, access_log)
    readiness = Readiness(settings.ready_cache_ms / 1000, open_mode=registry is None)
    authenticator = Authenticator(registry, settings.partner, time.time)
    lifespans = Lifespans(settings, policy, rules, registry, authenticator, metrics, access_log, readiness)
    app = Litestar(
        route_handlers=[
            submit_transaction,
            bulk_submission(settings.bulk_max_items, settings.bulk_max_body_bytes),
            transaction_status,
            batch,
            batches,
            deliveries,
            resend,
            health,
            ready,
            assets_router(),
        ],
        middleware=[RequestObservability(recorder)],
        lifespan=lifespans.in_order(),
        exception_handlers={EdgeRefusal: edge_refusal, **EXCEPTION_HANDLERS},  # type: ignore[dict-item]
        dependencies={"partner": Provide(partner_of)},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OPENAPI,
        logging_config=None,  # settlement.logs owns logging: JSON lines
        debug=False,
    )
    # Well-formed submissions skip Litestar's routing and request machinery (see gateway.api.fast_lane).
    app.asgi_handler = lifespans.fast_lane = FastLane(
        app.asgi_handler, recorder, settings.max_body_bytes, settings.bulk_max_body_bytes
    )
    app.state.settings = settings
    app.state.policy = policy
    app.state.rules = rules
    app.state.metrics = metrics
    app.state.readiness = readiness
    return app
