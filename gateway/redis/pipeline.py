"""One Redis connection per worker, shared by every request, pipelined by the event loop.

Commands issued during one event-loop tick are written with a single send, and the replies are
matched to their callers in order (Redis answers each connection in the order it reads). N
concurrent requests then cost one write and one read instead of N, and a command costs a few
microseconds of Python instead of a connection-pool checkout, a lock and a stream writer.

Failures are loud and bounded: a connection that drops, or a reply that is late by more than the
timeout, fails every waiting command with RedisUnavailable and closes the connection; the next
command reconnects. Nothing is retried here, because a command that was sent may have run: the
caller decides. A script's first run on a connection sends its source (EVAL, which also loads it), later
runs its SHA-1 (EVALSHA): an EVALSHA that missed would be sent again after the commands behind it had
run, and a completion overtaken by its replay's claim makes the replay a 409. A NOSCRIPT answer all the
same (SCRIPT FLUSH on a live connection) is answered by sending the source, so no caller ever sees it;
commands sent meanwhile may then run first, which at worst answers a retry 409 in flight.
"""

import asyncio
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from gateway.redis.errors import RedisUnavailable, ReplyError
from gateway.redis.memory import Memory

Arg = bytes | str | int


class Script:
    """A Lua script: its source and SHA-1, which EVALSHA names it by."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Link(asyncio.Protocol):
    """The socket: feeds every byte read to the reader and hands each whole reply to the pipeline."""

    def __init__(
        self, on_reply: Callable[[Any], None], on_lost: Callable[[asyncio.BaseTransport, Exception | None], None]
    ) -> None:
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        gets, on_reply = self._reader.gets, self._on_reply
        while (reply := gets()) is not False:
            on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._transport is not None
        self._on_lost(self._transport, exc)


class RedisPipeline:
    """A pipelined client for the few commands the gateway sends: scripts and PING."""

    def __init__(self, url: str, timeout: float) -> None:
        params = parse_url(url)
        self._path: str | None = params.get("path")
        self._host: str = params.get("host", "localhost")
        self._port: int = int(params.get("port", 6379))
        self._ssl = ssl.create_default_context() if params.get("connection_class") is SSLConnection else None
        if params.get("connection_class") is UnixDomainSocketConnection and not self._path:
            raise ValueError("a unix:// Redis URL needs a socket path")
        self._handshake: list[tuple[Arg, ...]] = []
        if params.get("password"):
            auth = (params["username"], params["password"]) if params.get("username") else (params["password"],)
            self._handshake.append(("AUTH", *auth))
        if int(params.get("db", 0)):
            self._handshake.append(("SELECT", int(params["db"])))
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._outbox: list[bytes] = []
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loaded: set[str] = set()  # SHA-1s of the scripts this connection has sent the source of

    # -- connection ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(self) -> None:
        """Open the connection (shared by concurrent callers); RedisUnavailable when it cannot be made."""
        if self._transport is not None:
            return
        if self._connecting is None:
            self._loop = asyncio.get_running_loop()
            self._connecting = self._loop.create_future()
            connecting = self._connecting
            try:
                await self._open()
            except BaseException as exc:
                connecting.set_exception(exc if isinstance(exc, RedisUnavailable) else RedisUnavailable(repr(exc)))
                connecting.exception()  # retrieved: the callers waiting on it get their own copy
                raise
            else:
                connecting.set_result(None)
            finally:
                self._connecting = None
            return
        await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        assert self._loop is not None
        try:
            async with asyncio.timeout(self._timeout):
                if self._path:
                    transport, _ = await self._loop.create_unix_connection(
                        lambda: _Link(self._reply, self._lost), self._path
                    )
                else:
                    transport, _ = await self._loop.create_connection(
                        lambda: _Link(self._reply, self._lost), self._host, self._port, ssl=self._ssl
                    )
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect: {exc or type(exc).__name__}") from None
        self._transport = transport
        self._loaded = set()  # a new connection may be to a new (or restarted, or promoted) server
        for command in self._handshake:
            try:
                await asyncio.wait_for(self.send(*command), self._timeout)
            except (ReplyError, TimeoutError) as exc:
                self.close()
                raise RedisUnavailable(f"handshake {command[0]!r} failed: {exc}") from None

    def close(self) -> None:
        """Close the connection; waiting commands fail with RedisUnavailable."""
        self._drop(RedisUnavailable("connection closed"))

    def _lost(self, transport: asyncio.BaseTransport, exc: Exception | None) -> None:
        if transport is self._transport:  # not a connection that was dropped already
            self._drop(RedisUnavailable(f"connection lost: {exc}" if exc else "connection closed by Redis"))

    def _drop(self, error: RedisUnavailable) -> None:
        """Forget the connection and fail every command sent on it (their replies can no longer come)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._outbox.clear()
        waiters, self._waiters = self._waiters, deque()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- commands --------------------------------------------------------------------------------

    def send(self, *args: Arg) -> "asyncio.Future[Any]":
        """Queue one command for this tick's write; the future resolves to its reply.

        Raises RedisUnavailable at once when there is no connection (await `connect()` first)."""
        if self._transport is None:
            raise RedisUnavailable("not connected")
        assert self._loop is not None
        future = self._loop.create_future()
        self._outbox.append(hiredis.pack_command(args))  # type: ignore[arg-type]
        self._waiters.append((future, time.monotonic()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout / 2, self._watch)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox and self._transport is not None:
            self._transport.write(b"".join(self._outbox))
            self._outbox.clear()

    def _reply(self, reply: Any) -> None:
        future, _ = self._waiters.popleft()  # Redis never answers what it was not asked
        if future.done():  # its caller was cancelled
            return
        if isinstance(reply, ReplyError):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _watch(self) -> None:
        """Every half timeout while commands wait: give up on the connection if the oldest is late."""
        self._watchdog = None
        if not self._waiters:
            return
        assert self._loop is not None
        if time.monotonic() - self._waiters[0][1] > self._timeout:
            self._drop(RedisUnavailable(f"no reply within {self._timeout:g} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout / 2, self._watch)

    async def execute(self, *args: Arg) -> Any:
        """Connect when needed, send one command, await its reply."""
        if self._transport is None:
            await self.connect()
        return await self.send(*args)

    def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> "asyncio.Future[Any]":
        """EVAL `script` on its first run on this connection, EVALSHA later, falling back to EVAL once on
        NOSCRIPT; a future of its reply. Needs a connection (see `send`)."""
        assert self._loop is not None
        if script.sha not in self._loaded:
            sent = self.send("EVAL", script.source, len(keys), *keys, *args)
            self._loaded.add(script.sha)  # Redis runs this connection's commands in order: loaded before any later
            return sent
        result = self._loop.create_future()

        def settle(attempt: "asyncio.Future[Any]", fallback: bool) -> None:
            if result.done():
                return
            error = attempt.exception()
            if error is None:
                result.set_result(attempt.result())
            elif fallback and isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT"):
                try:
                    retry = self.send("EVAL", script.source, len(keys), *keys, *args)
                except RedisUnavailable as exc:
                    result.set_exception(exc)
                else:
                    retry.add_done_callback(lambda f: settle(f, False))
            else:
                result.set_exception(error)

        self.send("EVALSHA", script.sha, len(keys), *keys, *args).add_done_callback(lambda f: settle(f, True))
        return result

    async def memory(self) -> Memory:
        """How full Redis is (INFO memory), the readiness probe; RedisUnavailable or ReplyError when Redis
        cannot answer."""
        return Memory.parse(await self.execute("INFO", "memory"))
