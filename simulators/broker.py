"""An embedded MQTT 3.1.1 broker (amqtt) for the demo, so it needs nothing but pip.

The protocol is tested on Mosquitto; this broker exists so that ``edgefleet demo`` runs
on a machine with nothing else installed. amqtt has no shared subscriptions and no
MQTT 5, so the demo's fleet uses a plain subscription and MQTT 3.1.1.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """amqtt running on its own event loop in a background thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._broker: Any = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start listening; raises `RuntimeError` if the port is taken or amqtt fails."""
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError(f"embedded broker did not start on {self.url} in {timeout_s}s")
        if self._error is not None:
            raise RuntimeError(f"embedded broker failed on {self.url}: {self._error}") from (
                self._error
            )

    def _run(self) -> None:
        from amqtt.broker import Broker

        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_log_loop_error)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        try:
            self._broker = Broker(config, loop=self._loop)
            self._broker._subscriptions = SnapshotIterationDict(self._broker._subscriptions)
            self._loop.run_until_complete(self._broker.start())
        except Exception as e:  # amqtt raises its own BrokerError and OSError
            self._error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the broker down and join its thread."""
        if self._broker is not None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout_s)
            except Exception as e:  # a broker that fails to stop must not block the demo
                log.warning("embedded broker shutdown failed: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)


class SnapshotIterationDict(dict[Any, Any]):
    """A dict whose iteration walks a copy of its keys (or items) taken when it starts.

    amqtt 0.12 iterates its subscription table with ``await`` inside the loop (replaying
    retained messages to a connecting client, broadcasting, dropping a session's
    subscriptions); a client that subscribes to a new filter meanwhile grows the table and
    the iterating coroutine raises ``dictionary changed size during iteration``, dropping
    that client's connection. Walking a snapshot is what those loops mean: a filter added
    during the walk gets its retained messages from its own SUBSCRIBE.
    """

    def __iter__(self) -> Iterator[Any]:
        return iter(list(super().keys()))

    def items(self) -> Any:  # a list, not a live view: see the class docstring
        return list(super().items())

    def values(self) -> Any:
        return list(super().values())


def _log_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line for an error amqtt leaves to the event loop, the traceback at DEBUG.

    Besides the subscription-table race that `SnapshotIterationDict` mends, amqtt can
    leave other per-connection errors to the loop; they drop that one connection and the
    client reconnects. asyncio's default handler prints a traceback the demo's user cannot
    act on.
    """
    error = context.get("exception")
    what = f"{type(error).__name__}: {error}" if error is not None else context.get("message")
    log.warning("embedded broker dropped a connection (%s); the client reconnects", what)
    log.debug("embedded broker loop error: %s", context.get("message"), exc_info=error)
