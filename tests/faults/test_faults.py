"""The short fault suite of `make test`: every fault of tests/faults/chaos.py, held a few seconds each,
under load from many connections, against the real Redis, Kafka, PostgreSQL and Granian, with the
settlement processor folding the run beside the gateway; then Kafka is read from the start and the
processor's state audited. `make chaos` runs the same suite longer and writes the report docs/reliability.md shows."""

import subprocess

import pytest

from tests.conftest import ROOT
from tests.faults.chaos import Options, run, summary, table
from tests.faults.settlement import READY_TARGET


def _toxiproxy(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "deploy" / "toxiproxy.sh"), command], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def toxiproxy(stack):
    """Toxiproxy in front of the local Redis and Kafka (installed and started when missing)."""
    for script in ("kafka", "redis", "postgres"):
        if subprocess.run([str(ROOT / "deploy" / f"{script}.sh"), "status"], timeout=30).returncode != 0:
            pytest.fail(f"the fault suite kills the local stack's {script}, so it needs it running", pytrace=False)
    started = _toxiproxy("status").returncode != 0
    if started:
        done = _toxiproxy("start")
        assert done.returncode == 0, done.stderr
    yield
    if started:
        _toxiproxy("stop")


@pytest.mark.timeout(900)
async def test_no_fault_loses_or_re_accepts_a_transaction(stack, database, toxiproxy, tmp_path):
    result = await run(Options(), tmp_path / "gateway.log")
    faults = result["faults"]
    print("\n" + table(result) + "\n\n" + summary(result))
    injected = [name for name in faults if name != "steady load between faults"]
    assert len(injected) == 11, injected
    for name, row in faults.items():
        assert row.get("lost", 0) == 0, (name, row)
        assert row.get("re_accepted", 0) == 0, (name, row)
        assert row["unexpected"] == 0, (name, row)
        assert row["hangs"] == 0, (name, row)
        assert row.get("unsettled", 0) == 0, (name, row)
        assert row.get("not_folded", 0) == 0, (name, row)  # acknowledged, and not in the processor's ledger
    for name in injected:
        row = faults[name]
        assert row["acknowledged"] > 0, (name, row)  # load went on through the fault
        assert row["seconds_to_ready"] is not None and row["seconds_to_ready"] < 30, (name, row)
        # the processor outlived the fault: the same process, ready again soon, the log folded
        assert row["processor_alive"], (name, row)
        assert row["processor_seconds_to_ready"] is not None, (name, row)
        assert row["processor_seconds_to_ready"] <= READY_TARGET, (name, row)
        assert row["processor_seconds_to_caught_up"] is not None, (name, row)
    # the faults were felt: the partners were told to come back later while a dependency was gone
    for name in ("kafka-sigkill", "kafka-sigstop", "redis-sigkill", "redis-dead-peer", "kafka-dead-peer"):
        assert faults[name]["answers"].get("503", 0) + faults[name]["answers"].get("409", 0) > 0, (name, faults[name])
    # and the processor said so while its database was gone
    assert faults["postgres-sigkill"]["processor_ready_answers"].get("503", 0) > 0, faults["postgres-sigkill"]
    processor = result["processor"]
    assert processor["final"]["alive"] and processor["final"]["lag"] == 0, processor["final"]
    assert processor["final"]["exit_status"] == 0, processor["final"]
    assert processor["audit"]["not_folded"] == 0 and processor["audit"]["misplaced"] == 0, processor["audit"]
    assert processor["replay"]["status"] == 0, processor["replay"]
    assert result["verdict"]["failures"] == [], result["verdict"]
