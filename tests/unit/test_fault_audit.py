"""The fault suite's auditor counts what it should: a test of the test, so a green fault run means
something (tests/faults/chaos.py)."""

from tests.faults.chaos import Acceptance, Answer, Ledger, audit, p99_recovery, re_accepted

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


def test_p99_recovery_is_the_end_of_the_last_slow_window():
    # steady: 100 answers of 10 ms; then a fault at t=100: five seconds of 2 s answers, then 10 ms again
    answers = [Answer("before-x", 202, 0.010, False, "", 90 + n / 100) for n in range(100)]
    for second in range(20):
        seconds = 2.0 if second < 5 else 0.010
        answers += [Answer("x", 202, seconds, False, "", 100 + second + n / 100) for n in range(100)]
    result = p99_recovery(answers, "before-x", since=100.0, until=120.0)
    assert result["p99_before_ms"] == 10.0
    assert result["p99_worst_ms"] == 2000.0
    # the trailing 3-second window ending in second 6 still holds second 4's slow answers
    assert result["seconds_to_p99"] == 7
    assert result["p99_by_second_ms"][7:] == [10.0] * 13
    # one slow answer among 300 in a window is not the p99
    answers.append(Answer("x", 202, 5.0, False, "", 115.5))
    assert p99_recovery(answers, "before-x", since=100.0, until=120.0)["seconds_to_p99"] == 7
    # a stretch in which every connection waited and nothing was sent is not a recovery
    quiet = [a for a in answers if not 108 <= a.sent_at < 111]
    assert p99_recovery(quiet, "before-x", since=100.0, until=120.0)["seconds_to_p99"] == 11
    # still slow at the end: not recovered within the hold
    answers += [Answer("x", 202, 3.0, False, "", 119 + n / 10) for n in range(10)]
    assert p99_recovery(answers, "before-x", since=100.0, until=120.0)["seconds_to_p99"] is None


def test_re_acceptances_are_listed_with_their_timing():
    ledger = Ledger()
    ledger.phase_of["a"] = "redis-master-sigkill"
    ledger.accepted["a"] += [Acceptance("key-a", 202, T1, 0, 10, at=99.5), Acceptance("key-a", 202, T1, 1, 7, at=104.0)]
    ledger.accepted["b"] += [Acceptance("key-b", 202, T1, 0, 11, at=101.0)]
    found = re_accepted(ledger, {"redis-master-sigkill": 100.0})
    assert found == {
        "a": {
            "phase": "redis-master-sigkill",
            "answers": [
                {"status": 202, "offset": f"{T1}[0]@10", "seconds_after_fault": -0.5},
                {"status": 202, "offset": f"{T1}[1]@7", "seconds_after_fault": 4.0},
            ],
        }
    }
