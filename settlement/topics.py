"""Topic creation and the retention check, for the gateway's window topics and the processor's batch
and dead-letter topics alike."""

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

# The window topics are the source of truth: the settlement state is their fold and must stay
# rebuildable by a replay from offset 0, so they keep every record (no time or size limit).
KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}


def finite_retention(bootstrap: str, topics: list[str], timeout: float = 15.0) -> list[str]:
    """Blocking: the topics of `topics` that delete records (a finite retention.ms or retention.bytes,
    or cleanup by compaction), each as `name (retention.ms=...)`; topics missing are left out."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=timeout).topics
    found = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics if name in existing]
    if not found:
        return []
    finite = []
    for resource, future in admin.describe_configs(found, request_timeout=timeout).items():
        config = {name: entry.value for name, entry in future.result(timeout).items()}
        wrong = {
            key: config.get(key)
            for key, keep in (*KEEP_FOREVER.items(), ("cleanup.policy", "delete"))
            if config.get(key) != keep
        }
        if wrong:
            finite.append(f"{resource.name} ({', '.join(f'{k}={v}' for k, v in wrong.items())})")
    return finite


def create_topics(
    bootstrap: str,
    wanted: list[str],
    partitions: int,
    replication: int,
    timeout: float,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Blocking: create the topics of `wanted` that are missing (brokers here never create topics on
    their own), with `config`, and wait until every partition has a leader; return the names created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [name for name in wanted if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, partitions, replication, config=config or {}) for name in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for future in futures.values():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        leaderless = [
            name
            for name in wanted
            if name not in topics
            or topics[name].error is not None
            or not topics[name].partitions
            or any(p.leader < 0 for p in topics[name].partitions.values())
        ]
        if not leaderless:
            return missing
        if time.monotonic() > deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no leader yet for {', '.join(leaderless)}"))
        time.sleep(0.1)
