"""Locust scenarios for the settlement gateway (and for the peers, which speak the same contract).

    locust -f benchmarks/locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:8000

Scenarios (task names in Locust's table):
  new      a fresh transaction, unique id and key, realistic currencies, amounts and windows -> 202
  replay   an exact resubmission of a transaction this user already sent -> 200
  invalid  an instruction that breaks several rules -> 422
  bulk     BENCH_BULK_ITEMS fresh transactions in one POST /api/v1/transactions/bulk -> 200 (all accepted)

Environment:
  BENCH_MIX       weights, e.g. "new=8,replay=1,invalid=1" (default "new=1")
  BENCH_USER_RPS  requests per second per user (constant throughput); unset or 0: as fast as possible
  BENCH_HDR_DIR   where each Locust process writes its exact latencies (HDR histograms) at the end
  BENCH_BULK_ITEMS  transactions per bulk request (default 100)
  BENCH_EXPECT    one status every scenario must get, instead of each scenario's own (for the ceiling,
                  which answers 202 to everything)

Locust rounds response times under 100 ms to whole milliseconds in its own statistics, so every
response time is also recorded exactly, in microseconds, into an HDR histogram per scenario, and the
gateway's `Server-Timing` stages into one histogram per stage.
"""

import itertools
import json
import os
import random
import time
import uuid
from pathlib import Path

from hdrh.histogram import HdrHistogram
from locust import constant, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpUser

PATH = "/api/v1/transactions/"
BULK_PATH = "/api/v1/transactions/bulk"
BULK_ITEMS = int(os.environ.get("BENCH_BULK_ITEMS") or 100)
HEADERS = {"Content-Type": "application/json"}
if os.environ.get("BENCH_AUTHORIZATION"):  # the authenticated gateway: the bench partner's key
    HEADERS["Authorization"] = os.environ["BENCH_AUTHORIZATION"]
EXPECTED = {"new": 202, "replay": 200, "invalid": 422, "bulk": 200}

# (currency, minor units, weight): roughly the mix of a cross-border payments book
CURRENCIES = [
    ("USD", 2, 40),
    ("EUR", 2, 25),
    ("GBP", 2, 15),
    ("JPY", 0, 8),
    ("CHF", 2, 5),
    ("CAD", 2, 4),
    ("AUD", 2, 3),
]
WINDOWS = [("t1", 50), ("t0", 25), ("rtgs", 10), (None, 15)]  # None: the router chooses


