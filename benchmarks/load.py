"""The load of `make bench` (benchmarks/run.py): Locust with exact latencies (HDR histograms in
microseconds, see locustfile.py) and wrk (C, not Python: a cross-check of Locust, and a load that does not
run out of CPU before a fast server does), each one run's throughput, errors and latency percentiles."""

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from tests.servers import BIN, ROOT

HERE = Path(__file__).resolve().parent
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentiles_us(histogram: HdrHistogram) -> dict[str, float]:
    return {f"p{p:g}": float(histogram.get_value_at_percentile(p)) for p in PERCENTILES} | {
        "max": float(histogram.get_max_value()),
        "mean": round(histogram.get_mean_value(), 1),
    }


def curve(histogram: HdrHistogram) -> list[tuple[float, int]]:
    """(percentile, µs) points for the plot, denser towards the tail."""
    points = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99]
    return [(p, histogram.get_value_at_percentile(p)) for p in points]


def locust(
    url: str,
    users: int,
    seconds: int,
    mix: str,
    user_rps: float = 0,
    expect: int | None = None,
    auth: str = "",
    bulk_items: int = 100,
) -> dict[str, Any]:
    """One headless Locust run; exact latencies from its HDR files."""
    with tempfile.TemporaryDirectory() as hdr_dir:
        env = {**os.environ, "BENCH_MIX": mix, "BENCH_USER_RPS": str(user_rps), "BENCH_HDR_DIR": hdr_dir}
        env["BENCH_AUTHORIZATION"] = auth
        env["BENCH_BULK_ITEMS"] = str(bulk_items)
        if expect is not None:
            env["BENCH_EXPECT"] = str(expect)
        command = [
            str(BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless", "--host", url,
            "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "5",
            "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120, cwd=ROOT)
        documents = [json.loads(p.read_text()) for p in Path(hdr_dir).glob("hdr-*.json")]
    if not documents:
        raise SystemExit(f"Locust recorded nothing (exit {run.returncode}):\n{run.stderr[-3000:]}")
    latency: dict[str, HdrHistogram] = {}
    stages: dict[str, HdrHistogram] = {}
    errors: dict[str, int] = {}
    for document in documents:
        for target, encoded in ((latency, document["latency"]), (stages, document["stages"])):
            for name, text in encoded.items():
                histogram = HdrHistogram.decode(text.encode())
                if name in target:
                    target[name].add(histogram)
                else:
                    target[name] = histogram
        for name, count in document["errors"].items():
            errors[name] = errors.get(name, 0) + count
    first = min(d["first"] for d in documents)
    last = max(d["last"] for d in documents)
    measured = [n for n in latency if n != "seed"]
    ok = sum(latency[n].get_total_count() for n in measured)
    failed = sum(c for n, c in errors.items() if n != "seed")
    result = {
        "users": users,
        "seconds": round(last - first, 2),
        "requests": ok + failed,
        "errors": failed,
        "error_rate": failed / max(1, ok + failed),
        "rps": round((ok + failed) / max(1e-9, last - first), 1),
        "latency_us": {n: percentiles_us(latency[n]) for n in measured},
        "curve_us": {n: curve(latency[n]) for n in measured},
        "server_timing_us": {n: percentiles_us(h) for n, h in stages.items()},
    }
    if failed:
        sample = re.findall(r"(?m)^.*(?:expected|Error|error).*$", run.stdout + run.stderr)[:5]
        result["error_sample"] = sample
    return result


def wrk(
    url: str,
    connections: int,
    seconds: int,
    auth: str = "",
    bulk_items: int = 0,
    script_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """wrk with the new-transaction script (or, with `bulk_items`, bulk requests of that many; `script_env`,
    the script's other variables: BENCH_REPLAY): throughput and its latency percentiles (ms -> µs)."""
    command = ["wrk", "-t1" if connections == 1 else "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(HERE / "wrk_new_transactions.lua"), url]
    env = {**os.environ, "BENCH_AUTHORIZATION": auth, "BENCH_BULK_ITEMS": str(bulk_items), **(script_env or {})}
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, env=env).stdout
    units = {"us": 1, "ms": 1000, "s": 1_000_000}
    latency = {
        f"p{p}": float(value) * units[unit]
        for p, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if bulk_items:  # a 207 is a 2xx to wrk: the script counts every answer but 200 (all accepted)
        errors = int(re.search(r"bulk non-200: (\d+)", out).group(1))  # type: ignore[union-attr]
    errors += sum(map(int, socket_errors.groups())) if socket_errors else 0
    return {
        "connections": connections,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "latency_us": latency,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / max(1, requests),
    }
