"""Intake of one transaction: decode, validate and route, reserve, produce, complete.

Nothing is acknowledged before Kafka has the record. A produce that certainly never reached the
broker (queue full, refused at once) releases the reservation, so the partner's retry is new again;
one whose outcome is in doubt (a delivery timeout or error) keeps it locked until the log says
whether the record is there (gateway.intake.in_doubt). Redis down means nothing is produced (fail closed).
"""

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import NamedTuple

import msgspec

import fastcore
from gateway import ids
from gateway.errors import DeliveryInDoubt, DependencyUnavailable, Refused, Unauthorized
from gateway.idempotency.store import Admission, Decision, IdempotencyStore, Quota, Reservation, unlimited
from gateway.intake.decoding import decode, decode_items
from gateway.intake.schemas import (
    ENCODER,
    Accepted,
    AcceptedMetadata,
    TransactionRequest,
    replay_answer,
)
from gateway.kafka.events import (
    EVENT_ENCODER,
    Routing,
    Transaction,
    TransactionAccepted,
    cloudevents_headers,
    fingerprint,
    instant,
)
from gateway.kafka.producer import Delivery, SettlementProducer
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway.intake.flow")


class Prepared(NamedTuple):
    """A valid, routed transaction ready to reserve and produce, and what preparing it cost."""

    reservation: Reservation
    event: TransactionAccepted
    decode_seconds: float
    validate_seconds: float  # validation, routing, fingerprint and the event


class Timing(NamedTuple):
    """Seconds spent in each stage of one submission, for the `Server-Timing` header."""

    decode: float
    validate: float
    redis: float
    kafka: float

    def header(self) -> str:
        """`decode;dur=0.012, validate;dur=0.008, redis;dur=0.101, kafka;dur=0.611` (milliseconds)."""
        return (
            f"decode;dur={self.decode * 1000:.3f}, validate;dur={self.validate * 1000:.3f}, "
            f"redis;dur={self.redis * 1000:.3f}, kafka;dur={self.kafka * 1000:.3f}"
        )


class Outcome(msgspec.Struct, frozen=True):
    """What the partner gets: `replayed` is False for a new acceptance, True for an exact resubmission;
    `quota` is what the partner's admission found in the same round trip (a bulk request's items
    carry neither timing nor quota: the request does)."""

    transaction_id: str
    replayed: bool
    body: bytes
    timing: Timing | None = None
    quota: Quota | None = None


# one transaction of a bulk request: accepted or replayed, refused, or not taken for now (503)
ItemOutcome = Outcome | Refused | DependencyUnavailable


class BulkOutcome(NamedTuple):
    """A bulk request's outcome: one per transaction, in the request's order."""

    items: list[ItemOutcome]
    timing: Timing
    quota: Quota | None


# why a partner may not send a transaction through these windows in these currencies, or None
Forbids = Callable[[tuple[str, ...], tuple[str, str]], str | None]
REPLAYED_NONCE = "the signature's nonce was already used: sign every request afresh"

# what the partner is told when `reserve` does not claim the key: the problem's cause and detail
REFUSALS = {
    Decision.IN_FLIGHT: ("request-in-flight", "a request with this idempotency key is still being processed"),
    Decision.MISMATCH: ("idempotency-key-reused", "this idempotency key was already used for a different transaction"),
    Decision.TXN_TAKEN: (
        "transaction-id-conflict",
        "this transaction_id was already submitted under another idempotency key",
    ),
    Decision.LIMITED: ("rate-limited", "the partner's rate limit is exhausted; retry after the time given"),
}


INVALID = "the transaction breaks one or more rules"


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


