"""Intake of one transaction, and of a bulk request's: decode, validate and route, reserve, produce, complete.

Replays first: an accepted transaction's exact resubmission gets its original answer whatever changed
since, and a key Redis has forgotten is answered from the ledger (gateway.intake.recall decides both).

Nothing is acknowledged before Kafka has the record. A produce that certainly never reached the
broker (queue full, refused at once) releases the reservation, so the partner's retry is new again;
one whose outcome is in doubt (a delivery timeout or error) keeps it locked until the log says
whether the record is there (gateway.intake.in_doubt). Redis down means nothing is produced (fail closed).

Over 400 lines because the single path and the bulk path are one class, side by side: each step of
one has its twin in the other (prepare and its items, settle and settle_all), and a change to one is
to be seen against the other.
"""

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import NamedTuple

import msgspec

import fastcore
from gateway.errors import DeliveryInDoubt, Refused, Unauthorized
from gateway.idempotency.reservation import AdmissionCheck, Reservation
from gateway.idempotency.store import Decision, IdempotencyStore
from gateway.intake.canonical import canonical_transaction, lenient, validation_fields
from gateway.intake.decoding import decode, decode_items, decoded_or_refused
from gateway.intake.ledger import Ledger
from gateway.intake.outcomes import INVALID, REFUSALS, REPLAYED_NONCE, BulkOutcome, ItemOutcome, Outcome, Timing
from gateway.intake.recall import LEDGER_DECIDES, Recall, release
from gateway.intake.schemas import (
    ENCODER,
    Accepted,
    AcceptedMetadata,
    TransactionRequest,
    compact_answer,
    replay_body,
)
from gateway.kafka.producer import Delivery, SettlementProducer
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics
from settlement.errors import DependencyUnavailable
from settlement.events import (
    EVENT_ENCODER,
    Routing,
    TransactionAccepted,
    cloudevents_headers,
    instant,
    transaction_accepted,
)

log = logging.getLogger("gateway.intake.flow")


class Prepared(NamedTuple):
    """A valid, routed transaction ready to reserve and produce, and what preparing it cost."""

    reservation: Reservation
    event: TransactionAccepted
    decode_seconds: float
    validate_seconds: float  # validation, routing, fingerprint and the event


# why a partner may not send a transaction through these windows in these currencies, or None
Forbids = Callable[[tuple[str, ...], tuple[str, str]], str | None]
# refusals an accepted transaction's replay may meet when the rules changed since: looked up first
CHANGED_RULES = frozenset({"validation-failed", "forbidden"})


def changed_rules(exc: Refused | DependencyUnavailable) -> bool:
    """Whether `exc` is a refusal that rules changed since a transaction's acceptance could cause."""
    if isinstance(exc, DependencyUnavailable):
        return exc.dependency == "settlement calendar"
    return exc.cause in CHANGED_RULES and not isinstance(exc, Unauthorized)


