"""Settlement state in PostgreSQL: migrations, the fold of one poll batch, the batch lifecycle's
transaction (its steps are processor/lifecycle.py), the outbox of batch events, the digest. The SQL of
the fold is processor/statements.py. Over 400 lines because it is one connection's class: every method
shares the connection, its session and the transaction the fold and the offsets commit in.

Every poll batch is applied in one database transaction together with the next offset of each of its
partitions, and the offsets are compare-and-set: a processor whose partitions were handed to another
instance meanwhile finds the stored offset moved, and its transaction rolls back (`Fenced`) instead of
applying the records a second time. So a crash, a kill or a rebalance neither loses nor doubles an
event, without Kafka transactions.

Batches close by event time: each partition's progress (the newest event time folded, which is the
routing instant, or the instant it was found read to its end) is stored with its offset, and a batch
closes once the
watermark, the oldest of every window partition's progress, passes its cut-off plus the grace. They
settle on the processor's clock. What a step closes changes how later records fold: a record read
after its batch closed takes the late path (the next batch of its window and currency). Each step that
changed something is recorded with its clock reading, its watermark and the offsets the fold stood at,
so that a replay takes it at the same place (processor/replay.py).

A record of a transaction already folded is a duplicate when it carries the same instruction (the same
fingerprint), and a conflict when it carries another one: recorded apart, never folded, never replacing
the transaction. Which of two instructions is the transaction depends on the order they were read in,
so each poll batch that found a conflict is recorded too, for the replay to read the same way.

A record that reaches SQL has passed every check (processor/checks.py); should the database still
refuse one, the poll batch is applied again record by record and what it refuses is quarantined.
"""

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from processor import lifecycle, statements
from processor.calendar import SettlementCalendar
from processor.records import Incoming, Partition, PollBatch, Unreadable
from processor.webhooks import outbox
from settlement.events import parse_batch_id

log = logging.getLogger("processor.store")


class Fenced(Exception):
    """The stored offset of a partition is not where this processor believed: another instance
    applied those records (a rebalance). Nothing was applied; seek to the stored offsets."""


class Conflict(NamedTuple):
    """A record of a transaction already folded that carries another instruction: recorded, not folded."""

    partner: str
    transaction_id: str
    fingerprint: str
    folded_fingerprint: str  # the transaction's, which stays
    topic: str
    partition: int
    kafka_offset: int


class Applied(NamedTuple):
    """What one poll batch changed."""

    new: int  # distinct transactions folded in
    duplicates: int
    late: int
    unreadable: int
    conflicts: list[Conflict]  # records of another instruction, in log order


class LifecycleStep(NamedTuple):
    """A step of the batch lifecycle that changed something: when, by which watermark, and where the
    fold stood."""

    taken_at: datetime
    watermark: datetime
    offsets: dict[Partition, int]


class ReadStep(NamedTuple):
    """A poll batch whose read order decided which instruction is a transaction (it found a conflict):
    where each of its partitions started, and the next offset of every partition after it."""

    started: dict[Partition, int]
    offsets: dict[Partition, int]


class Snapshot(NamedTuple):
    """The live state's digest, the offsets it is as of, and the lifecycle and read steps taken on the way
    (in the order they were taken)."""

    digest: str
    offsets: dict[Partition, int]
    steps: list[LifecycleStep | ReadStep]


class BatchEvent(NamedTuple):
    sequence: int
    batch_id: str
    event_type: str
    event_id: str
    occurred_at: datetime
    payload: dict


MIGRATIONS = "migrations"


def _record_key(record: Incoming) -> tuple[str, int, int]:
    """The topic, partition and offset of a record (the first columns of its line)."""
    topic, partition, offset, _ = record.fields.split("\t", 3)
    return topic, int(partition), int(offset)


def _place(conflict: Conflict) -> tuple[str, int, int]:
    """A conflict's record's place in the log: topic, partition, offset."""
    return conflict.topic, conflict.partition, conflict.kafka_offset


