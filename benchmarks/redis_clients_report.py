"""The Redis clients A/B's report (benchmarks/redis_clients.py): the versions measured, the Markdown
table and issue 13's verdict per topology."""

import contextlib
import platform
from importlib import metadata
from typing import Any

from benchmarks.redis_clients_adapters import TIMEOUT, Target
from gateway.redis.pipeline import RedisPipeline

PACKAGES = ("redis", "hiredis", "coredis", "valkey-glide", "uvloop")


def versions() -> dict[str, str]:
    """Python's version and those of the client packages installed."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


async def server_version(target: Target) -> str:
    """The Redis version of the target's first address."""
    host, port = target.addresses[0]
    auth = ""
    if target.password:
        auth = f"{target.username or ''}:{target.password}@" if target.username else f":{target.password}@"
    client = RedisPipeline(f"redis://{auth}{host}:{port}/0", TIMEOUT)
    try:
        info = (await client.execute("INFO", "server")).decode()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    finally:
        client.close()
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("redis_version:")), "?")


def table(report: dict[str, Any]) -> str:
    """The Markdown table: every client on every topology, medians over the rounds."""
    lines = [
        "| client | topology | calls/s | calls/s vs pipeline | p50 µs | p50 vs pipeline | p99 µs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    for topology, found in report["topologies"].items():
        for name in report["settings"]["clients"]:
            r = found["clients"].get(name)
            if r is None:
                reason = " ".join(found["not_measured"].get(name, "").split()).replace("|", "/")
                lines.append(f"| {name} | {topology} | not measured: {reason} | | | | |")
                continue
            lines.append(
                f"| {name} | {topology} | {r['calls_per_s']:,.0f} | {ratio(r['throughput_ratio'])} | "
                f"{r['p50_us']:.0f} | {ratio(r['p50_ratio'])} | {r['p99_us']:.0f} |"
            )
    return "\n".join(lines)


def verdicts(report: dict[str, Any]) -> list[str]:
    """Issue 13's question per topology, in words."""
    said = []
    for topology, found in report["topologies"].items():
        within = found["within_15_percent"]
        if within is None:
            said.append(f"{topology}: no pipeline measurement to compare with")
        elif within:
            said.append(
                f"{topology}: within 15% of the pipeline on throughput and p50: {', '.join(within)}; "
                "a maintained client can replace the hand-written one"
            )
        else:
            said.append(f"{topology}: no maintained client within 15% of the pipeline on both throughput and p50")
        missing = [name for name in found["not_measured"] if name != "pipeline"]
        if missing:
            said[-1] += f" (not measured: {', '.join(missing)})"
    return said
