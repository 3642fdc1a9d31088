"""CPU time per folded event: the settlement processor's own process and PostgreSQL's, from /proc.

    python -m benchmarks.fold_cpu [--events 50000]

Writes `--events` TransactionAccepted records (benchmarks/processor.py's backlog) to topics of a run of
its own, folds them with one in-process processor, and prints one JSON line: fold seconds, events/s,
and µs of CPU (user + system) per event of the processor's process and of every `postgres` process,
counted from its first poll batch to its last. To compare two versions side by side, run it from the
root of each checkout (a `git worktree` of the earlier commit, its extension built, this file copied
in) in alternation, several rounds each, and compare medians. Needs the local stack.
"""

import argparse
import json
import os
import sys
import time
import uuid

from benchmarks import processor as bench
from gateway.kafka.producer import ensure_topics
from gateway.settings import Settings
from processor.calendar import SettlementCalendar
from processor.service import Processor, ProcessorMetrics
from processor.settings import ProcessorSettings
from processor.store import SettlementStore


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _postgres_cpu_seconds() -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() == "postgres":
                    total += _cpu_seconds(int(entry))
        except OSError:
            continue  # ended meanwhile
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "GATEWAY_TOPIC_PREFIX": f"fold-{tag}.",
        "GATEWAY_DATABASE_SCHEMA": f"fold_{tag}",
        "PROCESSOR_GROUP": f"fold-{tag}",
    }
    gateway = Settings.from_env(env)
    ensure_topics(gateway)
    bench._produce_backlog(gateway, args.events)
    settings = ProcessorSettings.from_env(env)
    store = SettlementStore(settings.database_url, settings.schema, SettlementCalendar.from_settings(settings))
    store.migrate()
    processor = Processor(settings, store, ProcessorMetrics(), time.time)
    processor.subscribe()
    first = own = database = 0.0
    try:
        while True:
            if processor.step(1.0) and not first:
                first, own, database = time.monotonic(), _cpu_seconds(os.getpid()), _postgres_cpu_seconds()
            if first and bench._folded(settings.database_url, settings.schema) >= args.events:
                break
        seconds = time.monotonic() - first
        own, database = _cpu_seconds(os.getpid()) - own, _postgres_cpu_seconds() - database
    finally:
        processor.close()
        store.close()
    print(
        json.dumps(
            {
                "checkout": os.getcwd(),
                "events": args.events,
                "fold_seconds": round(seconds, 2),
                "events_per_second": round(args.events / seconds),
                "processor_us_per_event": round(own / args.events * 1e6, 1),
                "postgres_us_per_event": round(database / args.events * 1e6, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
