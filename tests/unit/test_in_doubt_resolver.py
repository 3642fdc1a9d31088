"""The in-doubt resolver keeps going whatever one round of it meets (fakes for the log and the store)."""

import asyncio
import time

from gateway.idempotency.reservation import PendingRecord, Reservation
from gateway.intake.in_doubt import DoubtResolver
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics


class FlakyLog:
    """Fails the first look in an unexpected way, then finds nothing."""

    def __init__(self) -> None:
        self.looks = 0

    def find(self, topic: str, since_ms: int, event_ids: set[str]) -> dict:
        self.looks += 1
        if self.looks == 1:
            raise ValueError("a record the decoder did not expect")
        return {}

    def close(self) -> None:
        pass


class Store:
    def __init__(self) -> None:
        self.released: list[str] = []

    async def release(self, reservation: Reservation) -> bool:
        self.released.append(reservation.idem_key)
        return True


async def test_a_failed_round_is_tried_again_and_the_key_is_still_settled(monkeypatch):
    monkeypatch.setattr("gateway.intake.in_doubt.RETRY_SECONDS", 0.05)
    monkeypatch.setattr("gateway.intake.in_doubt.CONFIRM_SECONDS", 0.05)
    store, log = Store(), FlakyLog()
    resolver = DoubtResolver(Settings(), store, Metrics(), log)  # type: ignore[arg-type]
    resolver.start()
    try:
        reservation = Reservation("p", "key", "txn", "ab" * 32, "event-1", "settlement.t1")
        long_ago = int(time.time() * 1000) - 600_000  # past the horizon (by Redis's clock): settle at once
        resolver.watch(reservation, PendingRecord("event-1", "settlement.t1", long_ago, 600_000, time.monotonic()))
        for _ in range(100):
            if store.released:
                break
            await asyncio.sleep(0.02)
    finally:
        await resolver.close()
    assert store.released == [reservation.idem_key]  # not in the log twice after the failed look
    assert log.looks >= 3
