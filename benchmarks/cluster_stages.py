"""Where a submission's time goes on each mix of the two stacks: one connection, the Server-Timing stages.

    .venv/bin/python -m benchmarks.cluster_stages [--requests N]

Needs both local stacks up (`deploy/stack.sh up` and `STACK=cluster deploy/stack.sh up`). For each of
Redis on one node or the Redis Cluster, and Kafka on one broker or the three-node cluster (replication
factor 3, acks=all), a one-worker open gateway takes N sequential new transactions; the medians of the
round trip and of the gateway's own Server-Timing stages (decode, validate, redis, kafka) are printed,
after a warm-up of a sixth of them.
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from benchmarks.servers import OPS_PORT_OFFSET, Contender, gateway_command
from tests.servers import ROOT, launcher_env

PORT = 8391


def stack_env(stack: str) -> dict[str, str]:
    """`deploy/stack.sh env` of one stack, whatever GATEWAY_* this process has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {"STACK": stack}
    out = subprocess.run(["deploy/stack.sh", "env"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def measure(extra: dict[str, str], requests: int, log_dir: Path) -> tuple[float, dict[str, float]]:
    """Median round trip (ms) and median of each Server-Timing stage (ms) of a gateway with `extra`."""
    command = gateway_command(PORT, 1)
    env = {"GATEWAY_ACCESS_LOG": "false", "GATEWAY_OPS_PORT": str(PORT + OPS_PORT_OFFSET), **extra}
    server = Contender("gateway-stages", command, PORT, "/ready", launcher_env(env))
    server.start(log_dir)
    try:
        totals: list[float] = []
        stages: dict[str, list[float]] = {}
        with httpx.Client(base_url=server.url) as client:
            for n in range(requests):
                unique = uuid.uuid4().hex
                body = {
                    "transaction_id": f"stages-{unique}",
                    "amount": "10.00",
                    "source_currency": "USD",
                    "destination_currency": "EUR",
                    "source_account": f"acct-{n % 50}",
                    "destination_account": "acct-dest",
                    "counterparty_id": "cparty-stages",
                    "idempotency_key": f"stages-{unique}",
                }
                started = time.perf_counter()
                answer = client.post("/api/v1/transactions/", json=body)
                if answer.status_code != 202:
                    raise SystemExit(f"{answer.status_code}: {answer.text}")
                if n < requests // 6:
                    continue
                totals.append((time.perf_counter() - started) * 1000)
                for name, value in re.findall(r"(\w+);dur=([\d.]+)", answer.headers.get("server-timing", "")):
                    stages.setdefault(name, []).append(float(value))
    finally:
        server.stop()
    return statistics.median(totals), {name: statistics.median(values) for name, values in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    single, cluster = stack_env("single"), stack_env("cluster")
    redis = {"one node": single["GATEWAY_REDIS_URL"], "cluster": cluster["GATEWAY_REDIS_URL"]}
    kafka = {
        "one broker": {"GATEWAY_KAFKA_BOOTSTRAP": single["GATEWAY_KAFKA_BOOTSTRAP"], "GATEWAY_TOPIC_REPLICATION": "1"}
    }
    kafka["cluster (RF 3)"] = {
        "GATEWAY_KAFKA_BOOTSTRAP": cluster["GATEWAY_KAFKA_BOOTSTRAP"],
        "GATEWAY_TOPIC_REPLICATION": "3",
    }
    print("| Redis | Kafka | round trip p50 ms | Server-Timing medians, ms |")
    print("|---|---|---:|---|")
    with tempfile.TemporaryDirectory() as log_dir:
        for kafka_name, kafka_env in kafka.items():
            for redis_name, redis_url in redis.items():
                total, stages = measure({"GATEWAY_REDIS_URL": redis_url, **kafka_env}, args.requests, Path(log_dir))
                timing = ", ".join(f"{name} {value:.2f}" for name, value in stages.items())
                print(f"| {redis_name} | {kafka_name} | {total:.2f} | {timing} |", flush=True)


if __name__ == "__main__":
    main()
