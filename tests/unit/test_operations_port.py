"""The operations listener over real loopback sockets: what it answers, and that a slow, greedy or broken
client cannot hold it."""

import asyncio

import httpx
import pytest

from gateway.api import operations_port
from gateway.api.operations_port import MAX_CONNECTIONS, MAX_REQUEST_BYTES, OperationsPort

PAGES = {"/metrics": lambda: ("text/plain; version=0.0.4; charset=utf-8", b"up 1\n"), "/health": lambda: ("a/b", b"{}")}


@pytest.fixture
async def listener():
    port = OperationsPort(PAGES, "127.0.0.1", 0)
    await port.start()
    try:
        yield port
    finally:
        await port.close()


def url(listener: OperationsPort, path: str) -> str:
    host, port = listener.address
    return f"http://{host}:{port}{path}"


async def exchange(listener: OperationsPort, raw: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes and read until the listener closes the connection."""
    reader, writer = await asyncio.open_connection(*listener.address)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_it_answers_its_pages_and_nothing_else(listener):
    assert listener.address[0] == "127.0.0.1"
    async with httpx.AsyncClient() as client:
        metrics = await client.get(url(listener, "/metrics?name[]=up"))
        assert metrics.status_code == 200 and metrics.text == "up 1\n"
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        head = await client.head(url(listener, "/metrics"))
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "5"
        assert (await client.get(url(listener, "/health"))).content == b"{}"  # the same connection, kept alive
        assert (await client.get(url(listener, "/api/v1/transactions/"))).status_code == 404
        assert (await client.get(url(listener, "/"))).status_code == 404
        refused = await client.post(url(listener, "/metrics"), content=b"x")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


async def test_a_page_that_fails_is_a_500_and_the_listener_goes_on():
    def broken() -> tuple[str, bytes]:
        raise RuntimeError("no samples")

    port = OperationsPort({**PAGES, "/broken": broken}, "127.0.0.1", 0)
    await port.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(url(port, "/broken"))).status_code == 500
            assert (await client.get(url(port, "/metrics"))).status_code == 200
    finally:
        await port.close()


async def test_a_request_too_large_or_malformed_is_refused_and_the_connection_closed(listener):
    huge = b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * MAX_REQUEST_BYTES + b"\r\n\r\n"
    assert (await exchange(listener, huge)).startswith(b"HTTP/1.1 431 ")
    body = b"GET /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (2 * MAX_REQUEST_BYTES)
    assert (await exchange(listener, body + b"b" * 2 * MAX_REQUEST_BYTES)).startswith(b"HTTP/1.1 413 ")
    assert (await exchange(listener, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_a_slow_client_is_cut_off_and_does_not_hold_the_port(listener, monkeypatch):
    monkeypatch.setattr(operations_port, "TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection(*listener.address)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")  # and never the end of its headers
    await writer.drain()
    async with httpx.AsyncClient() as client:  # meanwhile others are served
        assert (await client.get(url(listener, "/metrics"))).status_code == 200
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, unanswered, after TIMEOUT
    writer.close()


async def test_connections_past_the_bound_are_closed_at_once(listener):
    held = [await asyncio.open_connection(*listener.address) for _ in range(MAX_CONNECTIONS)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection(*listener.address)
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()
    for _, held_writer in held:
        held_writer.close()
    await asyncio.sleep(0.1)
    async with httpx.AsyncClient() as client:  # the slots come back
        assert (await client.get(url(listener, "/metrics"))).status_code == 200


async def test_close_ends_the_connections_still_open():
    port = OperationsPort(PAGES, "127.0.0.1", 0)
    await port.start()
    reader, writer = await asyncio.open_connection(*port.address)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(port.close(), 3)
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()
