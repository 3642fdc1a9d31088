"""Redis Cluster on the gateway's pipelined connections: one `RedisPipeline` per master, slot routing,
redirects and failover.

A command goes to the master that owns its first key's hash slot, on that master's pipelined
connection, so concurrent requests still cost one write per node and tick. The slot map comes from
`CLUSTER SLOTS`, asked of the seeds (GATEWAY_REDIS_URL lists them) and of every node already known.

- `MOVED slot host:port`: the slot has a new owner (a resharding, a replica promoted). The command did
  not run; the map is corrected at once, sent on to the new owner and refreshed from the cluster.
- `ASK slot host:port`: the slot is migrating and this key is already on the target. The command did
  not run; it goes to the target once, after `ASKING`, as EVAL (the target may not have the script).
- A master that dies fails the commands waiting on it with RedisUnavailable (they may have run, so
  nothing is retried here: the caller decides, as on one node) and every later command for its slots
  fails the same way, at once, while the slot map is refreshed in the background. Once the cluster has
  promoted a replica (cluster-node-timeout plus an election), the refreshed map routes to it and
  requests succeed again with no restart. `CLUSTERDOWN` and `TRYAGAIN` answers refresh the map too.
"""

import asyncio
import contextlib
import time
from binascii import crc_hqx
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from gateway.redis.errors import RedisUnavailable, ReplyError
from gateway.redis.memory import Memory
from gateway.redis.pipeline import Arg, RedisPipeline, Script

SLOTS = 16384
MAX_REDIRECTS = 5
REFRESH_INTERVAL = 0.2  # seconds: at most one slot map refresh per interval, however many errors ask
Address = tuple[str, int]


def key_slot(key: Arg) -> int:
    """The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the first `{...}` with something in
    it) or of the whole key, modulo 16384."""
    data = key if isinstance(key, bytes) else str(key).encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc_hqx(data, 0) & (SLOTS - 1)


