"""The arithmetic of issue 23's measurement (benchmarks/redis_cost.py): INFO and INFO commandstats read,
the commands a checkout's scripts run, what the gateway's commands cost per transaction, medians over the
rounds, and the table of before | after | target | verdict per metric and mode."""

import re
import statistics
from dataclasses import dataclass
from typing import Any

# the run's own commands, left out of every count
OWN_COMMANDS = frozenset({"info", "config", "memory", "scan", "flushall", "dbsize", "client", "hello", "select"})
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


def parse_info(text: str) -> dict[str, str]:
    """An INFO reply's `name:value` lines."""
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


def parse_commandstats(text: str) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec, ...}}: `cmdstat_config|resetstat:calls=1,usec=31,...`
    gives `config|resetstat`."""
    stats: dict[str, dict[str, float]] = {}
    for name, value in parse_info(text).items():
        if name.startswith("cmdstat_"):
            pairs = (item.partition("=") for item in value.split(","))
            stats[name.removeprefix("cmdstat_")] = {k: float(v) for k, _, v in pairs if v}
    return stats


def base_command(name: str) -> str:
    """`config|resetstat` -> `config`."""
    return name.partition("|")[0].lower()


def scripted_commands(lua_sources: list[str]) -> set[str]:
    """The commands Lua code runs (`redis.call('HSET', ...)`, `redis.pcall("get", ...)`), lower case."""
    names: set[str] = set()
    for source in lua_sources:
        names.update(m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z_]+)['\"]", source))
    return names


def command_cost(stats: dict[str, dict[str, float]], scripted: set[str]) -> dict[str, Any]:
    """What the gateway's commands cost, from INFO commandstats since CONFIG RESETSTAT: every call
    (those inside scripts too), the script calls, the calls sent (scripts and direct commands), and the
    usec of the calls sent (a script's usec includes what it ran: the commands in `scripted` are not
    added again), each per command too."""
    calls: dict[str, float] = {}
    usec = 0.0
    sent = 0.0
    for name, values in stats.items():
        base = base_command(name)
        if base in OWN_COMMANDS:
            continue
        calls[name] = values.get("calls", 0.0)
        if base in SCRIPT_COMMANDS or base not in scripted:
            usec += values.get("usec", 0.0)
            sent += values.get("calls", 0.0)
    scripts = sum(n for name, n in calls.items() if base_command(name) in SCRIPT_COMMANDS)
    return {"commands": sum(calls.values()), "scripts": scripts, "sent": sent, "usec": usec, "by_command": calls}


def per(value: float, count: int, digits: int = 3) -> float | None:
    """`value` per one of `count` (None when there were none)."""
    return round(value / count, digits) if count > 0 else None


def scaled_sample(sample_bytes: list[int], keys: int, transactions: int) -> float | None:
    """Bytes per transaction from a sample of the keys' MEMORY USAGE: mean per key, times the keys there are."""
    if not sample_bytes or transactions <= 0:
        return None
    return round(statistics.fmean(sample_bytes) * keys / transactions, 1)


