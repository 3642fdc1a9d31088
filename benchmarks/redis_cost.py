"""Issue 23: what one accepted transaction costs Redis, before and after, single and bulk, in one run.

    .venv/bin/python -m benchmarks.redis_cost [--rounds 3] [--transactions 100000] [--single-transactions N]
        [--replays 10000] [--before 0304ead] [--after PATH] [--sample 5000] [--json PATH] [--targets FILE]

Two checkouts of the gateway: "before", a git worktree of `--before` (a commit, made here and removed at
the end; the compiled fastcore extension, which git does not hold, is copied in when fastcore's source is
the same at that commit, else both run fastcore in pure Python and the report says so), and "after", the
working tree. Rounds alternate their order (before, after; after, before; ...) and the medians over the
rounds are reported. Each checkout, each round, gets a Redis of its own (a `redis-server` on a free port,
no persistence, started empty and stopped after) and a gateway of its own (Granian, one worker per core,
open mode, with that checkout on PYTHONPATH and as Granian's working directory, a partner of its own, the
run's own topics on the local Kafka, removed at the end). After a warm-up and a FLUSHALL, per mode:

  single  `--single-transactions` (default `--transactions`) new seed-shaped transactions (the README's
          curl body, made unique) POSTed to /api/v1/transactions/ over CONCURRENCY keep-alive connections
  bulk    `--transactions` of them through /api/v1/transactions/bulk in requests of 500
  replay  then the same transactions again, the same way (single: the first `--replays`): what a
          replay costs (answered 200)

Around each load: CONFIG RESETSTAT, then, once the gateway's commands have stopped (the completions are
sent after the answers), INFO commandstats, the server's CPU time from /proc/<pid>/stat (utime + stime,
and schedstat, finer, as a cross-check) and INFO memory's used_memory; then SCAN and MEMORY USAGE over a
random sample of `--sample` keys, scaled to every key. All of it divided by the transactions answered 202
(replays: by those answered 200). FLUSHALL before each mode, so the keys counted are that mode's alone.

  commands            every call INFO commandstats counts, the ones scripts make included (this run's
                      own INFO, CONFIG, MEMORY, SCAN, FLUSHALL, CLIENT, DBSIZE left out)
  commandstats µs     the usec INFO commandstats gives the commands the gateway sent (a script's usec
                      includes the commands it ran, which are not counted twice: a command named in a
                      `redis.call` of the checkout's Lua is taken as run by a script). Redis times a
                      command by the clock, not by CPU: on a shared machine a command's usec includes
                      the time Redis was preempted during it (here 0.6 s of CPU read as 1 to 3.6 s), so
                      this row is reported and not gated
  server CPU µs       the Redis process's CPU time: commands, parsing, networking, its timers; the CPU
                      target is judged on it
  used_memory bytes   used_memory after minus before (dataset, hash tables, expiry table)
  MEMORY USAGE bytes  the sampled keys' MEMORY USAGE (SAMPLES 0), per key, times the keys there are

The report goes to --json (default benchmarks/results/redis-cost-<UTC stamp>.json), with a Markdown
table beside it (.md, printed too): before | after | after/before | target | verdict per metric and mode.
Targets are [redis_cost] of benchmarks/targets.toml, judged on "after"; a miss says what was measured.
Exit status 0 when every target is met, 1 otherwise. Needs the local stack's Kafka (GATEWAY_* variables,
`deploy/stack.sh env`) and `redis-server`. `make bench` runs it as a phase (benchmarks/run.py).

The pieces: redis_cost_stats.py (the arithmetic and the table), redis_cost_load.py (the transactions and
how they are sent), redis_cost_server.py (the Redis of our own and what it did), redis_cost_checkouts.py
(the checkouts and their gateways), redis_cost_round.py (one round of one checkout: its loads and what
they cost).
"""

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.redis_cost_checkouts import after_state, before_checkout, prepare_fastcore
from benchmarks.redis_cost_load import BULK_SIZE
from benchmarks.redis_cost_round import BULK_CONCURRENCY, measure_checkout
from benchmarks.redis_cost_stats import MODES, breakdown, markdown, median_of, rows
from tests.servers import ROOT

HERE = Path(__file__).resolve().parent
DEFAULT_BEFORE = "0304ead"  # issue 23's starting point
CONCURRENCY = 64  # keep-alive connections of the single load


# -- the run --------------------------------------------------------------------------------------


def load_targets(path: Path) -> dict[str, float]:
    found: dict[str, float] = tomllib.loads(path.read_text()).get("redis_cost", {})
    return found


