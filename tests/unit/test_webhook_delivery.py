"""The deliverer's parts that need no outbox: the breaker, the retry schedule, the address re-check, the
signed headers (verified by the `standardwebhooks` package, as a partner verifies them) and the
attempt's outcomes against real loopback receivers."""

import http.server
import os
import socket
import threading
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from processor.settings import ProcessorSettings
from processor.webhooks import sending
from processor.webhooks.breaker import Breaker
from processor.webhooks.deliverer import Deliverer
from processor.webhooks.deliveries import Claimed, Outbox
from processor.webhooks.metrics import DeliveryMetrics
from processor.webhooks.sending import Attempt, CheckingResolver, Sender, literal_refusal, signed_headers
from settlement.errors import ConfigurationError
from settlement.webhooks import Subscription, new_secret, signing_secret
from tests.servers import free_port


def _subscription(url: str, allow_private: bool = False) -> Subscription:
    return Subscription("acme", url, signing_secret(new_secret()), frozenset({"transaction.settled"}), allow_private)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_failures_in_a_row_lets_one_through_then_closes_on_success():
    clock = Clock()
    breaker = Breaker(failures=3, cool_down=10, longest=25, clock=clock)
    assert breaker.allowance(4) == 4
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # not in a row
    breaker.failed()
    breaker.failed()
    assert breaker.allowance(4) == 4
    breaker.failed()  # three in a row: open for 10 s
    assert breaker.open and breaker.allowance(4) == 0
    clock.now += 10
    assert breaker.allowance(4) == 1  # half-open: one delivery tries the endpoint
    breaker.failed()  # it failed: open again, twice as long
    clock.now += 19.9
    assert breaker.allowance(4) == 0
    clock.now += 0.1
    breaker.failed()
    clock.now += 25  # 40 s would be next, but never longer than `longest`
    assert breaker.allowance(4) == 1
    breaker.succeeded()
    assert not breaker.open and breaker.allowance(4) == 4


def _claimed(in_schedule: int) -> Claimed:
    return Claimed("evt_1", "acme", "transaction.settled", in_schedule, in_schedule, datetime.now(UTC), "{}")


def test_a_failed_attempt_is_retried_after_the_schedule_s_wait_within_jitter_then_the_delivery_fails():
    outbox = Outbox("postgresql://unused", "s", (5, 300, 1800))
    started = datetime(2026, 12, 1, 12, tzinfo=UTC)
    attempt = Attempt("status", 500, "HTTP 500", started, 1000)
    for n, wait in enumerate((5, 300, 1800), start=1):
        for _ in range(50):
            verdict, at = outbox.verdict(_claimed(n), attempt)
            assert verdict == "retry" and at is not None
            waited = (at - started).total_seconds() - 1.0
            assert 0.8 * wait <= waited <= 1.2 * wait
    assert outbox.verdict(_claimed(4), attempt) == ("failed", None)  # every retry spent


@pytest.mark.parametrize(
    ("schedule", "valid"),
    [("5,300,1800", True), ("0.3", True), ("", False), ("5,,6", False), ("five", False), ("-1", False), ("1e9", False)],
)
def test_the_retry_schedule_is_checked_at_start_up(schedule, valid):
    environ = {"PROCESSOR_WEBHOOK_RETRY_SCHEDULE": schedule}
    if valid:
        assert ProcessorSettings.from_env(environ).retry_delays
    else:
        with pytest.raises(ConfigurationError, match="PROCESSOR_WEBHOOK_RETRY_SCHEDULE"):
            ProcessorSettings.from_env(environ)


@pytest.mark.parametrize("variable", ["PROCESSOR_WEBHOOK_CONCURRENCY", "PROCESSOR_WEBHOOK_RESPONSE_TIMEOUT_SECONDS"])
def test_the_deliverer_s_bounds_must_be_positive(variable):
    with pytest.raises(ConfigurationError, match=variable):
        ProcessorSettings.from_env({variable: "0"})


def test_the_default_schedule_is_eight_attempts_over_about_a_day_and_a_quarter():
    delays = ProcessorSettings().retry_delays
    assert len(delays) + 1 == 8 and 24 * 3600 < sum(delays) < 3 * 86400


def test_signed_headers_verify_with_the_standard_webhooks_package():
    secret = new_secret()
    subscription = Subscription("acme", "https://hooks.example/x", signing_secret(secret), frozenset(), False)
    body = '{"type": "transaction.settled", "data": {"amount": "10.00"}}'
    now = datetime.now(UTC).timestamp()
    headers = signed_headers(subscription, "evt_0123", body, now)
    assert headers["webhook-id"] == "evt_0123" and headers["webhook-timestamp"] == str(int(now))
    assert Webhook(secret).verify(body, headers)["data"] == {"amount": "10.00"}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body.replace("10.00", "99.00"), headers)


