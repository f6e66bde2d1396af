"""Ceiling: a bare ASGI app that answers every request with one fixed JSON body.

It reads the request body (as any server must) and does nothing else: the HTTP limit of
Python with uvicorn on this machine.
"""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

BODY = (
    b'{"id":"r0","label":"setosa","probability":0.97,"probabilities":'
    b'{"setosa":0.97,"versicolor":0.03,"virginica":0.0},"model_version":"fixed"}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Drain the request, send the fixed answer."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
