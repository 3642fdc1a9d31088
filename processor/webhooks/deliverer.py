"""The deliverer (`python -m processor deliver`): sends the outbox's events to the partners subscribed,
at least once, in order per subject, retrying on the schedule and failing a delivery visibly once every
retry is spent.

One loop claims what is due (processor/webhooks/deliveries.py), up to PROCESSOR_WEBHOOK_CONCURRENCY in
flight per partner and none while a partner's breaker is open, and starts one task per attempt
(processor/webhooks/sending.py); a finished attempt wakes the loop, which records it and claims again.
A slow or dead endpoint holds only its own partner's slots, so no other partner's events wait for it.
PostgreSQL down, it waits with back-off; attempts finished meanwhile are recorded once it answers.
"""

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from processor.settings import ProcessorSettings
from processor.webhooks.breaker import Breaker
from processor.webhooks.deliveries import Claimed, Outbox
from processor.webhooks.metrics import DeliveryMetrics
from processor.webhooks.sending import Attempt, Sender
from settlement.errors import ConfigurationError
from settlement.stamps import FileStamp, file_stamp
from settlement.webhooks import Subscription, load_subscriptions

log = logging.getLogger("processor.webhooks")

_GAUGE_SECONDS = 5.0  # how often the backlog per partner is counted
_PRUNE_SECONDS = 600.0  # how often deliveries past their retention are looked for


