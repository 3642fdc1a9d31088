"""Intake of one transaction: decode, validate and route, reserve, produce, complete.

Replays first: an accepted transaction's exact resubmission gets its original answer whatever changed
since (the partner's grant, the amount limits, the calendar's horizon). A submission those refuse is
looked up before the refusal stands (`recall`), and one whose key Redis has forgotten, or the same
payment under another key, is answered from the ledger when it holds the transaction.

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
from gateway.errors import DeliveryInDoubt, Refused, Unauthorized
from gateway.idempotency.reservation import AdmissionCheck, Quota, Reservation
from gateway.idempotency.store import Decision, IdempotencyStore
from gateway.intake.decoding import decode, decode_items, decoded_or_refused
from gateway.intake.ledger import Ledger
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
    Transaction,
    TransactionAccepted,
    cloudevents_headers,
    fingerprint,
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

# what Redis leaves to the ledger: a key it forgot, the same payment under another key
LEDGER_DECIDES = (Decision.RECALL, Decision.ELSEWHERE)
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
# refusals an accepted transaction's replay may meet when the rules changed since: looked up first
CHANGED_RULES = frozenset({"validation-failed", "forbidden"})
# an amount limit far above any real one (whole units; times 10^4 minor units it fits a 64-bit integer)
_NO_LIMIT = 10**12


def lenient(policy: fastcore.Policy) -> fastcore.Policy:
    """`policy` without its amount limits and blocked pairs: what an accepted transaction's replay is
    checked against (its shape, and the canonical form its fingerprint is taken of)."""
    return fastcore.Policy(dict.fromkeys(policy.max_amounts, _NO_LIMIT), ())


def changed_rules(exc: Refused | DependencyUnavailable) -> bool:
    """Whether `exc` is a refusal that rules changed since a transaction's acceptance could cause."""
    if isinstance(exc, DependencyUnavailable):
        return exc.dependency == "settlement calendar"
    return exc.cause in CHANGED_RULES and not isinstance(exc, Unauthorized)


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


