"""The arithmetic of issue 23's measurement (benchmarks/redis_cost.py): INFO commandstats read right, the
run's own commands and a script's inner commands not counted twice, everything per accepted transaction,
medians over rounds, and a verdict that says what was measured when a target is missed."""

import json

import msgspec
import pytest

from benchmarks.redis_cost import gates
from benchmarks.redis_cost_load import bulk_bodies, outcomes, seed_bodies
from benchmarks.redis_cost_stats import (
    METRICS,
    command_cost,
    key_family,
    markdown,
    median_of,
    parse_commandstats,
    parse_info,
    per,
    rows,
    scaled_sample,
    scripted_commands,
    verdict,
)

# what Redis 7.0 answers to INFO commandstats after one EVAL that ran SET, GET and HSET
COMMANDSTATS = """# Commandstats\r
cmdstat_set:calls=1,usec=7,usec_per_call=7.00,rejected_calls=0,failed_calls=0\r
cmdstat_eval:calls=1,usec=120,usec_per_call=120.00,rejected_calls=0,failed_calls=0\r
cmdstat_hset:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r
cmdstat_get:calls=1,usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r
cmdstat_config|resetstat:calls=1,usec=31,usec_per_call=31.00,rejected_calls=0,failed_calls=0\r
cmdstat_info:calls=4,usec=80,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r
"""

LUA = """
local entry = redis.call('HMGET', idem_key, 'fp', 'state')
redis.call("SET", txn_key, digest, 'PX', ttl)
local ok = redis.pcall( 'hset', idem_key, 'state', 'done')
-- redis.call is how a script runs a command
"""


def test_commandstats_are_parsed_per_command_and_subcommand():
    stats = parse_commandstats(COMMANDSTATS)
    assert set(stats) == {"set", "eval", "hset", "get", "config|resetstat", "info"}
    assert stats["eval"] == {"calls": 1, "usec": 120, "usec_per_call": 120.0, "rejected_calls": 0, "failed_calls": 0}
    assert stats["config|resetstat"]["usec"] == 31


def test_info_fields_skip_section_headers():
    fields = parse_info("# Memory\r\nused_memory:1234567\r\nused_memory_human:1.18M\r\n")
    assert fields == {"used_memory": "1234567", "used_memory_human": "1.18M"}


def test_the_commands_scripts_run_are_found_in_their_source():
    assert scripted_commands([LUA]) == {"hmget", "set", "hset"}
    assert scripted_commands([]) == set()


def test_every_call_counts_but_the_runs_own_and_script_time_is_not_counted_twice():
    cost = command_cost(parse_commandstats(COMMANDSTATS), scripted={"set", "get", "hset"})
    assert cost["commands"] == 4  # eval and the three it ran; not CONFIG RESETSTAT nor INFO
    assert cost["scripts"] == 1
    assert cost["sent"] == 1  # the EVAL alone went over the wire
    assert cost["usec"] == 120  # the EVAL's usec already holds the 13 of SET, GET and HSET
    assert cost["by_command"] == {"set": 1, "eval": 1, "hset": 1, "get": 1}


def test_commands_sent_directly_count_their_own_time():
    stats = parse_commandstats(
        "cmdstat_evalsha:calls=2,usec=40\r\ncmdstat_hset:calls=4,usec=12\r\ncmdstat_ping:calls=1,usec=1\r\n"
        "cmdstat_memory|usage:calls=500,usec=9000\r\ncmdstat_scan:calls=3,usec=300\r\n"
        "cmdstat_flushall:calls=1,usec=50\r\ncmdstat_client|setinfo:calls=2,usec=2\r\n"
    )
    cost = command_cost(stats, scripted={"hset"})
    assert cost["commands"] == 7  # evalsha 2, hset 4, ping 1
    assert cost["sent"] == 3 and cost["usec"] == 41


def test_per_transaction_arithmetic():
    assert per(9004, 1000) == 9.004
    assert per(1_234_567, 100_000, 1) == 12.3
    assert per(5, 0) is None  # nothing accepted: nothing to divide by
    # a sample of 4 keys averaging 150 bytes, 200,000 keys, 100,000 transactions: 300 bytes each
    assert scaled_sample([100, 200, 120, 180], 200_000, 100_000) == 300.0
    assert scaled_sample([], 10, 10) is None
    assert scaled_sample([100], 10, 0) is None


def test_key_families():
    assert key_family("idem:{p}:ab12") == "idem"
    assert key_family("txn:{rcost-1}:txn_1") == "txn"
    assert key_family("loose") == "(other)"


def test_medians_over_rounds_nested_with_missing_numbers_as_zero():
    rounds = [
        {"commands_per_txn": 9.0, "calls_per_txn": {"hset": 2.0, "eval": 0.002}, "note": "x", "gone": None},
        {"commands_per_txn": 11.0, "calls_per_txn": {"hset": 2.0, "evalsha": 0.002}, "note": "x", "gone": None},
        {"commands_per_txn": 10.0, "calls_per_txn": {"hset": 4.0}, "note": "x", "gone": None},
    ]
    merged = median_of(rounds)
    assert merged["commands_per_txn"] == 10.0
    assert merged["calls_per_txn"] == {"hset": 2.0, "eval": 0.0, "evalsha": 0.0}
    assert merged["note"] == "x" and merged["gone"] is None