class Deliverer:
    def __init__(
        self, settings: ProcessorSettings, metrics: DeliveryMetrics, environ: Mapping[str, str] = os.environ
    ) -> None:
        self._settings, self._metrics, self._environ = settings, metrics, environ
        self._outbox = Outbox(settings.database_url, settings.database_schema, settings.retry_delays)
        connect, response = settings.webhook_connect_timeout_seconds, settings.webhook_response_timeout_seconds
        # the longest an attempt can take (resolve and connect, answer), and a margin: then a claim lapses
        self._lease = connect + response + 2.0
        self._senders: dict[str, Sender] = {}  # per subscribed partner
        self._stamp: FileStamp | str | None = None  # the registry file read last ("none": no file configured)
        self._refused: dict[str, str] = {}  # partner -> why its subscription was refused
        self._retired: list[Sender] = []  # of subscriptions changed since: closed once their attempts end
        self._breakers: dict[str, Breaker] = {}
        self._in_flight: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()
        self._finished: list[tuple[Claimed, Attempt]] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connected = False
        self._listener: asyncio.Task | None = None  # LISTENs on a connection of its own
        self._gauges_at = self._prune_at = 0.0
        self.problem: str | None = None
        self.waits_for = "PostgreSQL"

    @property
    def ready(self) -> bool:
        return self._connected and not self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming; run() returns once the attempts under way have ended and are recorded."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.25
        try:
            while not self._stopping.is_set():
                try:
                    await self._turn()
                    backoff = 0.25
                except psycopg.Error as exc:  # down, restarted, or a statement refused: reconnect, retry
                    if self._connected:
                        log.error("PostgreSQL: %s; waiting for it", exc)
                    self._connected = False
                    self._metrics.ready.set(0)
                    await self._nap(backoff)
                    backoff = min(backoff * 2, 2.0)
            await self._drain()
        finally:
            self._metrics.ready.set(0)
            if self._listener is not None:
                self._listener.cancel()
            for sender in [*self._senders.values(), *self._retired]:
                await sender.close()
            await self._outbox.close()

    async def _turn(self) -> None:
        if not self._connected:
            await self._outbox.connect()
            self._connected = True
            self._metrics.ready.set(1)
            log.info("delivering webhooks from the outbox in schema %s", self._settings.database_schema)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="webhook announcements")
        await self._follow_registry()
        await self._retire()
        await self._record()
        for claimed in await self._outbox.claim(self._free(), self._lease):
            self._start(claimed, self._senders[claimed.partner])
        if time.monotonic() >= self._gauges_at:
            await self._count_backlog()
        if time.monotonic() >= self._prune_at:
            await self._prune()
        await self._nap(self._settings.webhook_poll_seconds)

    async def _listen(self) -> None:
        """Wake the loop on the processor's announcements; on a fault, say so and leave it to the poll
        (the next turn listens again)."""
        try:
            await self._outbox.listen(self._wake.set)
        except psycopg.Error as exc:
            log.warning("listening for the processor's announcements: %s; polling meanwhile", exc)
            await asyncio.sleep(self._settings.webhook_poll_seconds)  # not a new connection every turn

    async def _nap(self, seconds: float) -> None:
        """Until an attempt ends, stop() is called or `seconds` pass."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _breaker(self, partner: str) -> Breaker:
        if partner not in self._breakers:
            settings = self._settings
            self._breakers[partner] = Breaker(settings.webhook_breaker_failures, settings.webhook_breaker_seconds)
        return self._breakers[partner]

    def _free(self) -> dict[str, int]:
        """How many more attempts each subscribed partner may have in flight now."""
        free = {}
        for partner in self._senders:
            allowed = self._breaker(partner).allowance(self._settings.webhook_concurrency)
            self._metrics.breaker_open.labels(partner).set(1 if allowed == 0 else 0)
            if allowed > self._in_flight[partner]:
                free[partner] = allowed - self._in_flight[partner]
        return free

    def _start(self, claimed: Claimed, sender: Sender) -> None:
        self._in_flight[claimed.partner] += 1
        self._metrics.in_flight.labels(claimed.partner).inc()
        task = asyncio.create_task(self._attempt(claimed, sender), name=f"webhook {claimed.event_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, claimed: Claimed, sender: Sender) -> None:
        started = datetime.now(UTC)
        try:
            attempt = await sender.attempt(claimed.event_id, claimed.body)
        except Exception as exc:  # a fault of ours, not the receiver's: recorded as the attempt's end
            log.exception("webhook %s to %s", claimed.event_id, claimed.partner)
            attempt = Attempt("error", None, f"{type(exc).__name__}: {exc}"[:500], started, 0)
        self._in_flight[claimed.partner] -= 1
        self._metrics.in_flight.labels(claimed.partner).dec()
        self._metrics.attempts.labels(claimed.partner, attempt.outcome).inc()
        breaker = self._breaker(claimed.partner)
        breaker.succeeded() if attempt.delivered else breaker.failed()
        self._finished.append((claimed, attempt))
        self._wake.set()

    async def _record(self) -> None:
        """Record the attempts that ended (kept for the next turn when PostgreSQL does not answer)."""
        if not self._finished:
            return
        finished = list(self._finished)
        recorded = await self._outbox.record(finished)
        del self._finished[: len(finished)]
        for (claimed, attempt), result in zip(finished, recorded, strict=True):
            if result.verdict == "delivered":
                self._metrics.deliveries.labels(claimed.partner, "delivered").inc()
                self._metrics.attempts_per_delivery.observe(claimed.attempt)
                if result.delay is not None:
                    self._metrics.delay.observe(result.delay)
            elif result.verdict == "failed":
                self._metrics.deliveries.labels(claimed.partner, "failed").inc()
                log.warning(
                    "webhook %s to %s failed after %d attempts (%s: %s); POST "
                    "/api/v1/webhooks/deliveries/%s/resend sends it again",
                    claimed.event_id, claimed.partner, claimed.attempt, attempt.outcome, attempt.detail,
                    claimed.event_id,
                )  # fmt: skip

    async def _prune(self) -> None:
        """Forget the deliveries that ended before PROCESSOR_WEBHOOK_RETENTION_DAYS (0: keep them all)."""
        days = self._settings.webhook_retention_days
        pruned = await self._outbox.prune(days) if days else 0
        if pruned:
            log.info("forgot %d webhook deliveries that ended more than %g days ago", pruned, days)
        # a full batch: more are due, at the next turn; else in a while
        self._prune_at = time.monotonic() + (0 if pruned >= 5000 else _PRUNE_SECONDS)

    async def _count_backlog(self) -> None:
        backlog = await self._outbox.backlog()
        for partner in set(backlog) | set(self._senders):
            self._metrics.backlog.labels(partner).set(backlog.get(partner, 0))
        self._gauges_at = time.monotonic() + _GAUGE_SECONDS

    async def _follow_registry(self) -> None:
        """Deliver to the registry's subscriptions as of the file's last change. A partner whose table is
        refused (a secret_env not set) is left out, said in the log, /ready's problem and a gauge; a file
        that cannot be read keeps the subscriptions loaded before. Either is read again once it changes."""
        path = self._settings.partners_file
        stamp = file_stamp(Path(path)) if path else "none"
        if stamp is None:
            self.problem = f"the partner registry {path} cannot be read; delivering to the subscriptions loaded before"
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:  # no DNS here: the senders' resolvers check every connection's addresses
            subscriptions, refused = load_subscriptions(path, self._environ)
        except ConfigurationError as exc:
            self.problem = f"{exc}; delivering to the subscriptions loaded before"
            log.error("%s", self.problem)
            return
        for partner in set(self._refused) | set(refused):
            self._metrics.refused.labels(partner).set(1 if partner in refused else 0)
        self._refused = refused
        for reason in refused.values():
            log.error("%s: its events wait until the registry is mended", reason)
        self.problem = "; ".join(refused.values()) or None
        self._subscribe(subscriptions)
        log.info("webhook subscriptions: %s", sorted(subscriptions) or "none (nothing to deliver)")

    def _subscribe(self, subscriptions: dict[str, Subscription]) -> None:
        """A sender for each subscription (a new one where it changed); a partner's attempts under way
        end on the sender they started with."""
        settings = self._settings
        for partner, sender in list(self._senders.items()):
            if subscriptions.get(partner) != sender.subscription:
                del self._senders[partner]
                self._retired.append(sender)
        for partner, subscription in subscriptions.items():
            if partner not in self._senders:
                self._senders[partner] = Sender(
                    subscription, settings.webhook_concurrency, settings.webhook_connect_timeout_seconds,
                    settings.webhook_response_timeout_seconds,
                )  # fmt: skip
            for outcome in ("delivered", "failed"):  # every series from the start: an alert sees the first one
                self._metrics.deliveries.labels(partner, outcome)

    async def _retire(self) -> None:
        """Close the senders of changed subscriptions once their attempts have ended."""
        for sender in [s for s in self._retired if s.in_flight == 0]:
            self._retired.remove(sender)
            await sender.close()

    async def _drain(self) -> None:
        """Let the attempts under way end (each is bounded by its timeouts) and record them."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._lease)
        try:
            await self._record()
        except psycopg.Error as exc:
            log.error("PostgreSQL: %s; %d attempts unrecorded (their claims lapse and they are sent again)",
                      exc, len(self._finished))  # fmt: skip
