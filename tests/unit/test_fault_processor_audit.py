"""The fault suite's audit of the settlement processor counts what it should, and its verdict fails a run
for each thing the processor must not do (tests/faults/settlement.py, tests/faults/chaos.py): a test of
the test, without services."""

import copy

import pytest

from tests.faults.chaos import failures
from tests.faults.settlement import compare, longest_waits

T1, RTGS = "chaos-x.t1", "chaos-x.rtgs"
PHASES = {"a": "kafka-sigkill", "b": "postgres-sigkill", "c": "steady load between faults"}


def _compare(acknowledged, folded, duplicates, records):
    return compare(acknowledged, folded, duplicates, records, PHASES.__getitem__)


def test_every_acknowledged_transaction_folded_where_it_was_given_counts_nothing_bad():
    found = _compare(
        {"a": [(T1, 0, 1), (T1, 0, 1)], "b": [(T1, 1, 7)]},  # "a" answered 202 then 200, at the same record
        {"a": (T1, 0, 1), "b": (T1, 1, 7), "c": (T1, 2, 3)},  # "c": in the log, never answered (unsettled)
        {},
        {"a": [(T1, 0, 1)], "b": [(T1, 1, 7)], "c": [(T1, 2, 3)]},
    )
    assert found["acknowledged"] == 2 and found["folded"] == 3
    assert [found[k] for k in ("not_folded", "misplaced", "records_unaccounted", "folded_not_in_log")] == [0] * 4
    assert found["counted_twice"] == 0 and found["not_folded_by_phase"] == {}


def test_a_second_record_of_a_transaction_is_fine_when_recorded_as_its_duplicate():
    # the gateway answered with the second copy's offset; the processor folded the first and recorded the second
    found = _compare({"a": [(T1, 0, 2)]}, {"a": (T1, 0, 1)}, {"a": {(T1, 0, 2)}}, {"a": [(T1, 0, 1), (T1, 0, 2)]})
    assert found["misplaced"] == 0 and found["records_unaccounted"] == 0 and found["duplicates_recorded"] == 1


def test_lost_misplaced_unaccounted_and_doubly_counted_records_are_each_counted():
    found = _compare(
        {"a": [(T1, 0, 1)], "b": [(RTGS, 0, 4)], "c": [(T1, 2, 3)]},
        {"b": (RTGS, 0, 5), "c": (T1, 2, 3)},  # "a" never folded; "b" folded from another record
        {"c": {(T1, 2, 3)}},  # "c": its one record both folded and recorded as a duplicate
        {"a": [(T1, 0, 1)], "b": [(RTGS, 0, 4), (RTGS, 0, 5)], "c": [(T1, 2, 3)]},
    )
    assert found["not_folded"] == 1 and found["not_folded_ids"] == ["a"]
    assert found["misplaced"] == 1 and list(found["misplaced_ids"]) == ["b"]
    assert found["records_unaccounted"] == 2  # a's record and b's first one: folded nowhere
    assert found["counted_twice"] == 1
    assert found["not_folded_by_phase"] == {"kafka-sigkill": 1, "postgres-sigkill": 1}


def test_a_folded_record_that_is_not_in_the_log_is_counted():
    found = _compare({"a": [(T1, 0, 1)]}, {"a": (T1, 0, 1)}, {"a": {(T1, 0, 9)}}, {"a": [(T1, 0, 1)]})
    assert found["folded_not_in_log"] == 1


def _clean_result() -> dict:
    invariants = {
        "transactions": 3,
        "sum_of_batch_members": 3,
        "outside_any_batch": 0,
        "batches": {"open": 1},
        "batches_checked": 0,
        "batches_wrong": [],
        "batches_wrong_count": 0,
        "unreadable": 0,
        "unreadable_records": [],
        "lifecycle_steps": 2,
    }
    audit = _compare({"a": [(T1, 0, 1)]}, {"a": (T1, 0, 1)}, {}, {"a": [(T1, 0, 1)]})
    fault = {"lost": 0, "re_accepted": 0, "unexpected": 0, "hangs": 0, "unsettled": 0, "not_folded": 0}
    return {
        "faults": {
            "postgres-sigkill": {
                **fault,
                "processor_alive": True,
                "processor_seconds_to_ready": 1.7,
                "processor_seconds_to_caught_up": 2.4,
            },
            "steady load between faults": dict(fault),
        },
        "processor": {
            "pid": 4242,
            "final": {"alive": True, "lag": 0, "lag_metric": 0.0, "exit_status": 0},
            "audit": {**audit, "invariants": invariants},
            "close_out": {
                "seconds_to_settled": 0.5,
                "exit_status": 0,
                "invariants": {**invariants, "batches_checked": 1},
            },
            "replay": {"status": 0, "seconds": 3.0, "output": []},
        },
    }


def test_a_clean_run_passes():
    assert failures(_clean_result()) == []


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("faults", "postgres-sigkill", "processor_alive"), False, "not alive"),
        (("faults", "postgres-sigkill", "processor_seconds_to_ready"), None, "/ready was not 200 within 10 s"),
        (("faults", "postgres-sigkill", "processor_seconds_to_ready"), 10.5, "/ready was not 200 within 10 s"),
        (("faults", "postgres-sigkill", "processor_seconds_to_caught_up"), None, "did not fold the log"),
        (("faults", "postgres-sigkill", "not_folded"), 2, "2 not folded"),
        (("faults", "steady load between faults", "lost"), 1, "1 lost"),
        (("processor", "final", "alive"), False, "exited during the run"),
        (("processor", "final", "lag"), 12, "lag after the load"),
        (("processor", "final", "exit_status"), -9, "ended with -9 on SIGTERM"),
        (("processor", "audit", "misplaced"), 1, "the processor's state"),
        (("processor", "audit", "invariants", "batches_wrong_count"), 1, "invariants broken"),
        (("processor", "audit", "invariants", "unreadable"), 1, "invariants broken"),
        (("processor", "audit", "invariants", "outside_any_batch"), 1, "invariants broken"),
        (("processor", "close_out", "seconds_to_settled"), None, "the close-out"),
        (("processor", "close_out", "invariants", "sum_of_batch_members"), 2, "after the close-out"),
        (("processor", "replay", "status"), 1, "replay exited 1"),
        (("processor", "replay", "status"), None, "replay did not end"),
    ],
)
def test_each_thing_the_processor_must_not_do_fails_the_run(path, value, reason):
    result = copy.deepcopy(_clean_result())
    *parents, key = path
    target = result
    for name in parents:
        target = target[name]
    target[key] = value
    found = failures(result)
    assert len(found) == 1 and reason in found[0], found


def test_the_longest_fold_wait_counts_only_what_happened_before_the_next_fault():
    windows = {"kafka-sigkill": (100.0, 160.0), "postgres-sigkill": (200.0, 260.0), "redis-sigkill": (300.0, 360.0)}
    folded = [
        (100.5, 101.0),  # folded at once
        (105.0, 128.0),  # accepted after the broker was back, folded 23 s later: the processor stalled
        (159.0, 210.0),  # accepted just before the next fault, held up by it: counts until that fault began
        (150.0, 150.4),
        (230.0, 230.6),
        (90.0, 200.0),  # accepted before the first window
        (340.0, float("inf")),  # never folded: waited to the end of its window at least
    ]
    waits, never = longest_waits(folded, windows)
    assert waits == {"kafka-sigkill": 23.0, "postgres-sigkill": 0.6, "redis-sigkill": 20.0}
    assert never == {"kafka-sigkill": 0, "postgres-sigkill": 0, "redis-sigkill": 1}
