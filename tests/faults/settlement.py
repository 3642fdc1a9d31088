"""The settlement processor in the fault suite: started beside the gateway for the whole run, watched
through every fault (the same process throughout, /ready, how soon it has folded what the log held when
the dependency came back), and its state audited afterwards against what the partners were told.

The processor runs as `python -m processor run` with a schema, a consumer group and a metrics port of
the run's own, on the run's topics, straight to Kafka (not through Toxiproxy: the broker's own faults
reach it, the gateway's network faults do not). It is never restarted here: a processor that exits is
what the run is there to find.
"""

import asyncio
import contextlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TARGET = 10.0  # seconds from a dependency's return to the processor's /ready 200 (issue 22)

Partition = tuple[str, int]
Coordinates = tuple[str, int, int]  # topic, partition, offset


def _get(url: str) -> tuple[int, bytes]:
    """The status and body of a GET; status 0 when nothing answered within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class SettlementProcessor(ServerProcess):
    """One `python -m processor run` of the run: its pid, its operations port, what its /ready said. A
    processor that takes over from another (the closer) writes on in the same log."""

    def __init__(self, env: Mapping[str, str], log_path: Path, fixed_time: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **env,
            "PROCESSOR_METRICS_HOST": "127.0.0.1",
            "PROCESSOR_METRICS_PORT": str(self.port),
            "GATEWAY_FIXED_TIME": fixed_time,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "processor", "run"]
        super().__init__("the processor", command, self.env, log_path, cwd=ROOT, own_session=False, append=True)
        self.samples: list[tuple[float, int]] = []  # (time.monotonic(), /ready status; 0: no answer)

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exit_status(self) -> int | None:
        return self.process.poll()

    def ready(self) -> bool:
        return _get(self.url + "/ready")[0] == 200

    def started(self, limit: float = 60) -> None:
        """Wait until /ready answers 200; StartFailed (a RuntimeError) when the processor exits or is not
        ready in time."""
        self.wait_ready(self.url + "/ready", seconds=limit)

    async def seconds_to_ready(self, limit: float) -> float | None:
        """Seconds until /ready answers 200; None when it did not within `limit` or the process ended."""
        started = time.monotonic()
        while time.monotonic() - started < limit and self.alive():
            if await asyncio.to_thread(self.ready):
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(0.2)
        return None

    async def watch(self, until: asyncio.Event, every: float = 0.25) -> None:
        """Ask /ready every `every` seconds until `until` is set (or the process ended), keeping each answer."""
        while not until.is_set() and self.alive():
            status, _ = await asyncio.to_thread(_get, self.url + "/ready")
            self.samples.append((time.monotonic(), status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), every)

    def answers(self, since: float, until: float) -> dict[str, int]:
        """What /ready answered between two instants, by status ('no answer' when nothing did)."""
        counted = Counter(str(status or "no answer") for at, status in self.samples if since <= at <= until)
        return dict(sorted(counted.items()))

    def lag(self) -> float | None:
        """The processor's own consumer lag (the sum of its settlement_processor_consumer_lag gauges)."""
        status, body = _get(self.url + "/metrics")
        if status != 200:
            return None
        values = re.findall(rb"^settlement_processor_consumer_lag\{[^}]*\} (\S+)$", body, re.MULTILINE)
        return sum(float(value) for value in values)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the processor commits what it applied and leaves its group) and its exit status;
        SIGKILL when it has not ended within `timeout`, shown as -9."""
        return super().stop(grace=timeout)


# -- where the fold stands ------------------------------------------------------------------------


def log_ends(bootstrap: str, topics: Iterable[str]) -> dict[Partition, int]:
    """The end offset of every partition of `topics`, asked from the brokers now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-ends", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=10).topics
        ends = {}
        for topic in topics:
            for partition in sorted(metadata[topic].partitions):
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


class State:
    """The processor's schema, read with psycopg."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema

    def connect(self) -> psycopg.Connection:
        connection = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return connection

    def positions(self) -> dict[Partition, int]:
        """The next offset the database holds for each partition (what the processor has folded)."""
        with self.connect() as connection:
            rows = connection.execute("SELECT topic, partition, next_offset FROM consumed").fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}

    def behind(self, ends: Mapping[Partition, int]) -> int | None:
        """Records before `ends` not folded yet (None when PostgreSQL does not answer)."""
        try:
            folded = self.positions()
        except psycopg.Error:
            return None
        return sum(max(end - folded.get(key, 0), 0) for key, end in ends.items())

    async def caught_up(self, ends: Mapping[Partition, int], limit: float) -> float | None:
        """Seconds until everything before `ends` is folded (the lag of that moment back to 0); None when
        it was not within `limit`."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if await asyncio.to_thread(self.behind, ends) == 0:
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(0.25)
        return None

    def count(self, query: str) -> int:
        with self.connect() as connection:
            row = connection.execute(query).fetchone()
        return int(row[0]) if row else 0


