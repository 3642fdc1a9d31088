"""The ceiling: a bare ASGI app under Granian that answers every request with a fixed 202.

    granian --interface asgi --workers 2 benchmarks.peers.bare_granian:app

No framework, no validation, no Redis, no Kafka: no Python service on this machine can be faster.
"""

BODY = b'{"status":"submitted","message":"Transaction queued for processing"}'
START = {
    "type": "http.response.start",
    "status": 202,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
FINISH = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:  # drain the request body
        more = (await receive()).get("more_body", False)
    await send(START)
    await send(FINISH)