def delete_topics(bootstrap: str, prefix: str) -> None:
    """The run's own topics, gone."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [name for name in admin.list_topics(timeout=15).topics if name.startswith(prefix)]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
        with contextlib.suppress(Exception):
            future.result(30)


def run(plan: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The alternating rounds on the run's own topics (removed at the end), then warnings and medians."""
    from gateway.kafka.producer import ensure_topics
    from gateway.settings import Settings

    tag = secrets.token_hex(3)
    prefix = f"rcost-{tag}."
    settings = msgspec.structs.replace(Settings.from_env(), topic_prefix=prefix)
    ensure_topics(settings)
    report = new_report(plan, prefix)
    try:
        measure_rounds(plan, tag, prefix, report, log)
    finally:
        delete_topics(settings.kafka_bootstrap, prefix)
    report["warnings"] += changed_tree(report["rounds"]) + unexpected_answers(report["rounds"])
    report["medians"] = medians(report["rounds"])
    return report


def new_report(plan: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The report before any round: when, the command, the plan."""
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.redis_cost", *plan.argv]),
        "plan": {
            "rounds": plan.rounds, "transactions_bulk": plan.transactions,
            "transactions_single": plan.single_transactions, "replays": plan.replays, "bulk_size": BULK_SIZE,
            "single_connections": plan.connections, "bulk_requests_in_flight": BULK_CONCURRENCY,
            "gateway_workers": os.cpu_count(), "memory_usage_sample": plan.sample, "topic_prefix": prefix,
        },
        "rounds": [],
        "warnings": [],
    }  # fmt: skip


def measure_rounds(
    plan: argparse.Namespace, tag: str, prefix: str, report: dict[str, Any], log: Callable[[str], None]
) -> None:
    """The two checkouts, each round in the other order; every round's result goes into the report."""
    after = Path(plan.after).resolve()
    with before_checkout(plan.before) as (before, before_info), tempfile.TemporaryDirectory() as scratch_dir:
        fastcore_env, fastcore = prepare_fastcore(before, before_info)
        report["fastcore"] = fastcore
        report["checkouts"] = {"before": before_info, "after": after_state(after)}
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        report["redis_server"] = redis_version.strip()
        log(f"redis cost: before {before_info.get('commit', before)[:12]}, after {after}; fastcore {fastcore}")
        checkouts = {"before": before, "after": after}
        env = {**os.environ, **fastcore_env, "GATEWAY_TOPIC_PREFIX": prefix}
        for round_ in range(plan.rounds):
            for label in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                log(f"redis cost, round {round_ + 1} of {plan.rounds}: {label}")
                scratch = Path(scratch_dir) / f"{label}-{round_}"
                scratch.mkdir()
                partner = {"GATEWAY_PARTNER": f"rcost-{tag}-{label}-{round_}"}
                result = measure_checkout(label, checkouts[label], plan, {**env, **partner}, scratch, log)
                if label == "after":  # what it was at the end of the round (the tree may be edited)
                    state = after_state(after)
                    result["after_state"] = f"{state.get('head', '')[:12]}+{state.get('change_sha256', '')}"
                report["rounds"].append({"round": round_, "checkout": label, **result})


def changed_tree(rounds: list[dict[str, Any]]) -> list[str]:
    """A warning when the working tree changed between the after rounds."""
    states = [r["after_state"] for r in rounds if r["checkout"] == "after"]
    if len(set(states)) <= 1:
        return []
    return [
        "the working tree changed during the run: the after rounds measured different code (HEAD+digest of "
        f"the change, each after round's end: {', '.join(states)})"
    ]


def unexpected_answers(rounds: list[dict[str, Any]]) -> list[str]:
    """A warning per round and mode answered other than 202 (new) or 200 (replays)."""
    warnings = []
    for r in rounds:
        for mode in MODES:
            for name, found in (("", r[mode]["outcomes"]), ("replays ", r[mode]["replay_outcomes"])):
                wanted = "200" if name else "202"
                other = {status: n for status, n in found.items() if status != wanted}
                if other:
                    warnings.append(
                        f"round {r['round'] + 1}, {r['checkout']}, {mode} {name}answered other than {wanted}: {other}"
                    )
    return warnings


def medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each checkout's medians over its rounds, per mode."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for label in ("before", "after"):
        mine = [r for r in rounds if r["checkout"] == label]
        found[label] = {mode: median_of([r[mode] for r in mine]) for mode in MODES}
    return found


def finish(report: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """The rows, their table, the misses and the verdict, from the medians."""
    report["targets"] = targets
    report["rows"] = rows(report["medians"], targets)
    report["misses"] = [f"{r['metric']}, {r['mode']}: {r['reason']}" for r in report["rows"] if r["passed"] is False]
    report["verdict"] = "fail" if report["misses"] else "pass"
    report["table"] = markdown(report["rows"])
    report["breakdown"] = breakdown(report["medians"])
    return report


def document(report: dict[str, Any]) -> str:
    """The Markdown report: what was compared, the table, the misses, the breakdown."""
    plan, checkouts = report["plan"], report["checkouts"]
    after = checkouts["after"]
    before = checkouts["before"].get("commit", checkouts["before"].get("path", "?"))
    changed = f", with {len(after.get('changed', []))} changed files ({after.get('change_sha256')})" if after.get(
        "changed") else ""  # fmt: skip
    lines = [
        f"# Redis cost per transaction, {report['started']}",
        "",
        f"before: {before}; after: the working tree, at the start {after.get('head', after.get('path'))}{changed}. "
        f"Medians of {plan['rounds']} interleaved rounds; bulk {plan['transactions_bulk']:,} transactions in "
        f"requests of {plan['bulk_size']}, single {plan['transactions_single']:,} over {plan['single_connections']} "
        f"connections; replays: the bulk ones all again, the first {plan['replays']:,} single ones. "
        f"fastcore: {report['fastcore']}. {report['redis_server']}.",
        "",
        report["table"],
        "",
        *(
            [f"Misses ({len(report['misses'])}):", *(f"- {m}" for m in report["misses"]), ""]
            if report["misses"]
            else []
        ),
        *(["Warnings:", *(f"- {w}" for w in report["warnings"]), ""] if report.get("warnings") else []),
        "Per transaction, by command and by key (medians):",
        "",
        report["breakdown"],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--transactions", type=int, default=100_000, help="new transactions through bulk")
    parser.add_argument("--single-transactions", type=int, help="new transactions one by one (default: --transactions)")
    parser.add_argument("--replays", type=int, default=10_000, help="single transactions sent again (bulk: all)")
    parser.add_argument("--connections", type=int, default=CONCURRENCY, help="of the single load")
    parser.add_argument("--sample", type=int, default=5000, help="keys whose MEMORY USAGE is read")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help=f"a commit or a folder (default {DEFAULT_BEFORE})")
    parser.add_argument("--after", default=str(ROOT), help="a folder (default: this working tree)")
    parser.add_argument("--targets", type=Path, default=HERE / "targets.toml")
    parser.add_argument("--json", type=Path, help="the report (default benchmarks/results/redis-cost-<stamp>.json)")
    parser.add_argument("--seed", type=int, default=23, help="of the MEMORY USAGE sample")
    plan = parser.parse_args(argv)
    plan.argv = sys.argv[1:] if argv is None else argv
    plan.single_transactions = plan.single_transactions or plan.transactions
    if plan.rounds < 1 or plan.transactions < 1 or plan.single_transactions < 1 or plan.replays < 0:
        parser.error("--rounds and the transactions must be positive, --replays not negative")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = plan.json or HERE / "results" / f"redis-cost-{stamp}.json"

    def log(message: str) -> None:
        print(message, flush=True)

    report = finish(run(plan, log), load_targets(plan.targets))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    path.with_suffix(".md").write_text(document(report))
    print(f"\n{document(report)}\nreport: {path} (and {path.with_suffix('.md').name})")
    return 0 if report["verdict"] == "pass" else 1


# -- as a phase of `make bench` (benchmarks/run.py) -----------------------------------------------


def phase(rounds: int, transactions: int, path: Path, targets: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """This module in its own process (its progress on our output); its report, or what went wrong."""
    log(f"redis cost per transaction (issue 23): before and after, {rounds} rounds, {transactions:,} transactions")
    command = [sys.executable, "-m", "benchmarks.redis_cost", "--rounds", str(rounds)]
    command += ["--transactions", str(transactions), "--json", str(path), "--targets", str(targets)]
    budget = 300 + rounds * 2 * (90 + transactions / 400)  # 100,000: about 1 minute a checkout, a round
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=budget)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {budget:.0f} s"}
    if not path.exists():
        return {"error": f"exit {done.returncode}, no report"}
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def gates(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The phase's targets as benchmarks.run's gates."""
    if result is None:
        return []
    if "rows" not in result:
        return [{"target": "redis cost per transaction", "measured": result.get("error"), "limit": None, "unit": "",
                 "passed": False}]  # fmt: skip
    return [
        {
            "target": f"redis cost: {row['metric']}, {row['mode']}",
            "measured": row["after"],
            "limit": row["limit"],
            "unit": row["unit"],
            "passed": row["passed"],
        }
        for row in result["rows"]
        if row["passed"] is not None
    ]


if __name__ == "__main__":
    sys.exit(main())
