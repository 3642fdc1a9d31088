"""Fixtures of the integration tests (real Redis, Kafka and PostgreSQL)."""

import pytest

from tests.integration.settlement import Setup
from tests.kafka_log import end_offsets, headers_of, read_topic


@pytest.fixture
def log(stack):
    """Snapshot the topics' ends now; `log.records(txn_id)` later returns what reached Kafka since."""

    class Log:
        def __init__(self) -> None:
            self.since = {w: end_offsets(stack.kafka_bootstrap, stack.topic(w)) for w in ("rtgs", "t0", "t1")}

        def everything(self) -> dict[str, list]:
            """Every record since the snapshot, by transaction id (its CloudEvents subject)."""
            found: dict[str, list] = {}
            for w, since in self.since.items():
                for record in read_topic(stack.kafka_bootstrap, stack.topic(w), since=since):
                    found.setdefault(headers_of(record)["ce_subject"].decode(), []).append(record)
            return found

        def records(self, transaction_id: str, window: str | None = None) -> list:
            windows = [window] if window else list(self.since)
            return [
                record
                for w in windows
                for record in read_topic(stack.kafka_bootstrap, stack.topic(w), since=self.since[w])
                if headers_of(record).get("ce_subject") == transaction_id.encode()
            ]

    return Log()


@pytest.fixture
def setup(stack, database, tmp_path):
    """Topics, a schema and a consumer group of one processor test (tests/integration/settlement.py)."""
    return Setup(stack, database, tmp_path)
