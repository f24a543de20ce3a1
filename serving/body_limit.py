"""A cap on request bodies for every route: ``413`` before a body is read into memory.

No endpoint accepts more than a full intake batch (``POST /v1/events``), so anything
larger is refused by size alone — by ``Content-Length`` at once, and for chunked bodies as
soon as the running total passes the cap — instead of being buffered first (hostile input,
docs/reliability.md). Installed by :func:`bouquet.serving.routes_ops.configure`.
"""

from __future__ import annotations

from typing import Any

from bouquet.core.settings import Settings


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with ``413`` before reading them: by
    ``Content-Length`` at once, and for chunked bodies as soon as the running total passes
    the limit (the body is then replayed to the application). Plain ASGI: a few µs."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Any, status: int, detail: str) -> None:
        body = ('{"detail":"' + detail + '"}').encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
                await self._refuse(send, 400, "invalid Content-Length")
                return
            if size > self.limit:
                await self._refuse(send, 413, f"request body larger than {self.limit} bytes")
                return
            await self.app(scope, receive, send)
            return
        if chunked is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(send, 413, f"request body larger than {self.limit} bytes")
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

        await self.app(scope, replay, send)


def body_limit(settings: Settings) -> int:
    """The largest body any endpoint accepts: a full intake batch, plus room for the intake's
    own, more precise 413 message."""
    return settings.serving_max_batch * settings.max_event_bytes + 64 * 1024
