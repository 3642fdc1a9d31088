"""The load of issue 23's measurement (benchmarks/redis_cost.py): seed-shaped transactions, POSTed
singly or in bulk requests over keep-alive connections, and what each answer says happened to them."""

import asyncio
import re
from collections import Counter

import msgspec

BULK_SIZE = 500
# the seed transaction of the README's quick start, its ids made unique
SEED = (
    '{{"transaction_id":"txn_{u}","amount":250.00,"source_currency":"USD","destination_currency":"GBP",'
    '"source_account":"acct_usa_{u}","destination_account":"acct_uk_99","counterparty_id":"cparty_london",'
    '"idempotency_key":"idem_{u}","settlement_window":"t1"}}'
)


def seed_bodies(tag: str, count: int) -> list[bytes]:
    """`count` seed-shaped transactions whose ids carry `tag` (12 hex digits of id in all, as the tests')."""
    return [SEED.format(u=f"{tag}{i:08x}").encode() for i in range(count)]


def bulk_bodies(bodies: list[bytes], size: int = BULK_SIZE) -> list[bytes]:
    return [b"[" + b",".join(bodies[i : i + size]) + b"]" for i in range(0, len(bodies), size)]


def outcomes(status: int, payload: bytes, items: int) -> Counter[str]:
    """What one answer says happened to its transactions: {status: count}; a bulk 207 per item, a bulk 200
    (every one accepted) as 202s, any other bulk answer as `request <status>` for each of its items."""
    if items == 0:  # the single endpoint
        return Counter({str(status): 1})
    if status == 200:
        return Counter({"202": items})
    if status == 207:
        results = msgspec.json.decode(payload)["results"]
        return Counter(str(result["status"]) for result in results)
    return Counter({f"request {status}": items})


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes, bool]:
    """One keep-alive HTTP/1.1 POST: (status, body, whether the server closes the connection)."""
    writer.write(head % len(body) + body)
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header[9:12])
    length = re.search(rb"(?im)^content-length:\s*(\d+)", header)
    if length is None:
        raise RuntimeError(f"an answer without Content-Length: {header[:300]!r}")
    payload = await reader.readexactly(int(length.group(1)))
    return status, payload, re.search(rb"(?im)^connection:\s*close", header) is not None


async def _post_all(port: int, path: str, bodies: list[bytes], concurrency: int, items: int) -> Counter[str]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n"
    ).encode()
    pending = iter(bodies)
    counts: Counter[str] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        try:
            for body in pending:
                status, payload, close = await _exchange(reader, writer, head, body)
                counts.update(outcomes(status, payload, items and body.count(b'"transaction_id"')))
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**22)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(max(1, min(concurrency, len(bodies))))))
    return counts


def post_all(port: int, mode: str, bodies: list[bytes], connections: int, bulk: int = BULK_SIZE) -> Counter[str]:
    """Every transaction of `bodies` POSTed over `connections`, singly or in bulk requests of `bulk`; their
    outcomes."""
    if mode == "single":
        return asyncio.run(_post_all(port, "/api/v1/transactions/", bodies, connections, 0))
    return asyncio.run(_post_all(port, "/api/v1/transactions/bulk", bulk_bodies(bodies, bulk), connections, 1))
