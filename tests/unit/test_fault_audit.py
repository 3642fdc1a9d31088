"""The fault suite's auditor counts what it should: a test of the test, so a green fault run means
something (tests/faults/chaos.py)."""

from tests.faults.chaos import Acceptance, Answer, Ledger, audit

T1 = "settlement.t1"


def _ledger() -> Ledger:
    ledger = Ledger()
    for txn, phase in (("a", "kafka-sigkill"), ("b", "kafka-sigkill"), ("c", "before-kafka-sigkill")):
        ledger.phase_of[txn] = phase
    return ledger


def test_a_clean_run_counts_nothing_bad():
    ledger = _ledger()
    ledger.accepted["a"].append(Acceptance("key-a", 202, T1, 0, 10))
    ledger.accepted["a"].append(Acceptance("key-a", 200, T1, 0, 10))  # the replay: the same coordinates
    ledger.answers += [
        Answer("kafka-sigkill", 503, 2.1, True, "dependency-unavailable"),
        Answer("after", 202, 0.01, False, ""),
    ]
    report = audit(ledger, {"a": [(T1, 0, 10)]}, hang_seconds=3.0)
    row = report["kafka-sigkill"]
    assert (row["acknowledged"], row["lost"], row["re_accepted"], row["duplicate_records"]) == (1, 0, 0, 0)
    assert row["unexpected"] == 0 and row["hangs"] == 0
    assert report["steady load between faults"]["answers"] == {"202": 1}


def test_loss_re_acceptance_duplicates_and_bad_answers_are_each_counted():
    ledger = _ledger()
    ledger.accepted["a"].append(Acceptance("key-a", 202, T1, 0, 10))  # acknowledged, not in Kafka: lost
    ledger.accepted["b"].append(Acceptance("key-b", 202, T1, 1, 5))
    ledger.accepted["b"].append(Acceptance("again-b", 202, T1, 1, 6))  # a second 202: re-accepted
    ledger.answers += [
        Answer("kafka-sigkill", 503, 0.2, False, "dependency-unavailable"),  # 503 without Retry-After
        Answer("kafka-sigkill", 500, 0.2, False, "internal-error"),
        Answer("kafka-sigkill", 202, 9.0, False, ""),  # slower than the delivery timeout + 1 s
    ]
    ledger.refusals[("kafka-sigkill", 422, "validation-failed")] += 1
    ledger.unsettled.add("b")
    records = {"b": [(T1, 1, 5), (T1, 1, 6)], "c": [(T1, 2, 1), (T1, 2, 2)]}
    report = audit(ledger, records, hang_seconds=3.0)
    row = report["kafka-sigkill"]
    assert row["acknowledged"] == 2 and row["lost"] == 1 and row["re_accepted"] == 1
    assert row["duplicate_records"] == 1 and row["unsettled"] == 1
    assert row["unexpected"] == 3 and row["hangs"] == 1
    assert report["steady load between faults"]["duplicate_records"] == 1  # "c", folded into the steady row
