"""The Redis clients A/B's contenders (benchmarks/redis_clients.py): the deployment a URL names, and
each client opened as a gateway worker would use it, with RESERVE as one call on it."""

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from gateway.idempotency.single_node import RESERVE
from gateway.redis.cluster import RedisCluster
from gateway.redis.pipeline import RedisPipeline

CLIENTS = ("pipeline", "redis-py", "coredis", "valkey-glide")
TIMEOUT = 1.0  # seconds: the gateway's GATEWAY_REDIS_TIMEOUT_MS

Call = Callable[[list[str], list[Any]], Awaitable[Any]]


class Unavailable(Exception):
    """A client that cannot run on this topology here; the message says why."""


@dataclass
class Target:
    """A Redis deployment: its topology, the URL as given, and what the URL says."""

    topology: str
    url: str
    addresses: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_target(topology: str, url: str) -> Target:
    """`redis://[user:password@]host:port[,host:port...][/db]`: a seed list for a cluster."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "redis":
        raise SystemExit(f"{url}: only redis:// URLs are measured here")
    netloc, _, path = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    username = password = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username, password = (unquote(user) or None, unquote(secret)) if has_password else (None, unquote(user))
    addresses = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        addresses.append((host or address, int(port) if host else 6379))
    db = int(path.split("?")[0] or 0)
    return Target(topology, url, addresses, db, username, password)


@dataclass
class Opened:
    """A connected client: how to run RESERVE on it and how to close it."""

    call: Call
    close: Callable[[], Awaitable[None]]


async def _closing(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


async def open_pipeline(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    single = target.topology == "single"
    client = RedisPipeline(target.url, TIMEOUT) if single else RedisCluster(target.url, TIMEOUT)
    await client.connect()
    run_script = client.run_script

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return run_script(RESERVE, keys, args)

    return Opened(call, lambda: _closing(client.close()))


async def open_redis_py(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.utils import HIREDIS_AVAILABLE

    if not HIREDIS_AVAILABLE:
        raise Unavailable("hiredis is not installed: redis-py would parse in pure Python")
    connections = max(100, concurrency)  # one connection per call in flight: the pool never runs out
    options: dict[str, Any] = {"username": target.username, "password": target.password}
    options |= {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, "max_connections": connections}
    client: Any
    if target.topology == "single":
        host, port = target.addresses[0]
        client = Redis(host=host, port=port, db=target.db, **options)
    else:
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.addresses], **options)
        await client.initialize()
    script = client.register_script(RESERVE.source)

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return script(keys=keys, args=args)

    return Opened(call, client.aclose)


async def open_coredis(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    import coredis

    options: dict[str, Any] = {"username": target.username, "password": target.password}
    options |= {"stream_timeout": TIMEOUT, "connect_timeout": TIMEOUT}
    client: Any
    if target.topology == "single":
        host, port = target.addresses[0]
        client = coredis.Redis(host, port, target.db, **options)
    else:
        client = coredis.RedisCluster(startup_nodes=[{"host": h, "port": p} for h, p in target.addresses], **options)
    await stack.enter_async_context(client)  # coredis 6: a client lives inside `async with`
    script = client.register_script(RESERVE.source)

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return script(keys=keys, args=args)

    async def close() -> None:  # the exit stack closes it, in the task that opened it
        return None

    return Opened(call, close)


async def open_glide(target: Target, concurrency: int, stack: contextlib.AsyncExitStack) -> Opened:
    from glide import (
        GlideClient,
        GlideClientConfiguration,
        GlideClusterClient,
        GlideClusterClientConfiguration,
        Logger,
        LogLevel,
        NodeAddress,
        Script,
        ServerCredentials,
    )

    Logger.set_logger_config(LogLevel.ERROR)  # not a warning per node on the first NOSCRIPT
    addresses = [NodeAddress(h, p) for h, p in target.addresses]
    credentials = ServerCredentials(target.password, target.username) if target.password else None
    timeout_ms = int(TIMEOUT * 1000)
    client: Any
    if target.topology == "single":
        config = GlideClientConfiguration(
            addresses, credentials=credentials, request_timeout=timeout_ms, database_id=target.db
        )
        client = await GlideClient.create(config)
    else:
        cluster_config = GlideClusterClientConfiguration(addresses, credentials=credentials, request_timeout=timeout_ms)
        client = await GlideClusterClient.create(cluster_config)
    script = Script(RESERVE.source)
    invoke = client.invoke_script

    def call(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return invoke(script, keys=keys, args=args)

    return Opened(call, client.close)


async def close_quietly(client: Opened) -> None:
    """Close a client; a failure to close is not the measurement's concern."""
    with contextlib.suppress(Exception):
        await client.close()


OPENERS = {"pipeline": open_pipeline, "redis-py": open_redis_py, "coredis": open_coredis, "valkey-glide": open_glide}
