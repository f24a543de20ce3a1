"""Request bodies capped before they are read: ``413`` by ``Content-Length`` at once, and for
chunked bodies as soon as the running total passes the cap — never after buffering them.

Used by :class:`bouquet.serving.admission.Admission` (the cap depends on the route) once the
request is authenticated. Plain ASGI: a few µs.
"""

from __future__ import annotations

import json
from typing import Any


async def refuse(send: Any, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``status`` with a JSON ``{"detail": …}`` body (the request body unread)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def forward_limited(app: Any, scope: dict[str, Any], receive: Any, send: Any,
                          limit: int) -> None:
    """Call ``app`` unless the request body is larger than ``limit`` bytes (413)."""
    length = chunked = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = value
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            await refuse(send, 400, "invalid Content-Length")
            return
        if size > limit:
            await refuse(send, 413, f"request body larger than {limit} bytes")
            return
        await app(scope, receive, send)
        return
    if chunked is None:
        await app(scope, receive, send)
        return
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        body += message.get("body", b"")
        if len(body) > limit:
            await refuse(send, 413, f"request body larger than {limit} bytes")
            return
        if not message.get("more_body", False):
            break
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    await app(scope, replay, send)
