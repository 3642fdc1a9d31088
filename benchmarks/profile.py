"""Where a transaction's CPU goes inside the gateway's workers: the per-stage profile of
docs/cost-per-transaction.md, reproducible.

    python -m benchmarks.profile [single|bulk] [--seconds 10] [--py-spy]

Starts the open gateway (benchmarks/run.py's `gateway-open`, one worker per core) on the local stack,
warms it, then drives it with wrk (single: 64 connections of new transactions; bulk: 8 connections of
requests of 500) and prints:

- context switches per accepted transaction of each worker thread, voluntary and not
  (/proc/<pid>/task/<tid>/status), the event loop thread named `loop`;
- with --py-spy, on-CPU samples of every worker thread (py-spy record --nonblocking --threads, Python
  frames; the loop's native run shows as the frame that runs it): the share of each thread and the
  functions with the most samples of their own.
"""

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.load import wrk
from benchmarks.servers import servers
from tests.servers import BIN


def context_switches(pids: list[int]) -> collections.Counter:
    """Voluntary and involuntary switches so far of every thread of `pids`, by thread."""
    found: collections.Counter = collections.Counter()
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = "loop" if task.name == str(pid) else f"{(task / 'comm').read_text().strip()}-{task.name}"
                status = dict(
                    line.split(":\t") for line in (task / "status").read_text().splitlines() if "ctxt" in line
                )
            except FileNotFoundError:
                continue  # the thread ended meanwhile
            found[f"{name} voluntary"] += int(status["voluntary_ctxt_switches"])
            found[f"{name} involuntary"] += int(status["nonvoluntary_ctxt_switches"])
    return found


def summarise(collapsed: list[Path], top: int = 30) -> list[str]:
    """py-spy's raw (collapsed) samples: each thread's share, then the frames with most self samples."""
    threads: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for path in collapsed:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames, samples = stack.split(";"), int(count)
            total += samples
            threads[frames[0]] += samples
            own[frames[-1]] += samples
    lines = [f"{total} samples; by thread:"]
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in threads.most_common(10)]
    lines += ["self samples, by frame:"]
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", nargs="?", choices=("single", "bulk"), default="single")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--py-spy", action="store_true", help="sample the workers with py-spy too")
    parser.add_argument("--port-base", type=int, default=8700)
    args = parser.parse_args()
    items, connections = (500, 8) if args.mode == "bulk" else (0, 64)
    with tempfile.TemporaryDirectory() as scratch:
        server = servers(2, args.port_base, Path(scratch))["gateway-open"]
        server.start(Path(scratch))
        try:
            wrk(server.url, connections, 3, bulk_items=items)  # warm-up
            workers = server.workers()
            spy = [str(BIN / "py-spy"), "record", "--nonblocking", "--threads", "-r", "250", "-f", "raw"]
            samplers = [
                subprocess.Popen(
                    [*spy, "-d", str(args.seconds), "-o", f"{scratch}/spy-{pid}", "-p", str(pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid in workers
                if args.py_spy
            ]
            before = context_switches(workers)
            run = wrk(server.url, connections, args.seconds, bulk_items=items)
            after = context_switches(workers)
            for sampler in samplers:
                sampler.wait(args.seconds + 30)
        finally:
            server.stop()
        accepted = (run["requests"] - run["errors"]) * max(items, 1)
        print(f"{args.mode}: {accepted} transactions accepted in {args.seconds} s; context switches per transaction:")
        for name in sorted(after, key=lambda n: before[n] - after[n]):
            if after[name] > before[name]:
                print(f"  {(after[name] - before[name]) / max(accepted, 1):6.3f}  {name}")
        if args.py_spy:
            print("\n".join(summarise(sorted(Path(scratch).glob("spy-*")))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