# -- the audit ------------------------------------------------------------------------------------


def invariants(connection: psycopg.Connection) -> dict[str, Any]:
    """DESIGN section 8's invariants over the whole schema: count(transactions) = the sum over batches of
    their members; each transaction in exactly one existing batch; every batch past `open` holds the
    count and the totals (exact decimals) of a re-sum of its members; nothing quarantined."""
    (total,) = connection.execute("SELECT count(*) FROM transactions").fetchone() or (0,)
    (members,) = connection.execute(
        "SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM transactions t JOIN batches b USING (batch_id)"
        " GROUP BY b.batch_id) AS per_batch"
    ).fetchone() or (0,)
    (orphans,) = connection.execute(
        "SELECT count(*) FROM transactions t LEFT JOIN batches b USING (batch_id) WHERE b.batch_id IS NULL"
    ).fetchone() or (0,)
    by_status: dict[str, int] = dict(
        connection.execute("SELECT status, count(*) FROM batches GROUP BY 1 ORDER BY 1").fetchall()
    )
    wrong: list[dict[str, Any]] = []
    frozen = connection.execute(
        "SELECT batch_id, status, transaction_count, totals FROM batches WHERE status <> 'open' ORDER BY batch_id"
    ).fetchall()
    for batch_id, status, count, totals in frozen:
        resum = connection.execute(
            "SELECT source_currency, sum(amount)::text, count(*) FROM transactions WHERE batch_id = %s GROUP BY 1",
            (batch_id,),
        ).fetchall()
        counted = sum(n for *_, n in resum)
        exact = {currency: Decimal(total_) for currency, total_, _ in resum}
        stored = {currency: Decimal(value) for currency, value in (totals or {}).items()}
        if count != counted or stored != exact:
            wrong.append(
                {
                    "batch_id": batch_id,
                    "status": status,
                    "transaction_count": count,
                    "members": counted,
                    "totals": totals,
                    "re_sum": {currency: total_ for currency, total_, _ in resum},
                }
            )
    unreadable = connection.execute(
        "SELECT topic, partition, kafka_offset, reason FROM unreadable ORDER BY 1, 2, 3 LIMIT 20"
    ).fetchall()
    (unreadable_count,) = connection.execute("SELECT count(*) FROM unreadable").fetchone() or (0,)
    (steps,) = connection.execute("SELECT count(*) FROM lifecycle_steps").fetchone() or (0,)
    return {
        "transactions": int(total),
        "sum_of_batch_members": int(members),
        "outside_any_batch": int(orphans),
        "batches": by_status,
        "batches_checked": len(frozen),
        "batches_wrong": wrong[:20],
        "batches_wrong_count": len(wrong),
        "unreadable": unreadable_count,
        "unreadable_records": [f"{t}[{p}]@{o}: {reason}" for t, p, o, reason in unreadable],
        "lifecycle_steps": int(steps),  # what a replay retakes, each at the offsets it was taken at
    }


def invariants_hold(found: Mapping[str, Any]) -> bool:
    return (
        found["transactions"] == found["sum_of_batch_members"]
        and found["outside_any_batch"] == 0
        and found["batches_wrong_count"] == 0
        and found["unreadable"] == 0
    )


def audit_state(
    state: State,
    partner: str,
    acknowledged: Mapping[str, Iterable[Coordinates]],
    phase_of: Callable[[str], str],
    records: Mapping[str, list[Coordinates]],
) -> dict[str, Any]:
    """The processor's state against the run: every acknowledged transaction (`acknowledged`: the
    coordinates each 202 or 200 gave) folded exactly once, at the coordinates it was given or with them
    recorded as a duplicate; every record of the partner in the log (`records`) either the folded one or a
    recorded duplicate, none both; and the invariants. Read in one snapshot (REPEATABLE READ)."""
    with state.connect() as connection:
        connection.autocommit = False
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with connection.transaction():
            folded = {
                txn: (topic, partition, offset)
                for txn, topic, partition, offset in connection.execute(
                    "SELECT transaction_id, topic, partition, kafka_offset FROM transactions WHERE partner = %s",
                    (partner,),
                )
            }
            duplicates: dict[str, set[Coordinates]] = {}
            for txn, topic, partition, offset in connection.execute(
                "SELECT transaction_id, topic, partition, kafka_offset FROM duplicates WHERE partner = %s", (partner,)
            ):
                duplicates.setdefault(txn, set()).add((topic, partition, offset))
            # another payload under an id already folded: the load never sends one, so each is a failure
            counted = connection.execute("SELECT count(*) FROM conflicts WHERE partner = %s", (partner,)).fetchone()
            conflicts = counted[0] if counted else 0
            found = invariants(connection)
    return {**compare(acknowledged, folded, duplicates, records, phase_of), "conflicts": conflicts, "invariants": found}