def _decided(transaction_id: str, decision: Decision, stored: bytes | None) -> ItemOutcome:
    """A bulk item Redis or the ledger decided without a produce: its replay, or its refusal."""
    if decision is Decision.REPLAY:
        assert stored is not None
        return Outcome(transaction_id, replayed=True, body=replay_body(transaction_id, stored))
    return Refused(*REFUSALS[decision])


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
        ledger: Ledger,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._recall = Recall(lenient(policy), store, ledger)
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
        admission: AdmissionCheck | None = None,
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
        admission: AdmissionCheck | None,
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
        event = transaction_accepted(
            partner,
            instruction.idempotency_key,
            canonical_transaction(request, instruction),
            Routing(routing.window, routing.requested_window, routing.value_date, routing.batch, routing.reason),
            instant(now),
        )
        reservation = Reservation(
            partner,
            instruction.idempotency_key,
            request.transaction_id,
            event.fingerprint,
            event.event_id,
            self._settings.topic(routing.window),
            admission,
            self._store.layout,
        )
        return reservation, event

    async def submit(
        self,
        partner: str,
        body: bytes,
        idempotency_header: str | None,
        traceparent: str | None,
        admission: AdmissionCheck | None = None,
        forbids: Forbids | None = None,
    ) -> Outcome:
        """Take one raw request body of `partner`; return the response body or raise Refused or
        DependencyUnavailable. `admission` (nonce, rate limit) is checked in the reservation's round trip."""
        try:
            reservation, event, decode_seconds, validate_seconds = self.prepare(
                partner, body, idempotency_header, admission, forbids
            )
        except (Refused, DependencyUnavailable) as exc:
            if not changed_rules(exc):
                raise
            replayed = await self._replay_despite(exc, partner, decode(body), idempotency_header, admission)
            if replayed is None:
                raise
            return replayed
        started = perf_counter()
        decision, stored = await self._store.reserve(reservation)
        if decision in LEDGER_DECIDES:
            ((decision, stored),) = await self._recall.ask_ledger([(reservation, decision)], held=True)
        timing = Timing(decode_seconds, validate_seconds, perf_counter() - started, 0.0)
        transaction_id = event.transaction.transaction_id
        if decision is Decision.REPLAY:
            assert stored is not None
            body = replay_body(transaction_id, stored)
            return Outcome(transaction_id, replayed=True, body=body, timing=timing, quota=reservation.quota)
        if decision is Decision.NONCE_REPLAYED:
            raise Unauthorized(REPLAYED_NONCE, signature=True, quota=reservation.quota)
        if decision is not Decision.NEW:
            cause, detail = REFUSALS[decision]
            raise Refused(cause, detail, quota=reservation.quota)
        # Shielded: once the record may reach Kafka, a client that goes away must not stop us from
        # recording the outcome in Redis, or its retry could produce a second record.
        return await asyncio.shield(self._settle(reservation, event, traceparent, timing))

    async def _replay_despite(
        self,
        refusal: Refused | DependencyUnavailable,
        partner: str,
        request: TransactionRequest,
        idempotency_header: str | None,
        admission: AdmissionCheck | None,
    ) -> Outcome | None:
        """The original answer of an accepted transaction that today's rules refuse (a narrowed grant,
        a lowered limit, a calendar past its horizon), or None when it was never accepted: the refusal
        stands. The partner's admission is checked first, as for any submission."""
        r = self._recall.replay_of(partner, request, idempotency_header)
        if r is None:
            return None
        quota = None
        if admission is not None and (admission.interval_us or admission.nonce_ttl_ms):
            admitted, quota = await self._store.admit(admission)
            if admitted is Decision.NONCE_REPLAYED:
                raise Unauthorized(REPLAYED_NONCE, signature=True, quota=quota)
            if admitted is not None:
                raise Refused(*REFUSALS[admitted], quota=quota)
            if isinstance(refusal, Refused):
                refusal.quota = quota  # the refusal, if it stands, was admitted here
        ((decision, stored),) = await self._recall.recalled([r])
        if decision is Decision.REPLAY:
            assert stored is not None
            timing = Timing(0.0, 0.0, 0.0, 0.0)
            return Outcome(r.transaction_id, True, replay_body(r.transaction_id, stored), timing, quota)
        if decision is Decision.IN_FLIGHT:
            raise Refused(*REFUSALS[decision], quota=quota)
        return None

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
            await release(self._store, reservation)
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
        replay = compact_answer(
            routing.batch, delivery.topic, delivery.partition, delivery.offset, delivery.timestamp_ms
        )
        return ENCODER.encode(accepted), replay

    async def submit_all(
        self,
        partner: str,
        body: bytes,
        traceparent: str | None,
        max_items: int,
        admission: AdmissionCheck,
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
        requests = self._decoded_items(raws, duplicates, items)
        decoded = perf_counter()
        prepared, refused = self._routed_items(partner, requests, items, admission, forbids)
        validated = perf_counter()
        refusal, quota, decisions = await self._store.reserve_all(
            [reservation for _, reservation, _ in prepared], admission, len(raws)
        )
        if refusal is Decision.NONCE_REPLAYED:
            raise Unauthorized(REPLAYED_NONCE, signature=True, quota=quota)
        if refusal is not None:
            raise Refused(*REFUSALS[refusal], quota=quota)
        ledger_decided = await self._recall.ledger_decides(prepared, decisions)
        if refused:
            await self._recall.replays_despite(partner, refused, items)
        reserved = perf_counter()
        new: list[tuple[int, Reservation, TransactionAccepted]] = []
        for (index, reservation, event), decided in zip(prepared, ledger_decided, strict=True):
            if isinstance(decided, DependencyUnavailable):
                items[index] = decided
            elif decided[0] is Decision.NEW:
                new.append((index, reservation, event))
            else:
                items[index] = _decided(event.transaction.transaction_id, *decided)
        if new:
            # shielded as in `submit`: once records may reach Kafka, their outcomes must reach Redis
            settled = await asyncio.shield(self._settle_all([(r, e) for _, r, e in new], traceparent))
            for (index, _, _), outcome in zip(new, settled, strict=True):
                items[index] = outcome
        timing = Timing(decoded - started, validated - decoded, reserved - validated, perf_counter() - reserved)
        return BulkOutcome(items, timing, quota)  # type: ignore[arg-type]  # every item is decided

    @staticmethod
    def _decoded_items(
        raws: list[msgspec.Raw], duplicates: list[tuple], items: list[ItemOutcome | None]
    ) -> list[tuple[int, TransactionRequest]]:
        """The items of a bulk request that decode, by index; the others' refusals go into `items`."""
        requests: list[tuple[int, TransactionRequest]] = []
        refused_as: dict[bytes, Refused] = {}  # an item refused once is refused alike when repeated
        for index, raw in enumerate(raws):
            if refused_as:  # after a first refusal only: an array of valid items pays nothing for it
                seen = refused_as.get(bytes(raw))  # the same bytes: the same refusal, repeated names and all
                if seen is not None:
                    items[index] = seen
                    continue
            decoded = decoded_or_refused(raw, duplicates[index])
            if type(decoded) is Refused:
                items[index] = refused_as[bytes(raw)] = decoded
            else:
                requests.append((index, decoded))
        return requests

    def _routed_items(
        self,
        partner: str,
        requests: list[tuple[int, TransactionRequest]],
        items: list[ItemOutcome | None],
        admission: AdmissionCheck,
        forbids: Forbids | None,
    ) -> tuple[list[tuple[int, Reservation, TransactionAccepted]], list[tuple[int, TransactionRequest]]]:
        """Validate the decoded items at once (fastcore) and route the valid ones: their reservations and
        events by index, and the refused that an accepted replay may predate (their refusals go into
        `items` meanwhile)."""
        checked = fastcore.validate_all(self._policy, [validation_fields(request, None) for _, request in requests])
        now = self._clock()
        prepared: list[tuple[int, Reservation, TransactionAccepted]] = []
        refused: list[tuple[int, TransactionRequest]] = []
        for (index, request), result in zip(requests, checked, strict=True):
            exc: Refused | DependencyUnavailable
            if type(result) is list:  # made, not raised: a thousand refused items cost their refusals alone
                exc = Refused("validation-failed", INVALID, result)
            else:
                try:
                    prepared.append((index, *self._routed(partner, request, result, now, admission, forbids)))
                    continue
                except (Refused, DependencyUnavailable) as routed:
                    exc = routed
            items[index] = exc
            if changed_rules(exc):
                refused.append((index, request))
        return prepared, refused

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
        await asyncio.gather(*(release(self._store, r) for r in reservations))