def key_family(key: str) -> str:
    """`idem:{partner}:abc` -> `idem`: what a key is for, from its prefix."""
    return key.partition(":")[0] if ":" in key else "(other)"


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over `results` (dicts of the same shape, nested); a number missing from
    some of them counts as 0 there (a command one round did not send), None where none has it."""
    keys: list[str] = []
    for result in results:
        keys += [k for k in result if k not in keys]
    merged: dict[str, Any] = {}
    for key in keys:
        values = [r.get(key) for r in results]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            merged[key] = median_of(present)
        elif present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            numbers = [v if v is not None else 0 for v in values]
            merged[key] = round(statistics.median(numbers), 3)
        else:
            merged[key] = present[0] if present else None
    return merged


@dataclass(frozen=True)
class Metric:
    key: str  # in a mode's result
    label: str
    unit: str
    target: str | None  # the [redis_cost] entry limiting it
    modes: tuple[str, ...]  # where the target applies


METRICS = (
    Metric("commands_per_txn", "Redis commands / new transaction", "commands", "max_commands_bulk", ("bulk",)),
    Metric("commandstats_us_per_txn", "Redis µs / new transaction (commandstats, wall clock)", "µs", None, ()),
    Metric("cpu_us_per_txn", "Redis CPU µs / new transaction (server)", "µs", "max_cpu_us_bulk", ("bulk",)),
    Metric("gateway_cpu_us_per_txn", "gateway CPU µs / new transaction (its processes)", "µs", None, ()),
    Metric("used_memory_bytes_per_txn", "bytes kept / transaction (used_memory)", "bytes", "max_bytes",
           ("single", "bulk")),
    Metric("memory_usage_bytes_per_txn", "bytes kept / transaction (MEMORY USAGE)", "bytes", "max_bytes",
           ("single", "bulk")),
    Metric("replay_commands_per_replay", "Redis commands / replay", "commands", None, ()),
    Metric("replay_cpu_us_per_replay", "Redis CPU µs / replay (server)", "µs", None, ()),
    Metric("replay_gateway_cpu_us_per_replay", "gateway CPU µs / replay (its processes)", "µs", None, ()),
)  # fmt: skip
MODES = ("single", "bulk")


def verdict(measured: float | None, limit: float | None, unit: str) -> tuple[bool | None, str]:
    """(passed, what to say): None when nothing limits the metric; a miss says what was measured."""
    if limit is None:
        return None, ""
    if measured is None:
        return False, f"not measured (target at most {limit:g} {unit})"
    if measured <= limit:
        return True, f"{measured:g} <= {limit:g} {unit}"
    return False, f"{measured:g} {unit} per transaction, target at most {limit:g} {unit}"


def rows(medians: dict[str, dict[str, dict[str, Any]]], targets: dict[str, float]) -> list[dict[str, Any]]:
    """One row per metric and mode: before, after, after/before, the target and the verdict on "after"."""
    table = []
    for metric in METRICS:
        for mode in MODES:
            before = medians.get("before", {}).get(mode, {}).get(metric.key)
            after = medians.get("after", {}).get(mode, {}).get(metric.key)
            limit = targets.get(metric.target) if metric.target and mode in metric.modes else None
            passed, reason = verdict(after, limit, metric.unit)
            ratio = round(after / before, 3) if before and after is not None else None
            table.append(
                {
                    "metric": metric.label, "key": metric.key, "mode": mode, "unit": metric.unit,
                    "before": before, "after": after, "ratio": ratio, "limit": limit, "passed": passed,
                    "reason": reason,
                }
            )  # fmt: skip
    return table


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| metric | mode | before | after | after/before | target | verdict |", "|---|---|--:|--:|--:|--:|---|"]
    for row in table:
        limit = f"<= {row['limit']:g}" if row["limit"] is not None else "-"
        judged = {True: "met", False: f"MISS: {row['reason']}", None: "-"}[row["passed"]]
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "-"
        lines.append(
            f"| {row['metric']} | {row['mode']} | {_cell(row['before'])} | {_cell(row['after'])} | {ratio} | {limit}"
            f" | {judged} |"
        )
    return "\n".join(lines)


def breakdown(medians: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Per mode and checkout: the calls per transaction by command and the bytes per transaction by key
    family, the medians, one line each."""
    lines = []
    for mode in MODES:
        for label in ("before", "after"):
            result = medians.get(label, {}).get(mode)
            if not result:
                continue
            calls = sorted(result.get("calls_per_txn", {}).items(), key=lambda item: -item[1])
            keys = result.get("by_key", {})
            lines.append(
                f"- {mode}, {label}: calls/txn "
                + (", ".join(f"{name} {n:g}" for name, n in calls if n) or "-")
                + "; bytes/txn by key "
                + (", ".join(f"{name} {v['bytes_per_txn']:g} ({v['keys_per_txn']:g} keys)" for name, v in keys.items())
                   or "-")
                + "".join(f"; MEMORY STATS bytes/txn: dataset {split['dataset']:g}, key table "
                          f"{split['hashtable_main']:g}, expiry table {split['hashtable_expires']:g}"
                          for split in [result.get("memory_stats_per_txn")] if split)
            )  # fmt: skip
    return "\n".join(lines)
