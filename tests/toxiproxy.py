"""Network faults through Toxiproxy's HTTP API (urllib only), for tests.

`deploy/toxiproxy.sh start` (or `start()` here) runs the server on 127.0.0.1:STACK_TOXIPROXY_PORT with
two proxies: `redis` at REDIS_PROXY in front of the local Redis, and `kafka` at KAFKA_PROXY in front of
the broker's FAULTS listener, which advertises the proxy, so a Kafka client bootstrapped at KAFKA_PROXY
stays behind it. Point a client (or a gateway: GATEWAY_REDIS_URL=redis://{REDIS_PROXY}/0,
GATEWAY_KAFKA_BOOTSTRAP={KAFKA_PROXY}) at them, then break the network:

    proxy = Toxiproxy()
    proxy.add_toxic("kafka", "reset_peer", {"timeout": 0})   # every connection reset
    proxy.disable("redis")                                    # connections refused, open ones closed
    proxy.reset()                                             # everything enabled, no toxic left

Toxic types and their attributes: https://github.com/Shopify/toxiproxy#toxics (latency, bandwidth,
slow_close, timeout, reset_peer, slicer, limit_data)."""

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

API_URL = f"http://127.0.0.1:{os.environ.get('STACK_TOXIPROXY_PORT', '18474')}"
REDIS_PROXY = f"127.0.0.1:{os.environ.get('STACK_REDIS_PROXY_PORT', '16380')}"
KAFKA_PROXY = f"127.0.0.1:{os.environ.get('STACK_KAFKA_PROXY_PORT', '19095')}"
PIDFILE = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "toxiproxy" / "toxiproxy.pid"


class ToxiproxyError(RuntimeError):
    """The API refused a call; the message carries its status and answer."""


class Toxiproxy:
    """One toxiproxy server's API."""

    def __init__(self, url: str = API_URL, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from exc
        return json.loads(answer) if answer else None

    def version(self) -> str:
        """The server's version; raises OSError when it does not answer."""
        with urllib.request.urlopen(self.url + "/version", timeout=self.timeout) as response:
            return response.read().decode()

    def proxies(self) -> dict[str, dict]:
        """Every proxy by name, with `listen`, `upstream`, `enabled` and `toxics`."""
        return self._call("GET", "/proxies")

    def add_toxic(
        self,
        proxy: str,
        type: str,
        attributes: dict[str, Any] | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        """Add a toxic to `proxy` and return its name (default `<type>_<stream>`).

        `stream` is the direction it acts on: `downstream` (server to client) or `upstream`; `toxicity`
        the share of connections it applies to. Open connections are affected as well as new ones."""
        name = name or f"{type}_{stream}"
        toxic = {"name": name, "type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes or {}}
        self._call("POST", f"/proxies/{proxy}/toxics", toxic)
        return name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    @contextmanager
    def toxic(
        self, proxy: str, type: str, attributes: dict[str, Any] | None = None, stream: str = "downstream"
    ) -> Iterator[str]:
        """A toxic for the duration of a `with` block."""
        name = self.add_toxic(proxy, type, attributes, stream)
        try:
            yield name
        finally:
            self.remove_toxic(proxy, name)

    def disable(self, proxy: str) -> None:
        """Close the proxy's open connections and refuse new ones, as a dead host would."""
        self._call("PATCH", f"/proxies/{proxy}", {"enabled": False})

    def enable(self, proxy: str) -> None:
        self._call("PATCH", f"/proxies/{proxy}", {"enabled": True})

    def reset(self, timeout: float = 15.0) -> bool:
        """Enable every proxy and remove every toxic; True when that took a restart of the server.

        Removing a toxic can deadlock the server when a proxied connection closes meanwhile: the link's
        writer waits for the lock the removal holds, the removal waits for the toxic that feeds that writer
        (Shopify/toxiproxy#412, #558; seen here removing Kafka latency under load). A reset unanswered in
        `timeout` seconds therefore restarts the server (deploy/toxiproxy.sh restart), which drops every
        proxied connection and recreates the proxies without toxics."""
        try:
            Toxiproxy(self.url, timeout)._call("POST", "/reset")
        except TimeoutError:
            restart()
            return True
        return False


def _script(command: str) -> Toxiproxy:
    done = subprocess.run([str(ROOT / "deploy" / "toxiproxy.sh"), command], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ToxiproxyError(f"deploy/toxiproxy.sh {command} failed: {done.stderr.strip()}")
    return Toxiproxy()


def start() -> Toxiproxy:
    """Start toxiproxy with its proxies (deploy/toxiproxy.sh start; a no-op when running) and return its API."""
    return _script("start")


def restart() -> Toxiproxy:
    """Kill the server (a hung one too) and start it again with its proxies, no toxics, and return its API."""
    return _script("restart")
