"""HTTPS without a proxy in front: given GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE, Granian serves the
partners' port over TLS (as deploy/run.sh and the image start it), with a certificate made here."""

import httpx
import pytest

from tests.certificates import self_signed
from tests.conftest import transaction
from tests.e2e.conftest import server_env
from tests.servers import Server

URL = "/api/v1/transactions/"


@pytest.fixture(scope="module")
def https_server(stack, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    certificate, key = self_signed(directory)
    env = server_env(stack, directory, GATEWAY_TLS_CERT_FILE=str(certificate), GATEWAY_TLS_KEY_FILE=str(key))
    gateway = Server(env, workers=1)
    yield gateway
    gateway.stop()


async def test_a_submission_over_https_verified_against_the_certificate_is_accepted(https_server, unique):
    assert https_server.url.startswith("https://127.0.0.1:")
    async with httpx.AsyncClient(base_url=https_server.url, verify=https_server.context, timeout=10) as client:
        accepted = await client.post(URL, json=transaction(unique))
        assert accepted.status_code == 202, accepted.text
        replayed = await client.post(URL, json=transaction(unique))
        assert replayed.status_code == 200 and replayed.json()["transaction_id"] == accepted.json()["transaction_id"]
        assert (await client.get("/ready")).status_code == 200


def test_plain_http_on_the_https_port_gets_no_answer_and_a_client_that_trusts_other_roots_is_refused(https_server):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{https_server.port}/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_server.url + "/health", timeout=5)  # the system's roots do not know this certificate


def test_the_operations_port_stays_plain_http_on_loopback(https_server):
    health = httpx.get(https_server.ops_url + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