@pytest.mark.parametrize(
    ("url", "allow", "refused"),
    [
        ("https://10.0.0.7/hook", False, "private"),
        ("https://169.254.169.254/latest", False, "link-local"),
        ("https://[::ffff:10.1.2.3]/hook", False, "private"),
        ("https://10.0.0.7/hook", True, None),
        ("http://127.0.0.1:9/hook", False, None),
        ("https://hooks.example/in", False, None),  # a name: its connector's resolver checks it
    ],
)
def test_an_address_written_in_the_url_is_checked_before_the_request(url, allow, refused):
    reason = literal_refusal(_subscription(url, allow))
    assert (reason is None) if refused is None else (refused in reason)


class _Rebound:
    """A resolver whose answer for every name holds a public and a private address (DNS rebinding)."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
            for address in ("93.184.216.34", "10.9.8.7")
        ]

    async def close(self) -> None:
        pass


async def test_a_name_that_now_resolves_to_a_private_address_is_refused_dns_rebinding(monkeypatch):
    monkeypatch.setattr(sending, "DefaultResolver", _Rebound)
    with pytest.raises(sending.AddressRefused, match=r"10\.9\.8\.7"):
        await CheckingResolver(allow_private_network=False).resolve("hooks.example", 443)
    assert len(await CheckingResolver(allow_private_network=True).resolve("hooks.example", 443)) == 2
    sender = Sender(_subscription("https://hooks.example/in"), 1, 1.0, 1.0)
    try:
        attempt = await sender.attempt("evt_1", "{}")  # refused before any connection is made
    finally:
        await sender.close()
    assert attempt.outcome == "refused-address" and "10.9.8.7" in attempt.detail


class _Receiver:
    """A loopback receiver answering every POST with `status` after `delay` seconds."""

    def __init__(self, status: int, delay: float = 0.0) -> None:
        receiver = self
        self.requests: list[tuple[dict[str, str], bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                threading.Event().wait(delay)
                body = b"" if status == 204 else b"ignored"  # a 204 has no body
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "delay", "outcome"),
    [(204, 0, "delivered"), (200, 0, "delivered"), (500, 0, "status"), (302, 0, "status"), (200, 2, "timeout")],
)
async def test_an_attempt_says_how_it_ended(status, delay, outcome):
    receiver = _Receiver(status, delay)
    sender = Sender(_subscription(receiver.url), 2, 0.5, 0.5)
    try:
        attempt = await sender.attempt("evt_9", '{"a": 1}')
    finally:
        await sender.close()
        receiver.close()
    assert attempt.outcome == outcome, attempt
    assert attempt.status_code == (None if outcome == "timeout" else status)
    headers, body = receiver.requests[0]
    assert body == b'{"a": 1}' and headers["webhook-id"] == "evt_9"
    assert headers["host"] == receiver.url.split("/")[2]


async def test_an_endpoint_that_is_down_is_unreachable():
    sender = Sender(_subscription(f"http://127.0.0.1:{free_port()}/hook"), 2, 0.5, 0.5)
    try:
        attempt = await sender.attempt("evt_1", "{}")
    finally:
        await sender.close()
    assert attempt.outcome == "unreachable"


async def test_one_partner_s_refused_table_leaves_the_others_delivered_and_says_so(tmp_path):
    registry = tmp_path / "partners.toml"
    secret = new_secret()
    registry.write_text(
        f'[partners.good]\nwebhook = {{ url = "https://hooks.good.example/in", secret = "{secret}" }}\n'
        '[partners.unset]\nwebhook = { url = "https://hooks.unset.example/in", secret_env = "UNSET_WEBHOOK" }\n'
        '[partners.nowhere]\nwebhook = { url = "https://name.that.does.not.resolve.invalid/in", '
        f'secret = "{secret}" }}\n'
    )
    settings = ProcessorSettings.from_env({"GATEWAY_PARTNERS_FILE": str(registry)})
    metrics = DeliveryMetrics()
    deliverer = Deliverer(settings, metrics, environ={})
    try:
        await deliverer._follow_registry()
        # a name that does not resolve now is loaded: every connection's addresses are checked when made
        assert sorted(deliverer._senders) == ["good", "nowhere"]
        assert deliverer.problem is not None and "UNSET_WEBHOOK" in deliverer.problem
        assert metrics.refused.labels("unset")._value.get() == 1
        assert metrics.deliveries.labels("good", "failed")._value.get() == 0  # the series exists from the start
        registry.write_text(
            f'[partners.good]\nwebhook = {{ url = "https://hooks.good.example/v2", secret = "{secret}" }}\n'
        )
        os.utime(registry, ns=(0, 10**9))
        await deliverer._follow_registry()
        assert sorted(deliverer._senders) == ["good"] and deliverer._senders["good"].subscription.url.endswith("/v2")
        assert metrics.refused.labels("unset")._value.get() == 0 and deliverer.problem is None
    finally:
        for sender in [*deliverer._senders.values(), *deliverer._retired]:
            await sender.close()