def compare(
    acknowledged: Mapping[str, Iterable[Coordinates]],
    folded: Mapping[str, Coordinates],
    duplicates: Mapping[str, set[Coordinates]],
    records: Mapping[str, list[Coordinates]],
    phase_of: Callable[[str], str],
) -> dict[str, Any]:
    """What the partners were told (`acknowledged`, per transaction id), what the log holds (`records`) and
    what the processor made of it (`folded`: the one row of each transaction; `duplicates`: the records
    it recorded as duplicates), for one partner."""
    missing: list[str] = []
    misplaced: dict[str, dict[str, Any]] = {}
    per_phase: Counter = Counter()
    answered = {txn: set(coordinates) for txn, coordinates in acknowledged.items() if coordinates}
    for txn, given in answered.items():
        if txn not in folded:
            missing.append(txn)
            per_phase[phase_of(txn)] += 1
            continue
        elsewhere = {c for c in given if c != folded[txn] and c not in duplicates.get(txn, set())}
        if elsewhere:
            misplaced[txn] = {
                "given": sorted(given),
                "folded": folded[txn],
                "duplicates": sorted(duplicates.get(txn, [])),
            }
            per_phase[phase_of(txn)] += 1
    in_log = {c for coordinates in records.values() for c in coordinates}
    recorded = {c for found_ in duplicates.values() for c in found_}
    unaccounted = sorted(in_log - set(folded.values()) - recorded)
    return {
        "acknowledged": len(answered),
        "folded": len(folded),
        "duplicates_recorded": len(recorded),
        "not_folded": len(missing),
        "not_folded_ids": sorted(missing)[:50],
        "misplaced": len(misplaced),
        "misplaced_ids": dict(sorted(misplaced.items())[:20]),
        "records_unaccounted": len(unaccounted),
        "records_unaccounted_first": [f"{t}[{p}]@{o}" for t, p, o in unaccounted[:20]],
        "folded_not_in_log": len((set(folded.values()) | recorded) - in_log),
        "counted_twice": len(set(folded.values()) & recorded),
        "not_folded_by_phase": dict(per_phase),
    }


def audit_ok(audit: Mapping[str, Any]) -> bool:
    return (
        audit["not_folded"] == 0
        and audit["misplaced"] == 0
        and audit["records_unaccounted"] == 0
        and audit["folded_not_in_log"] == 0
        and audit["counted_twice"] == 0
        and audit.get("conflicts", 0) == 0
        and invariants_hold(audit["invariants"])
    )


def fold_delays(
    state: State, partner: str, windows: Mapping[str, tuple[float, float]], stamps: Mapping[str, float]
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Per window (Unix seconds, from a dependency's return to the next fault or the end of the load): the
    longest a transaction of `partner` accepted in it (its record's timestamp, from `stamps`: transaction
    id -> Unix seconds) waited until the processor folded it (`batched_at`, the processor's clock), counted
    up to the window's end at most (after that the next fault holds it up); and how many of them it has
    not folded at all (counted as waiting to the window's end). A processor that says it is ready but
    does not fold shows here. None: no transaction was accepted in the window."""
    with state.connect() as connection:
        batched: dict[str, float] = dict(
            connection.execute(
                "SELECT transaction_id, extract(epoch FROM batched_at)::float8 FROM transactions WHERE partner = %s",
                (partner,),
            ).fetchall()
        )
    return longest_waits([(at, batched.get(txn, float("inf"))) for txn, at in stamps.items()], windows)


def longest_waits(
    folded: Iterable[tuple[float, float]], windows: Mapping[str, tuple[float, float]]
) -> tuple[dict[str, float | None], dict[str, int]]:
    """fold_delays' arithmetic: `folded` is (accepted, batched) per transaction in Unix seconds, batched
    infinite for one never folded."""
    rows = list(folded)
    found: dict[str, float | None] = {}
    never: dict[str, int] = {}
    for name, (start, end) in windows.items():
        inside = [(accepted, batched) for accepted, batched in rows if start <= accepted < end]
        found[name] = round(max(min(b, end) - a for a, b in inside), 2) if inside else None
        never[name] = sum(b == float("inf") for _, b in inside)
    return found, never


def replay(env: Mapping[str, str], timeout: float = 900) -> dict[str, Any]:
    """`python -m processor replay` (the state rebuilt from offset 0 into <schema>_replay): its exit
    status (0: the replayed digest equals the live one) and what it printed."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "processor", "replay"],
            env={**env, "PROCESSOR_METRICS_PORT": "0"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {
            "status": None,
            "seconds": round(time.monotonic() - started, 1),
            "output": [f"timed out after {timeout:g} s"],
        }
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"status": done.returncode, "seconds": round(time.monotonic() - started, 1), "output": lines[-20:]}


def future_instant(days: int) -> str:
    """An ISO-8601 instant `days` from now (GATEWAY_FIXED_TIME of the close-out processor)."""
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0).isoformat()
