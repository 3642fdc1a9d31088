"""The gateway's pipelined Redis connection against the real Redis: order, coalescing, failures."""

import asyncio
import shutil
import subprocess

import pytest
from redis.asyncio import Redis

from gateway.redis.errors import RedisUnavailable, ReplyError
from gateway.redis.pipeline import RedisPipeline, Script


@pytest.fixture
async def pipeline(stack):
    client = RedisPipeline(stack.redis_url, 1.0)
    await client.connect()
    yield client
    client.close()


async def test_concurrent_commands_each_get_their_own_reply(pipeline, unique):
    replies = await asyncio.gather(*(pipeline.execute("ECHO", f"{unique}-{n}") for n in range(2000)))
    assert replies == [f"{unique}-{n}".encode() for n in range(2000)]


async def test_commands_of_one_tick_are_written_once(pipeline, unique):
    writes = []
    transport = pipeline._transport
    original = transport.write
    transport.write = lambda data: (writes.append(data), original(data))[1]
    try:
        replies = await asyncio.gather(*(pipeline.execute("INCR", f"count-{unique}") for _ in range(100)))
    finally:
        transport.write = original
    assert sorted(replies) == list(range(1, 101))
    assert len(writes) == 1


async def test_error_replies_fail_only_their_command(pipeline, unique):
    good, bad, after = await asyncio.gather(
        pipeline.execute("SET", f"k-{unique}", "v"),
        pipeline.execute("INCR", f"k-{unique}"),  # not an integer
        pipeline.execute("GET", f"k-{unique}"),
        return_exceptions=True,
    )
    assert good == b"OK" and after == b"v"
    assert isinstance(bad, ReplyError) and "not an integer" in str(bad)


async def test_script_is_reloaded_after_script_flush(pipeline, stack, unique):
    script = Script(f"return 'hello {unique}'")
    observer = Redis.from_url(stack.redis_url)
    try:
        assert await pipeline.run_script(script, [], []) == f"hello {unique}".encode()  # the source: loaded
        await observer.script_flush()
        assert await pipeline.run_script(script, [], []) == f"hello {unique}".encode()  # EVALSHA missed, EVAL ran
        assert await observer.script_exists(script.sha) == [True]
        assert await pipeline.run_script(script, [], []) == f"hello {unique}".encode()
    finally:
        await observer.aclose()


async def test_a_script_new_to_the_connection_runs_before_what_is_sent_after_it(pipeline, unique):
    """A completion's script on its first run, then a replay's claim by a script already loaded, sent at
    once: the claim must see the completion (an EVALSHA that missed would run after it)."""
    key = f"order-{unique}"
    read = Script("return redis.call('GET', KEYS[1])")
    assert await pipeline.run_script(read, [key], []) is None  # loaded on this connection
    write = Script(f"-- new to this Redis: {unique}\nreturn redis.call('SET', KEYS[1], 'done')")
    written, seen = await asyncio.gather(pipeline.run_script(write, [key], []), pipeline.run_script(read, [key], []))
    assert written == b"OK" and seen == b"done"


async def test_selects_the_database_of_the_url(stack, unique):
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    client = RedisPipeline(url, 1.0)
    observer = Redis.from_url(url)
    try:
        await client.execute("SET", f"db5-{unique}", "here")
        assert await observer.get(f"db5-{unique}") == b"here"
    finally:
        client.close()
        await observer.aclose()


async def test_a_late_reply_fails_the_waiters_and_the_next_command_reconnects(stack, unique):
    client = RedisPipeline(stack.redis_url, 0.3)
    try:
        blocked = asyncio.ensure_future(client.execute("BLPOP", f"never-{unique}", 5))
        queued = asyncio.ensure_future(client.execute("PING"))
        with pytest.raises(RedisUnavailable, match="no reply within"):
            await blocked
        with pytest.raises(RedisUnavailable):
            await queued
        assert await client.execute("PING") == b"PONG"
    finally:
        client.close()


async def test_redis_down_is_unavailable_and_recovery_is_automatic(tmp_path, unique):
    port = 27_000 + int(unique[:4], 16) % 2000
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    assert shutil.which("redis-server")

    async def start() -> subprocess.Popen:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return server
            await asyncio.sleep(0.1)
        raise AssertionError("redis-server did not start")

    client = RedisPipeline(f"redis://127.0.0.1:{port}/0", 1.0)
    with pytest.raises(RedisUnavailable, match="cannot connect"):
        await client.execute("PING")
    server = await start()
    try:
        assert await client.execute("PING") == b"PONG"
        server.terminate()
        server.wait(10)
        with pytest.raises(RedisUnavailable):
            await client.execute("PING")
        server = await start()
        assert await client.execute("PING") == b"PONG"
    finally:
        client.close()
        server.kill()
        server.wait(10)