def test_verdicts_say_what_was_measured():
    assert verdict(2.5, 3, "commands") == (True, "2.5 <= 3 commands")
    passed, reason = verdict(9.004, 3, "commands")
    assert passed is False and reason == "9.004 commands per transaction, target at most 3 commands"
    assert verdict(None, 300, "bytes") == (False, "not measured (target at most 300 bytes)")
    assert verdict(12.0, None, "µs") == (None, "")


def medians(before: dict, after: dict) -> dict:
    return {"before": before, "after": after}


def test_rows_judge_after_against_the_targets_where_they_apply():
    before = {
        "single": {"commands_per_txn": 11.0, "used_memory_bytes_per_txn": 1400.0},
        "bulk": {"commands_per_txn": 9.0, "cpu_us_per_txn": 20.0, "used_memory_bytes_per_txn": 1400.0},
    }
    after = {
        "single": {"commands_per_txn": 6.0, "used_memory_bytes_per_txn": 280.0},
        "bulk": {"commands_per_txn": 3.006, "cpu_us_per_txn": 8.0, "used_memory_bytes_per_txn": 310.0},
    }
    targets = {"max_commands_bulk": 3, "max_cpu_us_bulk": 10, "max_bytes": 300}
    table = {(r["key"], r["mode"]): r for r in rows(medians(before, after), targets)}
    assert len(table) == len(METRICS) * 2
    single = table["commands_per_txn", "single"]
    assert single["limit"] is None and single["passed"] is None and single["ratio"] == 0.545  # no target one by one
    bulk = table["commands_per_txn", "bulk"]
    assert bulk["limit"] == 3 and bulk["passed"] is False and "3.006 commands" in bulk["reason"]
    assert table["cpu_us_per_txn", "bulk"]["passed"] is True
    # commandstats usec is wall-clock time (preemption included): reported, the CPU target judged on /proc
    assert table["commandstats_us_per_txn", "bulk"]["limit"] is None
    assert table["used_memory_bytes_per_txn", "single"]["passed"] is True
    assert table["used_memory_bytes_per_txn", "bulk"]["passed"] is False
    # measured neither before nor after: no ratio, and a target still missed
    unmeasured = table["memory_usage_bytes_per_txn", "bulk"]
    assert unmeasured["ratio"] is None and unmeasured["passed"] is False
    text = markdown(list(table.values()))
    assert "| Redis commands / new transaction | bulk | 9.00 | 3.01 | 0.334 | <= 3 | MISS: 3.006 commands" in text
    assert "| Redis CPU µs / new transaction (server) | bulk | 20.00 | 8.00 | 0.400 | <= 10 | met |" in text


def test_gates_for_make_bench():
    table = rows(medians({}, {"bulk": {"commands_per_txn": 2.0}}), {"max_commands_bulk": 3, "max_bytes": 300})
    found = {g["target"]: g for g in gates({"rows": table})}
    assert found["redis cost: Redis commands / new transaction, bulk"] == {
        "target": "redis cost: Redis commands / new transaction, bulk",
        "measured": 2.0,
        "limit": 3,
        "unit": "commands",
        "passed": True,
    }
    assert "redis cost: Redis commands / new transaction, single" not in found  # no target there
    assert found["redis cost: bytes kept / transaction (used_memory), single"]["passed"] is False
    [failed] = gates({"error": "did not finish in 2400 s"})
    assert failed["passed"] is False and failed["measured"] == "did not finish in 2400 s"
    assert gates(None) == []


def test_outcomes_of_single_and_bulk_answers():
    assert outcomes(202, b"{}", 0) == {"202": 1}
    assert outcomes(200, b"{}", 0) == {"200": 1}  # a replay
    assert outcomes(200, b"", 500) == {"202": 500}  # bulk: every one accepted
    body = json.dumps({"results": [{"index": 0, "status": 200}, {"index": 1, "status": 202}]}).encode()
    assert outcomes(207, body, 2) == {"200": 1, "202": 1}
    assert outcomes(503, b"{}", 500) == {"request 503": 500}


def test_seed_bodies_are_the_seed_transaction_made_unique():
    bodies = seed_bodies("ab12", 3)
    documents = [msgspec.json.decode(body) for body in bodies]
    assert len({d["transaction_id"] for d in documents}) == 3
    assert len({d["idempotency_key"] for d in documents}) == 3
    first = documents[0]
    assert first == {
        "transaction_id": "txn_ab1200000000",
        "amount": 250.0,
        "source_currency": "USD",
        "destination_currency": "GBP",
        "source_account": "acct_usa_ab1200000000",
        "destination_account": "acct_uk_99",
        "counterparty_id": "cparty_london",
        "idempotency_key": "idem_ab1200000000",
        "settlement_window": "t1",
    }
    assert b'"amount":250.00' in bodies[0]


@pytest.mark.parametrize(("count", "requests", "last"), [(1000, 2, 500), (1001, 3, 1), (3, 1, 3)])
def test_bulk_requests_of_500(count, requests, last):
    chunks = bulk_bodies(seed_bodies("cd34", count))
    assert len(chunks) == requests
    assert len(msgspec.json.decode(chunks[-1])) == last
