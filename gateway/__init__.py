"""Transaction settlement gateway: HTTP intake, edge validation, idempotency, durable hand-off to Kafka."""

SERVICE_NAME = "settlement-engine"
__version__ = "1.0.0"
