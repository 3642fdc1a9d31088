"""Replay: rebuild the settlement state from offset 0 into an empty schema and compare digests.

The live state is read in one snapshot (its digest, the offsets it is as of, and the lifecycle steps it
took on the way); the replay folds every window topic from the beginning into `<schema>_replay`, dropped
first, with the same code the live processor runs, taking each lifecycle step with the clock reading it
was taken with once the fold has reached the offsets it was taken at, reading each poll batch that found
a conflict (a read step) as one poll batch once the fold has reached where it started, and stops at
exactly the live offsets; then both digests are printed. Equal digests prove the live state is the fold
of the log (and of the clock readings that closed and settled its batches, and of the read order that
decided between two instructions for one transaction).
"""

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from processor.calendar import SettlementCalendar
from processor.records import Partition, collect
from processor.settings import ProcessorSettings
from processor.store import LifecycleStep, SettlementStore, Snapshot
from settlement import ids

log = logging.getLogger("processor.replay")


def rebuild(settings: ProcessorSettings, calendar: SettlementCalendar, schema: str, live: Snapshot) -> str:
    """Fold the records before `live.offsets` (per partition) into a fresh `schema`, taking `live.steps`
    where they were taken (a read step: its records as one poll batch); return its digest."""
    store = SettlementStore(settings.database_url, schema, calendar)
    try:
        store.migrate(fresh=True)
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.group}-replay",  # never joined: partitions are assigned
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                # each step assigns the partitions it still needs afresh: a fetch that waited for more
                # bytes (the default waits up to 500 ms) would cost every one of hundreds of steps
                "fetch.wait.max.ms": 10,
            }
        )
        positions: dict[Partition, int] = {}
        try:
            gone = _history_gone(consumer, list(live.offsets))
            if gone:
                raise HistoryGone(
                    "the log no longer starts at offset 0 (" + ", ".join(gone) + "): records were deleted"
                    " (retention or a deleted topic), so the state cannot be rebuilt from it"
                )
            for step in live.steps:
                if isinstance(step, LifecycleStep):
                    _fold_until(settings, consumer, store, calendar, positions, step.offsets)
                    store.advance(step.taken_at, ids.uuid7, watermark=step.watermark)
                    continue
                _fold_until(settings, consumer, store, calendar, positions, {**step.offsets, **step.started})
                _fold_until(settings, consumer, store, calendar, positions, step.offsets, at_once=True)
            _fold_until(settings, consumer, store, calendar, positions, live.offsets)
        finally:
            consumer.close()
        return store.snapshot().digest
    finally:
        store.close()


def _fold_until(
    settings: ProcessorSettings,
    consumer: Consumer,
    store: SettlementStore,
    calendar: SettlementCalendar,
    positions: dict[Partition, int],
    until: dict[Partition, int],
    at_once: bool = False,
) -> None:
    """Fold every record from `positions` up to (not including) `until`, per partition; `at_once`: as one
    poll batch, applied once all of it is read (a read step's)."""
    wanted = {key: end for key, end in until.items() if end > positions.get(key, 0)}
    if not wanted:
        return
    # Only the partitions still to read, at their positions: assign() replaces the whole assignment, and
    # records fetched before it are discarded (pausing and resuming instead lost resumes to a later
    # assign's outdated pause, leaving a partition paused for good).
    consumer.assign([TopicPartition(*key, positions.get(key, 0)) for key in wanted])
    now = datetime.now(UTC)
    idle_since = time.monotonic()
    read = dict(positions)  # where reading stands: ahead of `positions` while a poll batch is held
    held: dict[tuple[Any, ...], Any] = {}  # at_once: the messages read so far, by their place in the log
    while wanted:
        messages = consumer.consume(settings.poll_records, timeout=0.5)  # what is there, not 5,000 or 10 s
        batch = collect(
            messages, lambda key, offset: key in wanted and read.get(key, 0) <= offset < wanted[key], calendar
        )
        if batch.ends:
            if at_once:
                held.update(((m.topic(), m.partition(), m.offset()), m) for m in messages if m.error() is None)
            else:
                store.apply(batch, {key: positions.get(key) for key in batch.ends}, now)
                positions.update(batch.ends)
            read.update(batch.ends)
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 10:
            raise TimeoutError(f"replay: no record within 10 s; still to read {sorted(wanted)}")
        done = [key for key, end in wanted.items() if read.get(key, 0) >= end]
        for key in done:
            del wanted[key]
        if done and wanted:
            consumer.assign([TopicPartition(*key, read.get(key, 0)) for key in wanted])
    if held:
        in_order = [held[place] for place in sorted(held)]
        batch = collect(in_order, lambda key, offset: positions.get(key, 0) <= offset < until.get(key, 0), calendar)
        store.apply(batch, {key: positions.get(key) for key in batch.ends}, now)
        positions.update(batch.ends)


class HistoryGone(Exception):
    """The log no longer holds its first records: a replay from offset 0 is impossible."""


def _history_gone(consumer: Consumer, partitions: list[Partition]) -> list[str]:
    """The partitions whose first offset is no longer 0, as `topic[partition] starts at N`."""
    gone = []
    for topic, partition in sorted(partitions):
        low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if low > 0:
            gone.append(f"{topic}[{partition}] starts at {low}")
    return gone


def replay(settings: ProcessorSettings, calendar: SettlementCalendar) -> int:
    """The `replay` command: print the live and the replayed digest; 0 when they are equal."""
    live = SettlementStore(settings.database_url, settings.database_schema, calendar)
    try:
        live.migrate()
        snapshot = live.snapshot()
    finally:
        live.close()
    try:
        replayed = rebuild(settings, calendar, f"{settings.database_schema}_replay", snapshot)
    except HistoryGone as exc:
        print(f"replay refused: {exc}", file=sys.stderr)
        return 2
    records = sum(snapshot.offsets.values())
    steps = len(snapshot.steps)
    print(f"live     {snapshot.digest}  ({records} records across {len(snapshot.offsets)} partitions, {steps} steps)")
    print(f"replayed {replayed}  (schema {settings.database_schema}_replay)")
    if replayed != snapshot.digest:
        print("the digests differ: the live state is not the fold of the log", file=sys.stderr)
        return 1
    return 0