def parse_mix(text: str) -> dict[str, int]:
    """'new=8,replay=1' -> {'new': 8, 'replay': 1}; unknown scenarios are an error."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in EXPECTED:
            raise ValueError(f"BENCH_MIX: unknown scenario {name!r} (known: {', '.join(EXPECTED)})")
        mix[name] = int(weight or 1)
    return mix


MIX = parse_mix(os.environ.get("BENCH_MIX", "new=1"))
if os.environ.get("BENCH_EXPECT"):
    EXPECTED = dict.fromkeys(EXPECTED, int(os.environ["BENCH_EXPECT"]))
USER_RPS = float(os.environ.get("BENCH_USER_RPS") or 0)


class Recorder:
    """Exact latencies of this Locust process: one HDR histogram per scenario and per server stage."""

    def __init__(self) -> None:
        self.latency: dict[str, HdrHistogram] = {}
        self.stages: dict[str, HdrHistogram] = {}
        self.errors: dict[str, int] = {}
        self.first = self.last = 0.0  # wall-clock seconds of the first and the last response

    @staticmethod
    def _histogram() -> HdrHistogram:
        return HdrHistogram(1, 60_000_000, 3)  # 1 µs .. 60 s, 3 significant digits

    def record(self, name: str, micros: int, server_timing: str | None) -> None:
        self.last = time.time()
        self.first = self.first or self.last - micros / 1e6
        histogram = self.latency.get(name) or self.latency.setdefault(name, self._histogram())
        histogram.record_value(max(1, micros))
        if server_timing:  # "decode;dur=0.012, redis;dur=0.101" (milliseconds)
            for metric in server_timing.split(","):
                stage, _, duration = metric.strip().partition(";dur=")
                if duration:
                    hist = self.stages.get(stage) or self.stages.setdefault(stage, self._histogram())
                    hist.record_value(max(1, round(float(duration) * 1000)))

    def failed(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1
        self.last = time.time()

    def dump(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        document = {
            "latency": {n: h.encode().decode() for n, h in self.latency.items()},
            "stages": {n: h.encode().decode() for n, h in self.stages.items()},
            "errors": self.errors,
            "first": self.first,
            "last": self.last,
        }
        (directory / f"hdr-{os.getpid()}.json").write_text(json.dumps(document))


RECORDER = Recorder()


@events.request.add_listener
def _on_request(name, response_time, response, exception, **_kwargs) -> None:
    if exception is not None:
        RECORDER.failed(name)
        return
    RECORDER.record(name, round(response_time * 1000), response.headers.get("server-timing"))


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs) -> None:
    directory = os.environ.get("BENCH_HDR_DIR")
    if directory and (RECORDER.latency or RECORDER.errors):
        RECORDER.dump(Path(directory))


_CURRENCY_VALUES = [(code, units) for code, units, _ in CURRENCIES]
_CURRENCY_WEIGHTS = [weight for *_, weight in CURRENCIES]
_WINDOW_VALUES = [window for window, _ in WINDOWS]
_WINDOW_WEIGHTS = [weight for _, weight in WINDOWS]


class Partner(FastHttpUser):
    """One partner connection submitting instructions in the configured mix."""

    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)

    def on_start(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count()
        self._sent: list[bytes] = []
        if MIX.get("replay"):
            for _ in range(8):  # something to replay; these count under "seed"
                body = self._transaction()
                with self.client.post(PATH, data=body, headers=HEADERS, name="seed", catch_response=True) as r:
                    if r.status_code == 202:
                        self._sent.append(body)
                    else:
                        r.failure(f"seed got {r.status_code}: {r.text[:200]}")

    def _transaction(self) -> bytes:
        n = next(self._counter)
        (source, units), (destination, _) = random.choices(_CURRENCY_VALUES, _CURRENCY_WEIGHTS, k=2)
        window = random.choices(_WINDOW_VALUES, _WINDOW_WEIGHTS)[0]
        whole = random.choice(
            (random.randint(1, 999), random.randint(1_000, 99_999), random.randint(100_000, 2_000_000))
        )
        amount = str(whole) if units == 0 else f"{whole}.{random.randint(0, 10**units - 1):0{units}d}"
        document = {
            "transaction_id": f"bench-{self._prefix}-{n}",
            "amount": amount,
            "source_currency": source,
            "destination_currency": destination,
            "source_account": f"acct_{random.randint(1, 5000):05d}",
            "destination_account": f"acct_dst_{random.randint(1, 5000):05d}",
            "counterparty_id": f"cparty_{random.randint(1, 200)}",
            "idempotency_key": f"bench-{self._prefix}-{n}",
        }
        if window is not None:
            document["settlement_window"] = window
        return json.dumps(document).encode()

    def _post(self, name: str, body: bytes, path: str = PATH) -> None:
        with self.client.post(path, data=body, headers=HEADERS, name=name, catch_response=True) as response:
            if response.status_code != EXPECTED[name]:
                response.failure(f"expected {EXPECTED[name]}, got {response.status_code}: {response.text[:200]}")
            else:
                response.success()

    @task(MIX.get("new", 0))
    def new(self) -> None:
        body = self._transaction()
        self._post("new", body)

    @task(MIX.get("replay", 0))
    def replay(self) -> None:
        if self._sent:
            self._post("replay", random.choice(self._sent))

    @task(MIX.get("invalid", 0))
    def invalid(self) -> None:
        n = next(self._counter)
        body = (
            f'{{"transaction_id":"bench-{self._prefix}-x{n}","amount":"-1.001","source_currency":"usd",'
            f'"destination_currency":"XAU","source_account":"a1","destination_account":"a1",'
            f'"counterparty_id":"c1","idempotency_key":"bench-{self._prefix}-x{n}"}}'
        ).encode()
        self._post("invalid", body)

    @task(MIX.get("bulk", 0))
    def bulk(self) -> None:
        body = b"[" + b",".join(self._transaction() for _ in range(BULK_ITEMS)) + b"]"
        self._post("bulk", body, BULK_PATH)
