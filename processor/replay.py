"""Replay: rebuild the settlement state from offset 0 into an empty schema and compare digests.

The live state is read in one snapshot (its digest and the offsets it is as of); the replay folds every
window topic from the beginning up to exactly those offsets into `<schema>_replay`, dropped first, with
the same code the live processor runs; then both digests are printed. Equal digests prove the live state
is the fold of the log.
"""

import logging
import sys
from datetime import UTC, datetime

from confluent_kafka import Consumer, TopicPartition

from processor.calendar import SettlementCalendar
from processor.records import Partition, collect
from processor.settings import ProcessorSettings
from processor.store import SettlementStore

log = logging.getLogger("processor.replay")


def rebuild(settings: ProcessorSettings, calendar: SettlementCalendar, schema: str, until: dict[Partition, int]) -> str:
    """Fold every record before `until` (per partition) into a fresh `schema`; return its digest."""
    store = SettlementStore(settings.database_url, schema, calendar)
    try:
        store.migrate(fresh=True)
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.group}-replay",  # never joined: partitions are assigned
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        wanted = {key: end for key, end in until.items() if end > 0}
        consumer.assign([TopicPartition(topic, partition, 0) for topic, partition in wanted])
        positions: dict[Partition, int | None] = dict.fromkeys(wanted)
        now = datetime.now(UTC)
        try:
            while wanted:
                messages = consumer.consume(settings.poll_records, timeout=10)
                if not messages:
                    raise TimeoutError(f"replay: no record within 10 s; still to read {sorted(wanted)}")
                records, unreadable, ends = collect(
                    messages, lambda key, offset: key in wanted and offset < wanted[key]
                )
                if ends:
                    store.apply(records, unreadable, {k: (positions[k], e) for k, e in ends.items()}, now)
                    positions.update(ends)
                for key, end in list(wanted.items()):
                    if (positions.get(key) or 0) >= end:
                        del wanted[key]
                        consumer.pause([TopicPartition(*key)])
        finally:
            consumer.close()
        digest, _ = store.digest()
        return digest
    finally:
        store.close()


def replay(settings: ProcessorSettings, calendar: SettlementCalendar) -> int:
    """The `replay` command: print the live and the replayed digest; 0 when they are equal."""
    live = SettlementStore(settings.database_url, settings.schema, calendar)
    try:
        live.migrate()
        live_digest, offsets = live.digest()
    finally:
        live.close()
    replayed = rebuild(settings, calendar, f"{settings.schema}_replay", offsets)
    records = sum(offsets.values())
    print(f"live     {live_digest}  ({records} records across {len(offsets)} partitions)")
    print(f"replayed {replayed}  (schema {settings.schema}_replay)")
    if replayed != live_digest:
        print("the digests differ: the live state is not the fold of the log", file=sys.stderr)
        return 1
    return 0