def seeds_of(url: str) -> tuple[str, list[Address]]:
    """The URL of one node without its address (to be filled per node) and the seed addresses of a
    cluster URL: `redis://[user:password@]host:port,host:port[/0]`."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis Cluster URL is redis:// or rediss://")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds: list[Address] = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"a Redis Cluster seed must be host:port, not {host!r}")
        seeds.append((name.strip("[]"), int(port)))
    return f"{parts.scheme}://{userinfo + '@' if userinfo else ''}", seeds


def is_cluster_url(url: str) -> bool:
    """Whether GATEWAY_REDIS_URL names a cluster: more than one seed address."""
    return url.startswith(("redis://", "rediss://")) and "," in urlsplit(url).netloc


Send = Callable[[RedisPipeline], "asyncio.Future[Any]"]


class RedisCluster:
    """`RedisPipeline`'s interface (connect, run_script, execute, ping, close) over a Redis Cluster."""

    def __init__(self, url: str, timeout: float) -> None:
        self._prefix, self._seeds = seeds_of(url)
        self._timeout = timeout
        self._nodes: dict[Address, RedisPipeline] = {}
        self._owners: list[Address] = []  # slot -> master; empty until the first refresh
        self.masters: list[Address] = []  # the masters of the slot map as last refreshed, in slot order
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the slot map ----------------------------------------------------------------------------

    def _node(self, address: Address) -> RedisPipeline:
        node = self._nodes.get(address)
        if node is None:
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            node = self._nodes[address] = RedisPipeline(f"{self._prefix}{host}:{address[1]}", self._timeout)
        return node

    async def connect(self) -> None:
        """Have a slot map (the first call asks the seeds); RedisUnavailable when no node answers.
        Connections to the masters are opened by the first command each one gets."""
        if not self._owners:
            await self.refresh()

    async def refresh(self) -> None:
        """Ask the seeds, then every known node, for `CLUSTER SLOTS` until one answers with a full map."""
        self._loop = asyncio.get_running_loop()
        self._refreshed_at = time.monotonic()
        errors = []
        for address in dict.fromkeys([*self._seeds, *self._nodes]):
            try:
                reply = await asyncio.wait_for(self._node(address).execute("CLUSTER", "SLOTS"), self._timeout)
            except (RedisUnavailable, ReplyError, TimeoutError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc or type(exc).__name__}")
                continue
            owners = _slot_map(reply, address)
            if owners is not None:
                self._owners, self.masters = owners, list(dict.fromkeys(owners))
                return
            errors.append(f"{address[0]}:{address[1]}: not every slot is served")
        raise RedisUnavailable("no slot map from the cluster (" + "; ".join(errors) + ")")

    def _refresh_soon(self) -> None:
        """Refresh the map in the background, at most once per REFRESH_INTERVAL."""
        if self._loop is None or (self._refreshing is not None and not self._refreshing.done()):
            return
        delay = max(0.0, self._refreshed_at + REFRESH_INTERVAL - time.monotonic())

        async def later() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(RedisUnavailable):  # the next error asks again
                await self.refresh()

        self._refreshing = self._loop.create_task(later())

    # -- commands --------------------------------------------------------------------------------

    def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> "asyncio.Future[Any]":
        """The script on the master of its keys' slot (all of them must share it); see RedisPipeline."""
        return self._route(
            keys[0],
            lambda node: node.run_script(script, keys, args),
            lambda node: node.send("EVAL", script.source, len(keys), *keys, *args),
        )

    async def execute(self, *args: Arg) -> Any:
        """One command on the master of its first key (args[1]); a keyless command on any master."""
        await self.connect()
        if len(args) > 1:
            return await self._route(args[1], lambda node: node.send(*args), lambda node: node.send(*args))
        return await self._node(self._owners[0]).execute(*args)

    async def memory(self) -> Memory:
        """How full the fullest master is (INFO memory, every master at once: each holds its own share of
        the keys); RedisUnavailable when one of them (and so a share of the keys) cannot answer."""
        await self.connect()
        masters = self.masters
        replies = await asyncio.gather(*(self._node(m).memory() for m in masters), return_exceptions=True)
        if failed := [f"{m[0]}:{m[1]}: {r}" for m, r in zip(masters, replies, strict=True) if isinstance(r, Exception)]:
            self._refresh_soon()
            raise RedisUnavailable("master down: " + "; ".join(failed))
        return max(
            (r for r in replies if isinstance(r, Memory)),
            key=lambda m: (m.limit == 0, m.policy != "noeviction", m.used_ratio),
        )

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in self._nodes.values():
            node.close()

    def _route(self, key: Arg, send: Send, asking: Send) -> "asyncio.Future[Any]":
        """Send to the owner of `key`'s slot, following MOVED and ASK; a future of the reply.

        Raises RedisUnavailable at once when there is no slot map yet (await `connect()` first)."""
        if not self._owners or self._loop is None:
            raise RedisUnavailable("no slot map yet")
        result: asyncio.Future[Any] = self._loop.create_future()
        self._dispatch(result, self._owners[key_slot(key)], send, asking, 0)
        return result

    def _dispatch(
        self, result: "asyncio.Future[Any]", address: Address, send: Send, asking: Send, hops: int, ask: bool = False
    ) -> None:
        """Send to `address` (after ASKING, in the same write, when `ask`), or connect to it first."""
        node = self._node(address)
        if not node.connected:
            assert self._loop is not None
            self._loop.create_task(self._connect_then(result, address, send, asking, hops, ask))
            return
        try:
            if ask:
                node.send("ASKING").add_done_callback(_ignored)
                attempt = asking(node)
            else:
                attempt = send(node)
        except RedisUnavailable as exc:
            self._failed(result, exc)
            return
        attempt.add_done_callback(lambda done: self._settle(result, done, send, asking, hops))

    async def _connect_then(
        self, result: "asyncio.Future[Any]", address: Address, send: Send, asking: Send, hops: int, ask: bool
    ) -> None:
        try:
            await self._node(address).connect()
        except RedisUnavailable as exc:
            self._failed(result, exc)
            return
        self._dispatch(result, address, send, asking, hops, ask)

    def _failed(self, result: "asyncio.Future[Any]", error: BaseException) -> None:
        self._refresh_soon()
        if not result.done():
            result.set_exception(error)

    def _settle(
        self, result: "asyncio.Future[Any]", attempt: "asyncio.Future[Any]", send: Send, asking: Send, hops: int
    ) -> None:
        if result.done():
            return
        error = attempt.exception()
        if error is None:
            result.set_result(attempt.result())
            return
        if isinstance(error, ReplyError):
            kind, _, rest = str(error).partition(" ")
            if kind in ("MOVED", "ASK") and hops < MAX_REDIRECTS:
                slot, _, where = rest.partition(" ")
                host, _, port = where.rpartition(":")
                address = (host or self._owners[int(slot)][0], int(port))
                if kind == "MOVED":
                    self._owners[int(slot)] = address
                    self._refresh_soon()
                self._dispatch(result, address, send, asking, hops + 1, kind == "ASK")
                return
            if kind in ("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK"):
                self._refresh_soon()
            result.set_exception(error)
            return
        self._failed(result, error)


def _ignored(future: "asyncio.Future[Any]") -> None:
    future.exception()  # retrieved: ASKING's own failure shows up on the command that follows it


def _slot_map(reply: list[Any], answered_by: Address) -> list[Address] | None:
    """slot -> master from a `CLUSTER SLOTS` reply; None when some slot has no master. An empty host
    means the node that answered (as Redis reports a node that does not know its own address)."""
    owners: list[Address | None] = [None] * SLOTS
    for start, end, master, *_replicas in reply:
        host = master[0].decode() if master[0] else answered_by[0]
        owners[start : end + 1] = [(host, int(master[1]))] * (end - start + 1)
    if any(owner is None for owner in owners):
        return None
    return owners  # type: ignore[return-value]


Client = RedisPipeline | RedisCluster  # what a store runs on: one node's connection, or a cluster's
