"""A request as fastcore validates it and as its fingerprint is taken: the arguments of
`fastcore.validate`, the canonical Transaction of a valid request, and the lenient policy an accepted
transaction's replay is checked against."""

import fastcore
from gateway.intake.schemas import TransactionRequest
from settlement.events import Transaction

# an amount limit far above any real one (whole units; times 10^4 minor units it fits a 64-bit integer)
_NO_LIMIT = 10**12


def lenient(policy: fastcore.Policy) -> fastcore.Policy:
    """`policy` without its amount limits and blocked pairs: what an accepted transaction's replay is
    checked against (its shape, and the canonical form its fingerprint is taken of)."""
    return fastcore.Policy(dict.fromkeys(policy.max_amounts, _NO_LIMIT), ())


def validation_fields(request: TransactionRequest, idempotency_header: str | None) -> tuple:
    """The arguments of `fastcore.validate` after the policy, in its order."""
    return (
        request.transaction_id,
        bytes(request.amount),
        request.source_currency,
        request.destination_currency,
        request.source_account,
        request.destination_account,
        request.counterparty_id,
        request.idempotency_key,
        idempotency_header,
        request.settlement_window,
        request.metadata,
    )


def canonical_transaction(request: TransactionRequest, instruction: fastcore.Instruction) -> Transaction:
    """The canonical transaction of a valid request (what its fingerprint is taken of)."""
    return Transaction(
        transaction_id=request.transaction_id,
        amount=instruction.amount,
        source_currency=request.source_currency,
        destination_currency=request.destination_currency,
        source_account=request.source_account,
        destination_account=request.destination_account,
        counterparty_id=request.counterparty_id,
        settlement_window=instruction.requested_window,
        metadata=request.metadata,
    )