class Intake:
    """The whole path of a submission, with its dependencies handed in (no globals)."""

    def __init__(
        self,
        settings: Settings,
        policy: fastcore.Policy,
        rules: fastcore.Rules,
        store: IdempotencyStore,
        producer: SettlementProducer,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._rules = rules
        self._store = store
        self._producer = producer
        self._metrics = metrics
        self._clock = clock

    def prepare(
        self,
        partner: str,
        body: bytes,
        idempotency_header: str | None,
        admission: Admission | None = None,
        forbids: Forbids | None = None,
    ) -> "Prepared":
        """Decode, validate, route and fingerprint one raw body of `partner`; no I/O. Raises Refused."""
        started = perf_counter()
        request = decode(body)
        decoded = perf_counter()
        try:
            instruction = fastcore.validate(self._policy, *validation_fields(request, idempotency_header))
        except fastcore.ValidationFailed as exc:
            raise Refused("validation-failed", INVALID, exc.errors) from None
        reservation, event = self._routed(partner, request, instruction, self._clock(), admission, forbids)
        return Prepared(reservation, event, decoded - started, perf_counter() - decoded)

    def _routed(
        self,
        partner: str,
        request: TransactionRequest,
        instruction: fastcore.Instruction,
        now: float,
        admission: Admission | None,
        forbids: Forbids | None,
    ) -> tuple[Reservation, TransactionAccepted]:
        """Route a valid transaction and make its reservation and event. Raises Refused (forbidden)."""
        try:
            routing = fastcore.route(
                self._rules,
                instruction.requested_window,
                request.source_currency,
                request.destination_currency,
                instruction.amount_minor,
                now,
            )
        except fastcore.RoutingUnavailable as exc:
            log.error("routing refused: %s", exc)
            raise DependencyUnavailable("settlement calendar", str(exc)) from None
        if forbids is not None:
            windows = tuple(w for w in (instruction.requested_window, routing.window) if w != "auto")
            reason = forbids(windows, (request.source_currency, request.destination_currency))
            if reason is not None:
                raise Refused("forbidden", reason)
        transaction = Transaction(
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
        event_id = ids.uuid7()
        reservation = Reservation(
            partner,
            instruction.idempotency_key,
            request.transaction_id,
            fingerprint(transaction),
            event_id,
            self._settings.topic(routing.window),
            admission,
            self._store.layout,
        )
        event = TransactionAccepted(
            event_id=event_id,
            occurred_at=instant(now),
            partner=partner,
            idempotency_key=instruction.idempotency_key,
            fingerprint=reservation.fingerprint,
            transaction=transaction,
            routing=Routing(
                routing.window, routing.requested_window, routing.value_date, routing.batch, routing.reason
            ),
        )
        return reservation, event

    async def submit(
        self,
        partner: str,
        body: bytes,
        idempotency_header: str | None,
        traceparent: str | None,
        admission: Admission | None = None,
        forbids: Forbids | None = None,
    ) -> Outcome:
        """Take one raw request body of `partner`; return the response body or raise Refused or
        DependencyUnavailable. `admission` (nonce, rate limit) is checked in the reservation's round trip."""
        reservation, event, decode_seconds, validate_seconds = self.prepare(
            partner, body, idempotency_header, admission, forbids
        )
        started = perf_counter()
        decision, stored = await self._store.reserve(reservation)
        timing = Timing(decode_seconds, validate_seconds, perf_counter() - started, 0.0)
        if decision is Decision.REPLAY:
            assert stored is not None
            return Outcome(
                event.transaction.transaction_id, replayed=True, body=stored, timing=timing, quota=reservation.quota
            )
        if decision is Decision.NONCE_REPLAYED:
            raise Unauthorized(REPLAYED_NONCE, signature=True, quota=reservation.quota)
        if decision is not Decision.NEW:
            cause, detail = REFUSALS[decision]
            raise Refused(cause, detail, quota=reservation.quota)
        # Shielded: once the record may reach Kafka, a client that goes away must not stop us from
        # recording the outcome in Redis, or its retry could produce a second record.
        return await asyncio.shield(self._settle(reservation, event, traceparent, timing))

    async def _settle(
        self, reservation: Reservation, event: TransactionAccepted, traceparent: str | None, timing: Timing
    ) -> Outcome:
        started = perf_counter()
        try:
            delivery = await self._producer.produce(
                reservation.topic,
                event.transaction.source_account.encode(),
                EVENT_ENCODER.encode(event),
                cloudevents_headers(event, traceparent),
            )
        except DeliveryInDoubt:
            # The record may be in the log: releasing now could let the retry write it twice.
            self._store.hold_in_doubt(reservation)
            raise
        except DependencyUnavailable:
            try:
                await self._store.release(reservation)
            except DependencyUnavailable:
                log.error("could not release %s after a failed produce; it expires by itself", reservation.idem_key)
            raise
        accepted, replay = self._answers(event, delivery)
        self._store.complete(reservation, replay)  # sent with this tick's Redis write
        return Outcome(
            event.transaction.transaction_id,
            replayed=False,
            body=accepted,
            timing=timing._replace(kafka=perf_counter() - started),
            quota=reservation.quota,
        )

    def _answers(self, event: TransactionAccepted, delivery: Delivery) -> tuple[bytes, bytes]:
        """The 202 body of a transaction Kafka has, and the answer its replays will get."""
        routing = event.routing
        self._metrics.tally(self._metrics.routing, routing.window, routing.reason).inc()
        accepted_at = instant(delivery.timestamp_ms / 1000)  # the record's own timestamp
        transaction_id = event.transaction.transaction_id
        accepted = Accepted(
            transaction_id=transaction_id,
            metadata=AcceptedMetadata(
                window=routing.window,
                requested_window=routing.requested_window,
                value_date=routing.value_date,
                batch=routing.batch,
                reason=routing.reason,
                topic=delivery.topic,
                partition=delivery.partition,
                offset=delivery.offset,
                accepted_at=accepted_at,
            ),
        )
        replay = replay_answer(
            transaction_id, routing, delivery.topic, delivery.partition, delivery.offset, accepted_at
        )
        return ENCODER.encode(accepted), ENCODER.encode(replay)

    async def submit_all(
        self,
        partner: str,
        body: bytes,
        traceparent: str | None,
        max_items: int,
        admission: Admission | None = None,
        forbids: Forbids | None = None,
    ) -> BulkOutcome:
        """A bulk request: a JSON array of up to `max_items` transactions, each decided exactly as
        `submit` would decide it alone. Decoding and validation first (fastcore checks the whole
        array in one call), then one Redis round trip admits the partner (at one request per item)
        and claims every new transaction, then Kafka gets every new record at once. Raises Refused
        or DependencyUnavailable only for the request as a whole (not an array, the partner's limit,
        Redis down)."""
        started = perf_counter()
        raws, duplicates = decode_items(body, max_items)
        items: list[ItemOutcome | None] = [None] * len(raws)
        requests: list[tuple[int, TransactionRequest]] = []
        for index, raw in enumerate(raws):
            try:
                requests.append((index, decode(raw, duplicates[index])))
            except Refused as exc:
                items[index] = exc
        decoded = perf_counter()
        checked = fastcore.validate_all(self._policy, [validation_fields(request, None) for _, request in requests])
        now = self._clock()
        prepared: list[tuple[int, Reservation, TransactionAccepted]] = []
        for (index, request), result in zip(requests, checked, strict=True):
            if type(result) is list:
                items[index] = Refused("validation-failed", INVALID, result)
                continue
            try:
                prepared.append((index, *self._routed(partner, request, result, now, admission, forbids)))
            except (Refused, DependencyUnavailable) as exc:
                items[index] = exc
        validated = perf_counter()
        refusal, quota, decisions = await self._store.reserve_all(
            [reservation for _, reservation, _ in prepared], admission or unlimited(partner), len(raws)
        )
        if refusal is Decision.NONCE_REPLAYED:
            raise Unauthorized(REPLAYED_NONCE, signature=True, quota=quota)
        if refusal is not None:
            raise Refused(*REFUSALS[refusal], quota=quota)
        reserved = perf_counter()
        new: list[tuple[int, Reservation, TransactionAccepted]] = []
        for (index, reservation, event), (decision, stored) in zip(prepared, decisions, strict=True):
            if decision is Decision.NEW:
                new.append((index, reservation, event))
            elif decision is Decision.REPLAY:
                assert stored is not None
                items[index] = Outcome(event.transaction.transaction_id, replayed=True, body=stored)
            else:
                items[index] = Refused(*REFUSALS[decision])
        if new:
            # shielded as in `submit`: once records may reach Kafka, their outcomes must reach Redis
            settled = await asyncio.shield(self._settle_all([(r, e) for _, r, e in new], traceparent))
            for (index, _, _), outcome in zip(new, settled, strict=True):
                items[index] = outcome
        timing = Timing(decoded - started, validated - decoded, reserved - validated, perf_counter() - reserved)
        return BulkOutcome(items, timing, quota)  # type: ignore[arg-type]  # every item is decided

    async def _settle_all(
        self, new: list[tuple[Reservation, TransactionAccepted]], traceparent: str | None
    ) -> list[Outcome | DependencyUnavailable]:
        """Produce the new transactions of a bulk request together and wait for every report; record
        those Kafka has in one Redis script, hold the ones in doubt, release the ones never sent."""
        records = [
            (
                r.topic,
                e.transaction.source_account.encode(),
                EVENT_ENCODER.encode(e),
                cloudevents_headers(e, traceparent),
            )
            for r, e in new
        ]
        try:
            futures = self._producer.produce_all(records)
        except DependencyUnavailable as exc:  # the producer failed: nothing was sent
            await self._release_all([r for r, _ in new])
            return [exc] * len(new)
        await asyncio.wait(futures)
        outcomes: list[Outcome | DependencyUnavailable] = []
        completions: list[tuple[Reservation, bytes]] = []
        unsent: list[Reservation] = []
        for (reservation, event), future in zip(new, futures, strict=True):
            error = future.exception()
            if error is None:
                accepted, replay = self._answers(event, future.result())
                completions.append((reservation, replay))
                outcomes.append(Outcome(event.transaction.transaction_id, replayed=False, body=accepted))
                continue
            assert isinstance(error, DependencyUnavailable)
            if isinstance(error, DeliveryInDoubt):
                self._store.hold_in_doubt(reservation)  # it may be in the log: settled from there
            else:
                unsent.append(reservation)
            outcomes.append(error)
        self._store.complete_all(completions)  # sent with this tick's write, ahead of the answer
        await self._release_all(unsent)
        return outcomes

    async def _release_all(self, reservations: list[Reservation]) -> None:
        """Drop the reservations of records that certainly never left (their retries are new again)."""
        if not reservations:
            return
        released = await asyncio.gather(*(self._store.release(r) for r in reservations), return_exceptions=True)
        if failed := sum(isinstance(outcome, BaseException) for outcome in released):
            log.error("could not release %d reservations after a failed produce; they expire by themselves", failed)
