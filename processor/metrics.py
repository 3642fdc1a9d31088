"""The processor's metrics, on a registry of its own (its operations port serves it)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProcessorMetrics:
    """What operators scrape from the processor's own port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.applied = Counter("settlement_processor_events_applied", "Transactions folded in", registry=reg)
        self.duplicates = Counter(
            "settlement_processor_duplicates", "Records of a transaction already folded (recorded)", registry=reg
        )
        self.conflicts = Counter(
            "settlement_processor_conflicts",
            "Records of a transaction already folded that carry another instruction (another fingerprint):"
            " recorded, never folded",
            registry=reg,
        )
        self.late = Counter(
            "settlement_processor_late_events",
            "Transactions read after their batch closed (moved to the next batch of their window and currency)",
            registry=reg,
        )
        self.unreadable = Counter(
            "settlement_processor_unreadable_records", "Records quarantined (not folded), with a reason", registry=reg
        )
        self.ready = Gauge("settlement_processor_ready", "1 while folding: PostgreSQL and Kafka answer", registry=reg)
        self.watermark = Gauge(
            "settlement_processor_watermark_timestamp_seconds",
            "Event-time watermark: the oldest of the window partitions' progress (Unix seconds)",
            registry=reg,
        )
        self.overdue = Gauge(
            "settlement_processor_batches_overdue", "Batches past their settlement time and not settled", registry=reg
        )
        self.fenced = Counter(
            "settlement_processor_fenced_batches", "Poll batches not applied: another instance moved on", registry=reg
        )
        self.apply_duration = Histogram(
            "settlement_processor_apply_duration_seconds",
            "One poll batch applied to PostgreSQL (one transaction)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=reg,
        )
        self.lag = Gauge(
            "settlement_processor_consumer_lag", "Records not yet folded", ["topic", "partition"], registry=reg
        )
        self.batches = Gauge("settlement_processor_batches", "Batches by status", ["status"], registry=reg)
        self.batch_events = Counter(
            "settlement_processor_batch_events", "Batch events written to Kafka", ["event_type"], registry=reg
        )
