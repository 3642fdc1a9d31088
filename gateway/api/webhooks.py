"""The partner's side of its webhooks: what was sent to it, how each attempt ended, and a resend.

GET  /api/v1/webhooks/deliveries                       the partner's deliveries, newest first, cursor-paginated
POST /api/v1/webhooks/deliveries/{event_id}/resend     send a delivered or failed one again

The processor writes the events (an outbox in the ledger) and the deliverer sends them and records each
attempt; the gateway reads both, and a resend makes an event due again (the one write the gateway makes
to the ledger). Everything is scoped to the partner: another partner's delivery is a 404, never a 403.
PostgreSQL unreachable is a 503 with Retry-After.
"""

from collections import defaultdict
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
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
from settlement.events import instant
from settlement.ledger.read_model import AttemptRow, DeliveryRow

# settlement.webhooks.EVENT_TYPES, spelled out for the filter's enum (tests/unit/test_openapi.py holds them equal)
EventType = Literal[
    "transaction.batched",
    "transaction.settled",
    "transaction.moved",
    "transaction.conflict",
    "batch.closed",
    "batch.settled",
]
DeliveryState = Literal["pending", "delivered", "failed"]
LAST_SEQUENCE = 2**63 - 1  # the largest bigserial: before it, every event


class DeliveryAttempt(msgspec.Struct, frozen=True):
    """One attempt to deliver, and how it ended."""

    attempt: int  # 1, 2, … in the order they were made
    started_at: str
    duration_ms: int
    outcome: str  # delivered, status, timeout, unreachable, refused-address
    status_code: int | None  # the receiver's HTTP status, when it answered
    detail: str | None


class Delivery(msgspec.Struct, frozen=True):
    """One webhook event of the partner's and its delivery."""

    event_id: str  # the webhook-id header of every attempt
    event_type: str
    subject: str  # transactions/<id> or batches/<id>: a subject's events are delivered in order
    state: DeliveryState
    attempts: int
    occurred_at: str  # the state change, by the processor's clock
    next_attempt_at: str | None  # when it is due (pending only)
    delivered_at: str | None
    last_outcome: str | None  # the last attempt's outcome and detail
    attempt_log: list[DeliveryAttempt]
    payload: dict[str, Any]  # the body delivered: {type, timestamp, data}


class DeliveryPage(msgspec.Struct, frozen=True):
    """200 of GET /api/v1/webhooks/deliveries: one page, and the cursor of the next (null on the last)."""

    deliveries: list[Delivery]
    next_cursor: str | None


def _instant(value: datetime) -> str:
    return instant(value.timestamp())


def _attempt(row: AttemptRow) -> DeliveryAttempt:
    return DeliveryAttempt(
        row.attempt, _instant(row.started_at), row.duration_ms, row.outcome, row.status_code, row.detail
    )


def _delivery(row: DeliveryRow, attempts: list[AttemptRow]) -> Delivery:
    return Delivery(
        event_id=row.event_id,
        event_type=row.event_type,
        subject=row.subject,
        state=row.state,  # type: ignore[arg-type]
        attempts=row.attempts,
        occurred_at=_instant(row.occurred_at),
        next_attempt_at=_instant(row.next_attempt_at) if row.state == "pending" else None,
        delivered_at=_instant(row.delivered_at) if row.delivered_at else None,
        last_outcome=row.last_outcome,
        attempt_log=[_attempt(attempt) for attempt in attempts],
        payload=row.payload,
    )


async def _deliveries(store: Ledger, partner: str, rows: list[DeliveryRow]) -> list[Delivery]:
    """The deliveries of `rows`, each with its attempts (one query for the lot)."""
    by_event: defaultdict[str, list[AttemptRow]] = defaultdict(list)
    if rows:
        for attempt in await store.attempts(partner, [row.event_id for row in rows]):
            by_event[attempt.event_id].append(attempt)
    return [_delivery(row, by_event[row.event_id]) for row in rows]


def _cursor(sequence: int) -> str:
    return cursors.encode(f"w{sequence}")


def _before(cursor: str) -> int:
    text = cursors.decode(cursor)
    if not text.startswith("w") or not text[1:].isdigit() or not 0 < int(text[1:]) <= LAST_SEQUENCE:
        raise cursors.refused()
    return int(text[1:])


