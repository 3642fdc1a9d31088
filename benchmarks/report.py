"""The report of `make bench` (benchmarks/run.py): the machine it ran on, the plot (latency curves,
throughput steps, the soak's memory, the CPU per transaction) and the summary printed at the end."""

import json
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    memory = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    packages = ("granian", "litestar", "msgspec", "confluent-kafka", "redis", "hiredis", "fastapi", "pydantic")
    packages += ("uvicorn", "aiokafka", "locust", "coredis", "valkey-glide")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu.group(1) if cpu else "unknown",
        "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: metadata.version(name) for name in packages if _installed(name)},
        "note": "load generator, Redis, Kafka and the server share these cores",
    }


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _plot_cost(medians: dict[str, dict[str, Any]], cpu: Any, throughput: Any) -> None:
    """The headline: whole-stack CPU per transaction by part (stacked), and throughput, per server and phase."""
    labels = [f"{name}\n{phase}" for name, phases in medians.items() for phase in phases]
    results = [result for phases in medians.values() for result in phases.values()]
    bottom = [0.0] * len(results)
    for part in ("server", "redis", "kafka", "postgres"):
        heights = [r["cpu_us"].get(part, 0.0) for r in results]
        if any(heights):
            cpu.bar(labels, heights, bottom=bottom, label=part)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    cpu.set_ylabel("µs of CPU per accepted transaction")
    cpu.set_title("Whole stack's CPU per transaction (load generator apart)")
    throughput.bar(labels, [r["transactions_per_second"] for r in results], color="tab:green")
    throughput.set_ylabel("transactions/s (wrk)")
    throughput.set_yscale("log")
    throughput.set_title("Throughput in the same rounds")
    for axis in (cpu, throughput):
        axis.tick_params(axis="x", labelsize=7)
        axis.grid(True, axis="y", alpha=0.3)
    if results:
        cpu.legend()


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency percentile curves, throughput steps and the soak's memory, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    colors = {"gateway": "tab:blue", "gateway-open": "tab:cyan", "peer": "tab:red", "ceiling": "tab:gray"}
    for axis, phase, title in (
        (axes[0][0], "one_connection_new", "One connection, new transactions"),
        (axes[0][1], "steady", f"Steady {report['plan']['steady_rate']}/s, new transactions"),
    ):
        for name, result in report["servers"].items():
            points = result.get(phase, {}).get("curve_us", {}).get("new")
            if points:
                xs = [1 / (1 - p / 100) for p, _ in points]
                axis.plot(xs, [us / 1000 for _, us in points], marker="o", label=name, color=colors.get(name))
        axis.set_xscale("log")
        axis.set_xticks([2, 10, 100, 1000, 10000], ["p50", "p90", "p99", "p99.9", "p99.99"])
        axis.set_ylabel("latency, ms")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    axis = axes[1][0]
    for name, result in report["servers"].items():
        steps = result.get("steps", [])
        axis.plot([s["users"] for s in steps], [s["rps"] for s in steps], marker="o", label=f"{name} (Locust)",
                  color=colors.get(name))  # fmt: skip
        steps = result.get("wrk_steps", [])
        axis.plot([s["connections"] for s in steps], [s["rps"] for s in steps], marker="s", linestyle="--",
                  label=f"{name} (wrk)", color=colors.get(name))  # fmt: skip
    axis.set_xscale("log", base=2)
    axis.set_xlabel("closed-loop users / connections")
    axis.set_ylabel("requests/s (new transactions)")
    axis.set_title("Throughput as load steps up")
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis = axes[1][1]
    samples = report.get("soak", {}).get("rss_kib", [])
    pids = sorted({pid for _, sizes in samples for pid in sizes})
    for pid in pids:
        axis.plot([t for t, s in samples if pid in s], [s[pid] / 1024 for _, s in samples if pid in s],
                  label=f"worker {pid}")  # fmt: skip
    axis.set_xlabel("seconds")
    axis.set_ylabel("resident memory, MiB")
    axis.set_title("Gateway workers during the soak" if pids else "Soak not run")
    axis.grid(True, alpha=0.3)
    if pids:
        axis.legend()
    _plot_cost(report.get("cost", {}).get("medians", {}), axes[2][0], axes[2][1])
    fig.suptitle(f"Settlement gateway benchmark, {report['started']}, {report['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_summary(report: dict[str, Any], path: Path) -> None:
    print(f"\nreport: {path}" + (f" (plot: {path.with_suffix('.png')})" if path.with_suffix(".png").exists() else ""))
    headline = report.get("cost")
    if headline:
        print("CPU per accepted transaction (whole stack, /proc; medians of interleaved rounds):")
        print(headline["table"])
    print(
        f"{'server':<12} {'max rps':>9} {'1-conn p50/p99 µs':>20} {'steady p50/p99/p99.9 µs':>26} {'wrk max rps':>12}"
    )
    for name, r in report["servers"].items():
        one = r["one_connection_new"]["latency_us"].get("new", {})
        steady = r["steady"]["latency_us"].get("new", {})
        wrk_rps = max((w["rps"] for w in r.get("wrk_steps", [])), default="-")
        print(
            f"{name:<12} {r['max_sustained_rps']:>9.0f} {one.get('p50', 0):>9.0f} / {one.get('p99', 0):<8.0f}"
            f" {steady.get('p50', 0):>8.0f} / {steady.get('p99', 0):>6.0f} / {steady.get('p99.9', 0):<8.0f}"
            f" {wrk_rps:>12}"
        )
    for name, ratio in report.get("ratios", {}).items():
        print(f"{name}: {ratio}")
    cost = report.get("partners")
    if cost:  # the A/B rounds' medians (wrk): 128 connections' throughput, one connection's p50
        rps, p50 = cost["max_rps"], cost["one_connection_new_p50_us"]
        print(
            f"partners (authenticated / open): max rps {rps['authenticated']:.0f} / {rps['open']:.0f} = "
            f"{cost['throughput_ratio']}; one-connection p50 µs {p50['authenticated']:.0f} / {p50['open']:.0f} = "
            f"{cost['p50_ratio']}"
        )
    bulk = report.get("bulk")
    if bulk:
        print(f"bulk: single endpoint {bulk['single_transactions_per_second']:.0f} transactions/s", end="")
        for items, run in bulk["sizes"].items():
            latency = run["latency_us"].get("bulk", run["latency_us"])  # Locust per scenario, wrk flat
            print(
                f"; {items}/request {run['transactions_per_second']:.0f}/s (p99 {latency.get('p99', 0):.0f} µs)", end=""
            )
        half = bulk.get("half_rate", {}).get("latency_us", {}).get("bulk", {})
        print(f"; half rate p50/p99 µs {half.get('p50', 0):.0f} / {half.get('p99', 0):.0f}" if half else "")
    cluster = report.get("cluster")
    if cluster:
        one, many = cluster["medians"]["gateway-open"], cluster["medians"]["gateway-cluster"]
        print(
            f"cluster (open gateway, medians): wrk 128 conn. {many['rps']:.0f}/s on the cluster against "
            f"{one['rps']:.0f}/s on one node (x{cluster['ratios']['throughput_ratio']}); one connection p50 "
            f"{many['p50_us']:.0f} / {one['p50_us']:.0f} µs"
        )
    clients = report.get("redis_clients")
    if clients:
        print("redis clients A/B (issue 13), medians of the rounds:")
        print(clients.get("table") or f"  not run: {clients.get('error')}")
        for line in clients.get("verdicts", []):
            print(f"- {line}")
    cost = report.get("redis_cost")
    if cost:
        print("redis cost per transaction (issue 23), before | after, medians of the rounds:")
        print(cost.get("table") or f"  not run: {cost.get('error')}")
    for g in report["gates"]:
        print(f"{'PASS' if g['passed'] else 'MISS'}  {g['target']}: {g['measured']} (limit {g['limit']} {g['unit']})")
    print(f"verdict: {report['verdict']}")


def save_phase(result: dict[str, Any], out: Path, name: str) -> Path:
    """Write a phase's report (`<name>-<UTC time>.json` in `out`) and print it with each gate's verdict."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"report: {path}")
    for g in result["gates"]:
        print(f"{'PASS' if g['passed'] else 'MISS'}  {g['target']}: {g['measured']} (limit {g['limit']} {g['unit']})")
    return path
