"""`RepositoryTraffic`: counts ``/v1/repository`` responses by status and the bytes sent.

A pure ASGI middleware, outermost, so it sees every answer: the route's, a 401 from the
device check, a 404, the guard's 413 or 500. It only watches the ``send`` messages; a
request elsewhere passes through untouched. Bytes are the response bodies as handed to
the server (a client that disconnects mid-artifact is counted for what was sent so far).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.fleet.observability.metrics import RepositoryMetrics

PREFIX = "/v1/repository/"
KINDS = {"metadata": "metadata", "targets": "target"}


def kind_of(path: str) -> str | None:
    """``metadata``, ``target`` or ``other`` for a repository path, None elsewhere."""
    if not path.startswith(PREFIX):
        return None
    return KINDS.get(path[len(PREFIX) :].split("/", 1)[0], "other")


class RepositoryTraffic:
    """Records each repository response in `RepositoryMetrics` once it is complete."""

    def __init__(self, app: ASGIApp, *, metrics: RepositoryMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = kind_of(scope["path"]) if scope["type"] == "http" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers if the app fails before starting
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.record(kind, status, sent)