_EXAMPLE = Delivery(
    event_id="evt_5d41402abc4b2a76b9719d911017c592",
    event_type="transaction.settled",
    subject="transactions/txn_001",
    state="failed",
    attempts=2,
    occurred_at="2026-11-27T16:00:00.412Z",
    next_attempt_at=None,
    delivered_at=None,
    last_outcome="status: HTTP 410",
    attempt_log=[
        DeliveryAttempt(1, "2026-11-27T16:00:00.530Z", 10004, "timeout", None, "no answer in time (ReadTimeout)"),
        DeliveryAttempt(2, "2026-11-27T16:00:05.611Z", 84, "status", 410, "HTTP 410"),
    ],
    payload={
        "type": "transaction.settled",
        "timestamp": "2026-11-27T16:00:00.412Z",
        "data": {"transaction_id": "txn_001", "status": "settled", "batch": "t1-20261127-GBP", "amount": "250.00"},
    },
)
_RESENT_EXAMPLE = msgspec.structs.replace(_EXAMPLE, state="pending", next_attempt_at="2026-11-28T08:15:02.004Z")
_INVALID = problem_responses(
    "A path or query parameter of the wrong type or out of range (an unknown state or event type)",
    problem_example("invalid-parameter", "a path or query parameter is not valid"),
)
_UNAVAILABLE = problem_responses(
    "PostgreSQL unavailable; retry after Retry-After",
    problem_example("dependency-unavailable", "database is unavailable; retry later"),
)


@get(
    "/api/v1/webhooks/deliveries",
    summary="The partner's webhook deliveries",
    description="Every webhook event sent (or to be sent) to the partner, newest first: its state (pending, "
    "delivered, failed), each attempt and how it ended, and the body delivered. Filter by state and event type; "
    "`next_cursor` fetches the next page.",
    tags=["webhooks"],
    operation_class=PartnerOperation,
    security=PARTNER_SECURITY,
    responses={
        200: documented(DeliveryPage, "One page of deliveries", "a page", DeliveryPage([_EXAMPLE], None)),
        400: _INVALID,
        422: cursors.BAD_CURSOR,
        503: _UNAVAILABLE,
        **PARTNER_RESPONSES,
    },
)
async def deliveries(
    request: Request,
    partner: NamedDependency[str],
    in_state: Annotated[  # `state` is Litestar's own argument: the query's name is given apart
        DeliveryState | None, QueryParameter(name="state", description="only deliveries in this state")
    ] = None,
    event_type: Annotated[EventType | None, QueryParameter(description="only events of this type")] = None,
    cursor: Annotated[
        str | None, QueryParameter(max_length=200, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=200, description="deliveries per page")] = 50,
) -> DeliveryPage:
    """One page of the partner's deliveries."""
    store: Ledger = request.app.state.ledger
    before = _before(cursor) if cursor else LAST_SEQUENCE
    rows = await store.deliveries(partner, in_state, event_type, before, limit + 1)
    following = _cursor(rows[limit - 1].sequence) if len(rows) > limit else None
    return DeliveryPage(await _deliveries(store, partner, rows[:limit]), following)


@post(
    "/api/v1/webhooks/deliveries/{event_id:str}/resend",
    summary="Send a webhook delivery again",
    description="A delivered or failed delivery of the partner's becomes pending, due now, with the retry "
    "schedule begun again; the same event (the same webhook-id and body) is sent once more. A pending one is "
    "a 409: it will be sent anyway, at its next attempt.",
    tags=["webhooks"],
    operation_class=PartnerOperation,
    security=PARTNER_SECURITY,
    status_code=202,
    responses={
        202: documented(Delivery, "The delivery, pending again", "resent", _RESENT_EXAMPLE),
        400: _INVALID,
        404: problem_responses(
            "No such delivery of this partner",
            problem_example("not-found", "no delivery evt_404 of this partner"),
        ),
        409: problem_responses(
            "The delivery is pending already: it will be attempted at its next attempt",
            problem_example(
                "delivery-pending",
                "delivery evt_5d41402abc4b2a76b9719d911017c592 is pending; its next attempt is due at "
                "2026-11-28T08:15:02.004Z",
            ),
        ),
        503: _UNAVAILABLE,
        **PARTNER_RESPONSES,
    },
)
async def resend(
    request: Request,
    partner: NamedDependency[str],
    event_id: Annotated[str, PathParameter(description="the delivery's event_id (its webhook-id)")],
) -> Delivery:
    """Make one of the partner's delivered or failed deliveries pending again."""
    store: Ledger = request.app.state.ledger
    found = await store.resend(partner, event_id)
    if found is None:
        raise Refused("not-found", f"no delivery {event_id} of this partner")
    if not found.resent:
        due = _instant(found.delivery.next_attempt_at)
        raise Refused("delivery-pending", f"delivery {event_id} is pending; its next attempt is due at {due}")
    (delivery,) = await _deliveries(store, partner, [found.delivery])
    return delivery