def _offsets(cut: list[list]) -> dict[Partition, int]:
    """Offsets stored as [[topic, partition, offset], ...] (a step's)."""
    return {(topic, partition): offset for topic, partition, offset in cut}


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("settlement.ledger").joinpath(MIGRATIONS)
    files = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), f.read_text()) for name, f in files]


class SettlementStore:
    """One connection to PostgreSQL, working in `schema` (the live one, or a replay's)."""

    def __init__(self, url: str, schema: str, calendar: SettlementCalendar) -> None:
        self._url = url
        self.schema = schema
        self.calendar = calendar
        self._conn = psycopg.connect(url, autocommit=True)
        self._known_batches: set[str] = set()  # batches committed to exist (none is ever deleted)
        self._opened: set[str] = set()  # batches inserted by the transaction under way
        self.notifying: frozenset[str] = frozenset()  # event types some partner subscribed to (outbox.py)

    def close(self) -> None:
        self._conn.close()

    def reconnect(self) -> None:
        """A new connection after the old one broke (PostgreSQL restarted): the schema's search path and
        the session's COPY table again. Raises psycopg.OperationalError while the server is down."""
        self._conn.close()
        self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        self._session()

    def _session(self) -> None:
        self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        self._conn.execute(statements.INCOMING)

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self, fresh: bool = False) -> list[str]:
        """Create the schema when missing (dropped first when `fresh`) and apply the migrations it lacks,
        in order, each in its own transaction; return the versions applied. Instances starting together
        take turns (an advisory lock)."""
        conn, schema = self._conn, sql.Identifier(self.schema)
        applied: list[str] = []
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"processor-migrate:{self.schema}",))
            if fresh:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version text PRIMARY KEY, applied_at timestamptz NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, text in _migrations():
                if version in done:
                    continue
                conn.execute(sql.SQL(text))  # a trusted file of the package, many statements
                conn.execute("INSERT INTO schema_migrations VALUES (%s, now())", (version,))
                applied.append(version)
        self._session()
        return applied

    # -- the fold --------------------------------------------------------------------------------

    def subscribe(self, subscriptions: Mapping[str, frozenset[str]]) -> None:
        """Notify the partners of `subscriptions` (partner -> event types) from now on, and no other."""
        with self._conn.transaction():
            outbox.subscribe(self._conn, subscriptions)
        self.notifying = frozenset().union(*subscriptions.values())

    def stored_offsets(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The next offset of each partition that has one."""
        wanted = list(partitions)
        rows = self._conn.execute(
            "SELECT topic, partition, next_offset FROM consumed WHERE (topic, partition) IN "
            "(SELECT * FROM unnest(%s::text[], %s::int[]))",
            ([t for t, _ in wanted], [p for _, p in wanted]),
        )
        return {(topic, partition): offset for topic, partition, offset in rows}

    def apply(self, batch: PollBatch, expected: dict[Partition, int | None], now: datetime) -> Applied:
        """Fold one poll batch and move each of its partitions from its `expected` stored offset (None:
        none stored yet) to its end, in one transaction. Raises Fenced (nothing applied) when another
        processor moved an offset meanwhile. Should the database refuse a record that passed the
        checks, the batch is applied again record by record and the refused ones are quarantined."""
        try:
            return self._apply(batch, expected, now, batch.records)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            log.error("the database refused a record of this poll batch (%s); applying it record by record", exc)
            return self._apply(batch, expected, now, batch.records, one_by_one=True)

    def _apply(
        self,
        batch: PollBatch,
        expected: dict[Partition, int | None],
        now: datetime,
        records: Sequence[Incoming],
        one_by_one: bool = False,
    ) -> Applied:
        conn = self._conn
        unreadable = list(batch.unreadable)
        new = late = duplicates = 0
        conflicts: list[Conflict] = []
        self._opened = set()
        with conn.transaction():
            # Safe without waiting for the disk: the offsets commit with the state, so a commit that a
            # server crash loses takes its offsets along, and those records are read and applied again.
            conn.execute("SET LOCAL synchronous_commit TO off")
            self._move(batch, expected, now)
            # after the offsets: a lifecycle step that closed batches has committed before, or waits
            (closed_through,) = conn.execute("SELECT closed_through FROM lifecycle").fetchone() or (None,)
            assert closed_through is not None, "migration 0004 makes the lifecycle row"
            if one_by_one:  # the best copy first, as the fold of the whole batch takes it (not the read order)
                records = sorted(records, key=lambda r: self._copy_rank(r, closed_through))
            for group in [[r] for r in records] if one_by_one else [records]:
                lines, refused = self._route(group, closed_through, now)
                unreadable += refused
                if not lines:
                    continue
                try:
                    with conn.transaction():  # a savepoint when one by one
                        counts = self._fold(lines, now, one_by_one)
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                    if not one_by_one:
                        raise
                    unreadable.append(Unreadable(*_record_key(group[0]), f"refused by the database: {exc}"[:500]))
                    continue
                new, late, duplicates = new + counts[0], late + counts[1], duplicates + counts[2]
                conflicts += counts[3]
            if unreadable:
                conn.cursor().executemany(
                    "INSERT INTO unreadable VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", unreadable
                )
            if conflicts:
                self._record_read_step(expected, now)
        self._known_batches |= self._opened  # committed
        return Applied(new, duplicates, late, len(unreadable), sorted(conflicts, key=_place))

    def _copy_rank(self, record: Incoming, closed_through: datetime) -> tuple[bool, int, str, int, int]:
        """Where a record stands among the copies of its transaction: (late, record timestamp, topic,
        partition, offset), the order of statements.FOLD."""
        late = self.calendar.batch_times(record.batch_id).closes_at <= closed_through
        return (late, record.accepted_ms, *_record_key(record))

    def _record_read_step(self, expected: dict[Partition, int | None], now: datetime) -> None:
        """Record this poll batch as a read step: the offset each of its partitions started at, and the
        next offset of every partition now (its own moved to their end, the others' as committed). Which
        instruction became a transaction depended on what this batch read together and what was folded
        before it; the replay reads the same way (processor/replay.py)."""
        started = [[topic, partition, offset or 0] for (topic, partition), offset in sorted(expected.items())]
        self._conn.execute(
            "INSERT INTO read_steps (started, offsets, recorded_at)"
            " SELECT %s, coalesce(jsonb_agg(jsonb_build_array(topic, partition, next_offset)), '[]'), %s"
            " FROM consumed",
            (json.dumps(started), now),
        )

    def _move(self, batch: PollBatch, expected: dict[Partition, int | None], now: datetime) -> None:
        """Compare-and-set each partition's offset, and advance its event time by the newest event time
        of the batch (never beyond the processor's clock: an event dated in the future must not close
        batches early)."""
        for key, following in batch.ends.items():
            topic, partition = key
            newest = batch.newest.get(key)
            event_time = min(datetime.fromtimestamp(newest / 1000, UTC), now) if newest is not None else None
            if expected[key] is None:
                moved = self._conn.execute(
                    "INSERT INTO consumed VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (topic, partition, following, event_time),
                ).rowcount
            else:
                moved = self._conn.execute(
                    "UPDATE consumed SET next_offset = %s, event_time = greatest(event_time, %s)"
                    " WHERE topic = %s AND partition = %s AND next_offset = %s",
                    (following, event_time, topic, partition, expected[key]),
                ).rowcount
            if moved != 1:
                raise Fenced(f"{topic}[{partition}] is no longer at {expected[key]}")

    def _route(
        self, records: Sequence[Incoming], closed_through: datetime, now: datetime
    ) -> tuple[list[str], list[Unreadable]]:
        """Each record's COPY line: on time in the batch it was routed to while that batch is open, else
        on the late path into the next batch of its window and currency; and the batches they join,
        opened. A record with no batch to join (a calendar without business days) is quarantined."""
        calendar = self.calendar
        lines: list[str] = []
        refused: list[Unreadable] = []
        joined: set[str] = set()
        for record in records:
            if calendar.batch_times(record.batch_id).closes_at > closed_through:
                lines.append(
                    f"{record.fields}\t{record.batch_id}\t{record.value_date}\t\\N\t\\N\tf\t{record.accepted_ms}\n"
                )
                joined.add(record.batch_id)
                continue
            try:
                batch_id, value_date = calendar.late_batch(record.batch_id, closed_through)
            except ValueError as exc:
                refused.append(Unreadable(*_record_key(record), f"late, and {exc}"))
                continue
            lines.append(
                f"{record.fields}\t{batch_id}\t{value_date.isoformat()}\t{record.batch_id}\t{record.value_date}"
                f"\tt\t{record.accepted_ms}\n"
            )
            joined.add(batch_id)
        self._opened |= self._open_batches(joined, now)
        return lines, refused

    def _fold(self, lines: list[str], now: datetime, one_by_one: bool) -> tuple[int, int, int, list[Conflict]]:
        """COPY the lines and fold them: (new transactions, late ones among them, duplicates, conflicts)."""
        duplicates, conflicts = 0, []
        with self._conn.cursor() as cursor:
            if one_by_one:
                cursor.execute("DELETE FROM incoming")  # the previous record's line
            with cursor.copy(statements.COPY) as copy:
                copy.write("".join(lines))
            new, late = cursor.execute(statements.FOLD, {"now": now}).fetchone() or (0, 0)
            if new < len(lines):  # some records are of transactions already folded: the slow path
                duplicates = cursor.execute(statements.BETTER_COPIES).rowcount  # each replaced one is a duplicate now
                duplicates += cursor.execute(statements.DUPLICATES).rowcount
                conflicts = [Conflict(*row) for row in cursor.execute(statements.CONFLICTS, {"now": now}).fetchall()]
            # the outbox, in the order it happened: what was folded, then what conflicts with it
            written = 0
            if self.notifying & {"transaction.batched", "transaction.moved"}:
                written += cursor.execute(outbox.FOLDED, {"now": now}).rowcount
            if conflicts and "transaction.conflict" in self.notifying:
                written += cursor.execute(outbox.CONFLICTED, {"now": now}).rowcount
            if written:
                outbox.announce(cursor, self.schema)
        return int(new or 0), int(late or 0), duplicates, conflicts

    def _open_batches(self, batch_ids: set[str], now: datetime) -> set[str]:
        """Insert the batches of `batch_ids` not known to exist; return those (known once committed: a
        transaction rolled back takes its batches along)."""
        unknown = batch_ids - self._known_batches
        if not unknown:
            return unknown
        rows = []
        for batch_id in sorted(unknown):
            window, value_date, currency = parse_batch_id(batch_id)
            times = self.calendar.batch_times(batch_id)
            rows.append((batch_id, window, value_date, currency, times.closes_at, times.settles_at, now))
        self._conn.cursor().executemany(
            "INSERT INTO batches (batch_id, settlement_window, value_date, currency, status, closes_at, settles_at,"
            " opened_at) VALUES (%s, %s, %s, %s, 'open', %s, %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )
        return unknown

    # -- the batch lifecycle -------------------------------------------------------------------------

    def caught_up(self, partitions: Sequence[tuple[str, int, int | None]], now: datetime) -> None:
        """Partitions found read to their end offset (topic, partition, stored next offset or None) as
        of `now`: their event time moves up to `now`, so an idle partition never holds the watermark
        back. Only while the stored offset is still that one (another instance may have moved on)."""
        if not partitions:
            return
        self._conn.cursor().executemany(
            "INSERT INTO consumed AS c VALUES (%(topic)s, %(partition)s, 0, %(now)s) ON CONFLICT (topic, partition)"
            " DO UPDATE SET event_time = greatest(c.event_time, %(now)s)"
            " WHERE c.next_offset = coalesce(%(offset)s, 0)",
            [{"topic": t, "partition": p, "offset": o, "now": now} for t, p, o in partitions],
        )

    def advance(
        self, now: datetime, event_id: Any, partitions: Iterable[Partition] = (), watermark: datetime | None = None
    ) -> dict[str, int]:
        """Take a lifecycle step (processor/lifecycle.py) in one transaction: close the batches the
        watermark has passed the close of, settle what is due by `now`, queue their events, record the
        step. The watermark is the oldest event time of `partitions` (every window partition; none closes
        anything while one has no progress yet), or `watermark` as given (a replay retaking a step).
        `event_id()` makes the events' ids. Returns how many of each it did."""
        conn = self._conn
        with conn.transaction():
            # A consistent cut: a poll batch moves `consumed` first, so it either committed before this
            # lock or waits for the step to commit; steps of several instances take turns.
            conn.execute("LOCK TABLE consumed IN SHARE ROW EXCLUSIVE MODE")
            if watermark is None:
                watermark = lifecycle.oldest_event_time(conn, list(partitions))
            done = lifecycle.step(conn, now, watermark, event_id)
            if self.notifying and any(done.values()):  # it may have written events: the deliverers look
                outbox.announce(conn, self.schema)
            return done

    def watermark(self, partitions: Iterable[Partition]) -> datetime | None:
        """The event-time watermark of `partitions` now (operators' gauge)."""
        return lifecycle.oldest_event_time(self._conn, list(partitions))

    def unpublished(self, limit: int = 1000) -> list[BatchEvent]:
        """Batch events not yet confirmed by the broker, oldest first."""
        rows = self._conn.execute(
            "SELECT sequence, batch_id, event_type, event_id, occurred_at, payload FROM batch_events "
            "WHERE published_at IS NULL ORDER BY sequence LIMIT %s",
            (limit,),
        )
        return [BatchEvent(*row) for row in rows]

    def published(self, sequences: list[int], now: datetime) -> None:
        self._conn.execute("UPDATE batch_events SET published_at = %s WHERE sequence = ANY(%s)", (now, sequences))

    # -- what operators and tests ask ----------------------------------------------------------------

    def overdue(self, now: datetime) -> int:
        """Batches whose settlement time has passed and that are not settled (operators are alerted): a
        t0/t1 batch past its settles_at, an rtgs batch past its close (its settles_at is the opening its
        members settle from, one by one)."""
        (count,) = self._conn.execute(
            "SELECT count(*) FROM batches WHERE status <> 'settled'"
            " AND CASE WHEN settlement_window = 'rtgs' THEN closes_at ELSE settles_at END <= %s",
            (now,),
        ).fetchone() or (0,)
        return int(count)

    def batches_by_status(self) -> dict[str, int]:
        return {
            status: count for status, count in self._conn.execute("SELECT status, count(*) FROM batches GROUP BY 1")
        }

    def snapshot(self) -> Snapshot:
        """The digest of the state, the offsets it is as of and the lifecycle and read steps taken on the
        way, read in one snapshot. The digest is a SHA-256 of everything the log and those steps
        determine: transactions with their routing, amounts, Kafka records, lateness and status;
        duplicates; conflicts with both fingerprints; unreadable records; batches with their status,
        frozen count, totals, net positions and late count, and exact totals over all members. Left out
        are only the processor's reading times (when a record was folded or found in conflict, a batch
        opened, an event published)."""
        with self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            offsets = dict(
                ((topic, partition), offset)
                for topic, partition, offset in self._conn.execute("SELECT topic, partition, next_offset FROM consumed")
            )
            numbered: list[tuple[int, LifecycleStep | ReadStep]] = [
                (sequence, LifecycleStep(taken_at, watermark, _offsets(cut)))
                for sequence, taken_at, watermark, cut in self._conn.execute(
                    "SELECT sequence, taken_at, watermark, offsets FROM lifecycle_steps"
                )
            ]
            numbered += [
                (sequence, ReadStep(_offsets(started), _offsets(cut)))
                for sequence, started, cut in self._conn.execute("SELECT sequence, started, offsets FROM read_steps")
            ]
            steps = [step for _, step in sorted(numbered, key=lambda numbered_step: numbered_step[0])]
            hasher = hashlib.sha256()
            for query in statements.DIGEST:
                for row in self._conn.execute(query):
                    hasher.update(("|".join("" if v is None else str(v) for v in row) + "\n").encode())
                hasher.update(b"--\n")
        return Snapshot(hasher.hexdigest(), offsets, steps)
