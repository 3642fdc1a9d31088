"""The status API's read path against the real PostgreSQL: its maintained pool (settlement/ledger/read_model.py)
answers from the processor's tables, replaces connections PostgreSQL broke, and makes an unreachable
database a 503 with Retry-After, never a 500 or a false 404."""

import time

import msgspec
import psycopg
from litestar.testing import AsyncTestClient

from gateway.api.app import create_app
from tests.integration.settlement import accepted, fold_until, produce
from tests.integration.test_intake import assert_problem

URL = "/api/v1/transactions/"


async def test_an_unreachable_database_makes_the_status_get_503_with_retry_after(stack):
    settings = msgspec.structs.replace(
        stack, database_url="postgresql://settlement@127.0.0.1:1/settlement", ready_timeout_ms=300
    )
    async with AsyncTestClient(create_app(settings)) as client:
        for ask in range(3):  # the first and later asks alike
            started = time.monotonic()
            response = await client.get(f"{URL}txn_nowhere")
            assert_problem(response, 503, "dependency-unavailable")
            assert response.headers["retry-after"] == str(stack.retry_after_seconds)
            if ask:  # known down: answered at once, not after the pool's full wait (0.6 s here)
                assert time.monotonic() - started < 0.4


async def test_the_pool_replaces_connections_postgresql_ended(setup):
    event = accepted(setup.gateway.partner, 1)
    with setup.processor(lambda: 1_795_000_000.0) as processor:
        produce(setup, [event])
        fold_until(processor, lambda: setup.sql("SELECT count(*) FROM transactions") == [(1,)], "folded")
    url = f"{URL}{event.transaction.transaction_id}"
    async with AsyncTestClient(create_app(setup.gateway)) as client:
        assert (await client.get(url)).status_code == 200
        with psycopg.connect(setup.database, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'gateway-ledger' AND query LIKE %s",
                ("%FROM transactions WHERE partner = $1 AND transaction_id = $2",),
            ).fetchone()
        assert ended and ended[0] >= 1
        # a broken connection fails its next query once (a 503), then the pool has made another
        statuses = [(await client.get(url)).status_code for _ in range(12)]
        assert set(statuses) <= {200, 503} and statuses[-4:] == [200] * 4, statuses
