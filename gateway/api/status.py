"""What became of a payment: the partner's view of the settlement state the processor keeps in PostgreSQL.

GET /api/v1/transactions/{transaction_id}   accepted (only the gateway knows it yet: Redis), batched, settled
GET /api/v1/batches/{batch_id}              a batch, with the partner's own part of it
GET /api/v1/batches                         the batches the partner has transactions in, cursor-paginated

Everything is scoped to the partner: another partner's transaction or batch is a 404, never a 403.
PostgreSQL unreachable is a 503 with Retry-After; the intake does not depend on it.
"""

import logging
from datetime import date, datetime
from typing import Annotated, Literal

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from gateway.api import cursors
from gateway.api.openapi import (
    PARTNER_RESPONSES,
    PARTNER_SECURITY,
    PartnerOperation,
    documented,
    problem_example,
    problem_responses,
)
from gateway.errors import Refused
from gateway.intake.ledger import Ledger
from gateway.intake.schemas import stored_answer
from settlement.events import instant
from settlement.ledger.read_model import BatchRow

log = logging.getLogger("gateway.api.status")


class KafkaRecord(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    offset: int


class Steps(msgspec.Struct, frozen=True):
    """When each step happened (ISO 8601, UTC); null until it has."""

    accepted_at: str
    batched_at: str | None = None
    settled_at: str | None = None


class TransactionStatus(msgspec.Struct, frozen=True):
    """200 of GET /api/v1/transactions/{transaction_id}."""

    transaction_id: str
    status: Literal["accepted", "batched", "settled"]
    window: str
    value_date: str
    batch: str
    amount: str | None  # exact decimal; null while only the gateway knows the transaction
    currency: str | None
    kafka: KafkaRecord
    steps: Steps
    # Read after the batch of its 202 closed (the late path): it settles in `batch` on `value_date`, the
    # next batch of its window and currency; `routed_batch` and `routed_value_date` are its 202's.
    late: bool = False
    routed_batch: str | None = None
    routed_value_date: str | None = None


class CrossCurrencyLeg(msgspec.Struct, frozen=True):
    """Transactions of a batch from one account in one currency to one account in another, summed in the
    source currency: listed apart from the net positions, since the gateway has no FX rate to net them."""

    source_account: str
    source_currency: str
    destination_account: str
    destination_currency: str
    count: int
    amount: str


class BatchView(msgspec.Struct, frozen=True):
    """A batch, with the partner's own part of it (count, totals, positions, late transactions)."""

    batch_id: str
    window: str
    value_date: str
    currency: str
    status: Literal["open", "closed", "settled"]
    closes_at: str
    settles_at: str
    opened_at: str
    closed_at: str | None
    settled_at: str | None
    transaction_count: int
    totals: dict[str, str]
    # frozen at close (null while open): currency -> account -> signed exact decimal, of the partner's
    # same-currency transactions (they sum to zero per currency); cross-currency ones apart, per leg
    net_positions: dict[str, dict[str, str]] | None
    cross_currency_legs: list[CrossCurrencyLeg] | None
    late_transactions: list[str]  # routed here, read after it closed: they settle in the next batch


class BatchPage(msgspec.Struct, frozen=True):
    """200 of GET /api/v1/batches: one page, and the cursor of the next (null on the last)."""

    batches: list[BatchView]
    next_cursor: str | None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else instant(value.timestamp())


async def _accepted(request: Request, partner: str, transaction_id: str) -> TransactionStatus | None:
    """A transaction only the gateway knows yet: its completed idempotency key in Redis."""
    stored = await request.app.state.idempotency.answer_of(partner, transaction_id)
    if stored is None:
        return None  # unknown, or still in flight: not accepted yet
    answer = stored_answer(transaction_id, stored).metadata
    return TransactionStatus(
        transaction_id=transaction_id,
        status="accepted",
        window=answer.window,
        value_date=answer.value_date,
        batch=answer.original_batch,
        amount=None,
        currency=None,
        kafka=KafkaRecord(answer.topic, answer.partition, answer.offset),
        steps=Steps(accepted_at=answer.accepted_at),
    )


_NOT_FOUND = problem_responses(
    "No such transaction or batch of this partner",
    problem_example("not-found", "no transaction txn_404 of this partner"),
)
_INVALID = problem_responses(
    "A path or query parameter of the wrong type or out of range",
    problem_example("invalid-parameter", "a path or query parameter is not valid"),
)
_UNAVAILABLE = problem_responses(
    "PostgreSQL (or Redis) unavailable; retry after Retry-After",
    problem_example("dependency-unavailable", "database is unavailable; retry later"),
)
_STATUS_EXAMPLE = TransactionStatus(
    transaction_id="txn_001",
    status="batched",
    window="t1",
    value_date="2026-11-27",
    batch="t1-20261127-GBP",
    amount="250.00",
    currency="USD",
    kafka=KafkaRecord("settlement.t1", 2, 41),
    steps=Steps(accepted_at="2026-11-26T09:30:00.123Z", batched_at="2026-11-26T09:30:00.131Z"),
)


@get(
    "/api/v1/transactions/{transaction_id:str}",
    summary="What became of a transaction",
    description="accepted (only the gateway knows it yet), batched (the settlement processor has it in its "
    "batch) or settled; with its window, value date, batch, amount, Kafka record and the time of each step.",
    tags=["status"],
    operation_class=PartnerOperation,
    security=PARTNER_SECURITY,
    responses={
        200: documented(TransactionStatus, "The transaction's status", "batched", _STATUS_EXAMPLE),
        400: _INVALID,
        404: _NOT_FOUND,
        503: _UNAVAILABLE,
        **PARTNER_RESPONSES,
    },
)
async def transaction_status(
    request: Request,
    partner: NamedDependency[str],
    transaction_id: Annotated[str, PathParameter(description="the partner's id of the transaction")],
) -> TransactionStatus:
    """The status of one of the partner's transactions."""
    store: Ledger = request.app.state.ledger
    row = await store.transaction(partner, transaction_id)
    if row is not None:
        return TransactionStatus(
            transaction_id=transaction_id,
            status=row.status,  # type: ignore[arg-type]
            window=row.window,
            value_date=row.value_date.isoformat(),
            batch=row.batch_id,
            amount=str(row.amount),
            currency=row.currency,
            kafka=KafkaRecord(row.topic, row.partition, row.offset),
            steps=Steps(_iso(row.accepted_at) or "", _iso(row.batched_at), _iso(row.settled_at)),
            late=row.late,
            routed_batch=row.routed_batch_id,
            routed_value_date=row.routed_value_date.isoformat() if row.routed_value_date else None,
        )
    accepted = await _accepted(request, partner, transaction_id)
    if accepted is None:
        raise Refused("not-found", f"no transaction {transaction_id} of this partner")
    return accepted


async def _batch_view(store: Ledger, partner: str, row: BatchRow) -> BatchView:
    totals = await store.partner_totals(partner, row.batch_id)
    late = await store.late(partner, row.batch_id)
    frozen = row.status != "open"  # positions are a close's: the partner's share of what was frozen then
    return BatchView(
        batch_id=row.batch_id,
        window=row.window,
        value_date=row.value_date.isoformat(),
        currency=row.currency,
        status=row.status,  # type: ignore[arg-type]
        closes_at=_iso(row.closes_at) or "",
        settles_at=_iso(row.settles_at) or "",
        opened_at=_iso(row.opened_at) or "",
        closed_at=_iso(row.closed_at),
        settled_at=_iso(row.settled_at),
        transaction_count=sum(total.transactions for total in totals),
        totals={total.currency: total.amount for total in totals},
        net_positions=(row.net_positions or {}) if frozen else None,
        cross_currency_legs=msgspec.convert(row.cross_currency_legs or [], list[CrossCurrencyLeg]) if frozen else None,
        late_transactions=late,
    )


_BATCH_EXAMPLE = BatchView(
    batch_id="t1-20261127-GBP",
    window="t1",
    value_date="2026-11-27",
    currency="GBP",
    status="closed",
    closes_at="2026-11-27T00:01:00.000Z",
    settles_at="2026-11-27T16:00:00.000Z",
    opened_at="2026-11-26T09:30:00.131Z",
    closed_at="2026-11-27T00:01:00.412Z",
    settled_at=None,
    transaction_count=3,
    totals={"GBP": "1484.56", "USD": "100.00"},
    net_positions={"GBP": {"acct_uk_1": "-250.00", "acct_uk_2": "-1234.56", "acct_uk_9": "1484.56"}},
    cross_currency_legs=[CrossCurrencyLeg("acct_usa_88", "USD", "acct_uk_99", "GBP", 1, "100.00")],
    late_transactions=[],
)


@get(
    "/api/v1/batches/{batch_id:str}",
    summary="A settlement batch",
    description="Its status and times, and the partner's own part of it: count, exact totals per currency and "
    "its net position per currency and account of its same-currency transactions and its cross-currency legs "
    "(frozen at close, null while the batch is open; transactions that arrived late from an earlier batch "
    "included), and its transactions routed here that arrived after it closed (they settle in the next batch of "
    "the window and currency).",
    tags=["status"],
    operation_class=PartnerOperation,
    security=PARTNER_SECURITY,
    responses={
        200: documented(BatchView, "The batch", "closed", _BATCH_EXAMPLE),
        400: _INVALID,
        404: _NOT_FOUND,
        503: _UNAVAILABLE,
        **PARTNER_RESPONSES,
    },
)
async def batch(
    request: Request,
    partner: NamedDependency[str],
    batch_id: Annotated[str, PathParameter(description="{window}-{YYYYMMDD}-{currency}", examples=None)],
) -> BatchView:
    """One batch the partner has transactions in."""
    store: Ledger = request.app.state.ledger
    row = await store.batch(partner, batch_id)
    if row is None:
        raise Refused("not-found", f"no batch {batch_id} with transactions of this partner")
    return await _batch_view(store, partner, row)


def _cursor(value_date: date, batch_id: str) -> str:
    return cursors.encode(f"{value_date.isoformat()}|{batch_id}")


def _after(cursor: str) -> tuple[date, str]:
    day, separator, batch_id = cursors.decode(cursor).partition("|")
    try:
        if not separator:
            raise ValueError(day)
        return date.fromisoformat(day), batch_id
    except ValueError:
        raise cursors.refused() from None


@get(
    "/api/v1/batches",
    summary="The partner's settlement batches",
    description="Batches the partner has transactions in, by value date then batch id; filter by window, value "
    "date and status; `next_cursor` fetches the next page.",
    tags=["status"],
    operation_class=PartnerOperation,
    security=PARTNER_SECURITY,
    responses={
        200: documented(BatchPage, "One page of batches", "a page", BatchPage([_BATCH_EXAMPLE], None)),
        400: _INVALID,
        422: cursors.BAD_CURSOR,
        503: _UNAVAILABLE,
        **PARTNER_RESPONSES,
    },
)
async def batches(
    request: Request,
    partner: NamedDependency[str],
    window: Annotated[Literal["rtgs", "t0", "t1"] | None, QueryParameter(description="only this window")] = None,
    value_date: Annotated[date | None, QueryParameter(description="only this value date")] = None,
    status: Annotated[
        Literal["open", "closed", "settled"] | None, QueryParameter(description="only batches in this status")
    ] = None,
    cursor: Annotated[
        str | None, QueryParameter(max_length=200, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=200, description="batches per page")] = 50,
) -> BatchPage:
    """One page of the partner's batches."""
    store: Ledger = request.app.state.ledger
    after = _after(cursor) if cursor else (date.min, "")
    rows = await store.batches(partner, window, value_date, status, after, limit + 1)
    page = [await _batch_view(store, partner, row) for row in rows[:limit]]
    following = _cursor(rows[limit - 1].value_date, rows[limit - 1].batch_id) if len(rows) > limit else None
    return BatchPage(page, following)