def _transaction(request: TransactionRequest, instruction: fastcore.Instruction) -> Transaction:
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
        self._lenient = lenient(policy)
        self._ledger = ledger
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
            _transaction(request, instruction),
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
            ((decision, stored),) = await self._ask_ledger([(reservation, decision)], held=True)
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
        r = self._replay_of(partner, request, idempotency_header)
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
        ((decision, stored),) = await self._recalled([r])
        if decision is Decision.REPLAY:
            assert stored is not None
            timing = Timing(0.0, 0.0, 0.0, 0.0)
            return Outcome(r.transaction_id, True, replay_body(r.transaction_id, stored), timing, quota)
        if decision is Decision.IN_FLIGHT:
            raise Refused(*REFUSALS[decision], quota=quota)
        return None

    def _replay_of(
        self, partner: str, request: TransactionRequest, idempotency_header: str | None
    ) -> Reservation | None:
        """The keys a refused submission would have had, were it an accepted transaction's replay
        (checked without today's limits); None when it is no valid transaction at all."""
        try:
            instruction = fastcore.validate(self._lenient, *validation_fields(request, idempotency_header))
        except fastcore.ValidationFailed:
            return None
        transaction = _transaction(request, instruction)
        key = instruction.idempotency_key
        return Reservation(partner, key, request.transaction_id, fingerprint(transaction), layout=self._store.layout)

    async def _recalled(self, reservations: list[Reservation]) -> list[tuple[Decision | None, bytes | None]]:
        """What Redis, then the ledger, know of submissions refused before their reservation."""
        recalled = list(await asyncio.gather(*(self._store.recall(r) for r in reservations)))
        asked = [(i, reservations[i], d) for i, (d, _) in enumerate(recalled) if d in LEDGER_DECIDES]
        if asked:
            answers = await self._ask_ledger([(r, d) for _, r, d in asked], held=False)
            for (i, _, _), (decision, stored) in zip(asked, answers, strict=True):
                recalled[i] = (decision if decision is Decision.REPLAY else None, stored)
        return recalled

    async def _ask_ledger(
        self, asked: list[tuple[Reservation, Decision]], held: bool
    ) -> list[tuple[Decision, bytes | None]]:
        """Decide from the ledger the submissions Redis could not (RECALL, ELSEWHERE): REPLAY with the
        original answer when it holds the transaction with the same payload; otherwise a forgotten
        key's submission is NEW (its key is held: `held`), the same payment under another key TXN_TAKEN.
        A recalled key the ledger answers for is completed again, so its next replay is Redis's."""
        partner = asked[0][0].partner
        try:
            known = await self._ledger.known(partner, [r.transaction_id for r, _ in asked])
        except DependencyUnavailable:
            if held:
                for r, decision in asked:
                    if decision is Decision.RECALL:
                        await self._release(r)
            raise
        decided: list[tuple[Decision, bytes | None]] = []
        for r, decision in asked:
            found = known.get(r.transaction_id)
            if found is not None and found.fingerprint == r.fingerprint:
                if held and decision is Decision.RECALL:
                    self._store.complete(r, found.answer)
                decided.append((Decision.REPLAY, found.answer))
            elif found is None and decision is Decision.RECALL:
                decided.append((Decision.NEW, None))
            else:
                if held and decision is Decision.RECALL:
                    await self._release(r)
                decided.append((Decision.TXN_TAKEN, None))
        return decided

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
            await self._release(reservation)
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

    async def _release(self, reservation: Reservation) -> None:
        """Release a reservation whose record certainly never left; when Redis cannot take it, the
        in-doubt resolver keeps the doubt and releases it once the log confirms the record is absent."""
        try:
            await self._store.release(reservation)
        except DependencyUnavailable:
            log.error("could not release %s; the in-doubt resolver settles it", reservation.idem_key)
            self._store.hold_in_doubt(reservation)

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
        decoded = perf_counter()
        checked = fastcore.validate_all(self._policy, [validation_fields(request, None) for _, request in requests])
        now = self._clock()
        prepared: list[tuple[int, Reservation, TransactionAccepted]] = []
        refused: list[tuple[int, TransactionRequest]] = []  # by rules an accepted replay may predate
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
        validated = perf_counter()
        refusal, quota, decisions = await self._store.reserve_all(
            [reservation for _, reservation, _ in prepared], admission, len(raws)
        )
        if refusal is Decision.NONCE_REPLAYED:
            raise Unauthorized(REPLAYED_NONCE, signature=True, quota=quota)
        if refusal is not None:
            raise Refused(*REFUSALS[refusal], quota=quota)
        ledger_decided = await self._ledger_decides(prepared, decisions)
        if refused:
            await self._replays_despite(partner, refused, items)
        reserved = perf_counter()
        new: list[tuple[int, Reservation, TransactionAccepted]] = []
        for (index, reservation, event), decided in zip(prepared, ledger_decided, strict=True):
            if isinstance(decided, DependencyUnavailable):
                items[index] = decided
                continue
            decision, stored = decided
            if decision is Decision.NEW:
                new.append((index, reservation, event))
            elif decision is Decision.REPLAY:
                assert stored is not None
                transaction_id = event.transaction.transaction_id
                items[index] = Outcome(transaction_id, replayed=True, body=replay_body(transaction_id, stored))
            else:
                items[index] = Refused(*REFUSALS[decision])
        if new:
            # shielded as in `submit`: once records may reach Kafka, their outcomes must reach Redis
            settled = await asyncio.shield(self._settle_all([(r, e) for _, r, e in new], traceparent))
            for (index, _, _), outcome in zip(new, settled, strict=True):
                items[index] = outcome
        timing = Timing(decoded - started, validated - decoded, reserved - validated, perf_counter() - reserved)
        return BulkOutcome(items, timing, quota)  # type: ignore[arg-type]  # every item is decided

    async def _ledger_decides(
        self,
        prepared: list[tuple[int, Reservation, TransactionAccepted]],
        decisions: list[tuple[Decision, bytes | None]],
    ) -> list[tuple[Decision, bytes | None] | DependencyUnavailable]:
        """`decisions`, with those Redis left to the ledger (RECALL, ELSEWHERE) decided by it in one query;
        the ledger unreachable makes them DependencyUnavailable (their keys released)."""
        decided: list[tuple[Decision, bytes | None] | DependencyUnavailable] = list(decisions)
        asked = [i for i, (decision, _) in enumerate(decisions) if decision in LEDGER_DECIDES]
        if not asked:
            return decided
        try:
            answers = await self._ask_ledger([(prepared[i][1], decisions[i][0]) for i in asked], held=True)
        except DependencyUnavailable as exc:
            for i in asked:
                decided[i] = exc
            return decided
        for i, answer in zip(asked, answers, strict=True):
            decided[i] = answer
        return decided

    async def _replays_despite(
        self, partner: str, refused: list[tuple[int, TransactionRequest]], items: list[ItemOutcome | None]
    ) -> None:
        """The items of a bulk request today's rules refused that are replays of accepted transactions:
        their original answers instead (the request's admission already counted them)."""
        looked = [(index, r) for index, request in refused if (r := self._replay_of(partner, request, None))]
        if not looked:
            return
        try:
            recalled = await self._recalled([r for _, r in looked])
        except DependencyUnavailable:
            return  # the refusals stand: nothing says these were accepted
        for (index, r), (decision, stored) in zip(looked, recalled, strict=True):
            if decision is Decision.REPLAY:
                assert stored is not None
                items[index] = Outcome(r.transaction_id, replayed=True, body=replay_body(r.transaction_id, stored))
            elif decision is Decision.IN_FLIGHT:
                items[index] = Refused(*REFUSALS[decision])

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
        await asyncio.gather(*(self._release(r) for r in reservations))
