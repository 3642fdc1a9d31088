"""What is known of a submission before today's rules or Redis decide it: an accepted transaction's
exact resubmission gets its original answer whatever changed since (the partner's grant, the amount
limits, the calendar's horizon), and one whose key Redis has forgotten, or the same payment under
another key, is answered from the ledger when it holds the transaction."""

import asyncio
import logging

import fastcore
from gateway.errors import Refused
from gateway.idempotency.reservation import Reservation
from gateway.idempotency.store import Decision, IdempotencyStore
from gateway.intake.canonical import canonical_transaction, validation_fields
from gateway.intake.ledger import Ledger
from gateway.intake.outcomes import REFUSALS, ItemOutcome, Outcome
from gateway.intake.schemas import TransactionRequest, replay_body
from settlement.errors import DependencyUnavailable
from settlement.events import TransactionAccepted, fingerprint

log = logging.getLogger("gateway.intake.recall")

# what Redis leaves to the ledger: a key it forgot, the same payment under another key
LEDGER_DECIDES = (Decision.RECALL, Decision.ELSEWHERE)


async def release(store: IdempotencyStore, reservation: Reservation) -> None:
    """Release a reservation whose record certainly never left; when Redis cannot take it, the
    in-doubt resolver keeps the doubt and releases it once the log confirms the record is absent."""
    try:
        await store.release(reservation)
    except DependencyUnavailable:
        log.error("could not release %s; the in-doubt resolver settles it", reservation.idem_key)
        store.hold_in_doubt(reservation)


class Recall:
    """Redis's, then the ledger's, knowledge of submissions: for the refused that may be replays, and
    for what Redis leaves to the ledger (LEDGER_DECIDES)."""

    def __init__(self, lenient: fastcore.Policy, store: IdempotencyStore, ledger: Ledger) -> None:
        self._lenient = lenient
        self._store = store
        self._ledger = ledger

    def replay_of(
        self, partner: str, request: TransactionRequest, idempotency_header: str | None
    ) -> Reservation | None:
        """The keys a refused submission would have had, were it an accepted transaction's replay
        (checked without today's limits); None when it is no valid transaction at all."""
        try:
            instruction = fastcore.validate(self._lenient, *validation_fields(request, idempotency_header))
        except fastcore.ValidationFailed:
            return None
        transaction = canonical_transaction(request, instruction)
        key = instruction.idempotency_key
        return Reservation(partner, key, request.transaction_id, fingerprint(transaction), layout=self._store.layout)

    async def recalled(self, reservations: list[Reservation]) -> list[tuple[Decision | None, bytes | None]]:
        """What Redis, then the ledger, know of submissions refused before their reservation."""
        recalled = list(await asyncio.gather(*(self._store.recall(r) for r in reservations)))
        asked = [(i, reservations[i], d) for i, (d, _) in enumerate(recalled) if d in LEDGER_DECIDES]
        if asked:
            answers = await self.ask_ledger([(r, d) for _, r, d in asked], held=False)
            for (i, _, _), (decision, stored) in zip(asked, answers, strict=True):
                recalled[i] = (decision if decision is Decision.REPLAY else None, stored)
        return recalled

    async def ask_ledger(
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
                        await release(self._store, r)
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
                    await release(self._store, r)
                decided.append((Decision.TXN_TAKEN, None))
        return decided

    async def ledger_decides(
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
            answers = await self.ask_ledger([(prepared[i][1], decisions[i][0]) for i in asked], held=True)
        except DependencyUnavailable as exc:
            for i in asked:
                decided[i] = exc
            return decided
        for i, answer in zip(asked, answers, strict=True):
            decided[i] = answer
        return decided

    async def replays_despite(
        self, partner: str, refused: list[tuple[int, TransactionRequest]], items: list[ItemOutcome | None]
    ) -> None:
        """The items of a bulk request today's rules refused that are replays of accepted transactions:
        their original answers instead (the request's admission already counted them)."""
        looked = [(index, r) for index, request in refused if (r := self.replay_of(partner, request, None))]
        if not looked:
            return
        try:
            recalled = await self.recalled([r for _, r in looked])
        except DependencyUnavailable:
            return  # the refusals stand: nothing says these were accepted
        for (index, r), (decision, stored) in zip(looked, recalled, strict=True):
            if decision is Decision.REPLAY:
                assert stored is not None
                items[index] = Outcome(r.transaction_id, replayed=True, body=replay_body(r.transaction_id, stored))
            elif decision is Decision.IN_FLIGHT:
                items[index] = Refused(*REFUSALS[decision])
