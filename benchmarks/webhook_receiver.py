"""A webhook receiver for the bench (benchmarks/webhooks.py): answers every POST 204 over keep-alive
connections and writes `<webhook-id> <arrival, Unix seconds>` a line each to a file, flushed every
0.1 s. It does not verify signatures (tests/e2e/test_webhooks.py does): the bench measures the sender.

    python -m benchmarks.webhook_receiver PORT FILE
"""

import asyncio
import contextlib
import signal
import sys
import time

ANSWER = b"HTTP/1.1 204 No Content\r\n\r\n"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lines: list[str]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length, event_id = 0, "-"
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    event_id = value.strip().decode()
            await reader.readexactly(length)
            lines.append(f"{event_id} {time.time():.6f}\n")
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):  # closed, or stopping
        pass
    finally:
        writer.close()


async def main(port: int, path: str) -> None:
    lines: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(lambda r, w: _serve(r, w, lines), "127.0.0.1", port)
    with open(path, "a") as out:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
            out.write("".join(lines))
            out.flush()
            lines.clear()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
