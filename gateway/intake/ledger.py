"""The intake's use of the ledger (settlement.ledger.read_model), only when Redis has forgotten: a
retry whose idempotency key expired (or another key for the same payment) is answered from the ledger's
record of the transaction, with the answer its 202 carried. A new transaction never waits for it."""

from typing import NamedTuple

from gateway.intake.schemas import compact_answer
from gateway.settings import Settings
from settlement.ledger.read_model import LedgerReader


class Known(NamedTuple):
    """A transaction the ledger holds: the fingerprint of its payload and its compact answer."""

    fingerprint: str
    answer: bytes


class Ledger(LedgerReader):
    """The read model with the gateway's settings and the intake's look-up."""

    def __init__(self, settings: Settings, connections: int = 4) -> None:
        super().__init__(settings.database_url, settings.database_schema, settings.ready_timeout_ms / 1000, connections)

    async def known(self, partner: str, transaction_ids: list[str]) -> dict[str, Known]:
        """The transactions of `partner` among `transaction_ids` the ledger holds, by id."""
        return {
            row.transaction_id: Known(
                row.fingerprint, compact_answer(row.batch_id, row.topic, row.partition, row.offset, row.accepted_ms)
            )
            for row in await self.accepted(partner, transaction_ids)
        }
