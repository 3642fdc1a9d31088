"""The deliverer's metrics, on a registry of its own (its operations port serves it)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DeliveryMetrics:
    """What operators scrape from the deliverer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.ready = Gauge("settlement_webhook_ready", "1 while delivering: PostgreSQL answers", registry=reg)
        self.attempts = Counter(
            "settlement_webhook_attempts",
            "Delivery attempts by partner and outcome (delivered, status, timeout, unreachable, refused-address)",
            ["partner", "outcome"],
            registry=reg,
        )
        self.deliveries = Counter(
            "settlement_webhook_deliveries",
            "Deliveries ended, by partner and outcome (delivered, or failed: every retry spent)",
            ["partner", "outcome"],
            registry=reg,
        )
        self.attempts_per_delivery = Histogram(
            "settlement_webhook_attempts_per_delivery",
            "Attempts a delivered event took",
            buckets=(1, 2, 3, 4, 5, 6, 7, 8),
            registry=reg,
        )
        self.delay = Histogram(
            "settlement_webhook_delivery_delay_seconds",
            "From the state change written (the outbox row) to the partner's 2xx",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000, 86400),
            registry=reg,
        )
        self.backlog = Gauge(
            "settlement_webhook_backlog", "Events pending delivery, per partner", ["partner"], registry=reg
        )
        self.in_flight = Gauge(
            "settlement_webhook_in_flight", "Attempts under way, per partner", ["partner"], registry=reg
        )
        self.breaker_open = Gauge(
            "settlement_webhook_breaker_open",
            "1 while a partner's breaker holds its deliveries",
            ["partner"],
            registry=reg,
        )
        self.refused = Gauge(
            "settlement_webhook_subscription_refused",
            "1 while a partner's webhook table is refused (its events wait): the log says why",
            ["partner"],
            registry=reg,
        )
