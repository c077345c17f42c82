"""The ingester's writer process: decodes and writes batches beside the MQTT client.

Why a process: paho's network thread is itself CPU-bound at high rates, and the writer
thread (pydantic validation, rows, the driver) shared the GIL with it; profiling showed
each message's decode and write serialised with paho's own work, and every socket call
of paho's waited for the GIL while the writer held it. In its own process the writer
runs on the other core, and the ingester's process only hands raw payloads over.

Protocol on one duplex pipe, one batch at a time (the ingester's writer thread is its
only user): the ingester sends ``("batch", raws)``; the process answers with any number
of ``("decoded", (received, ignored))`` (before the write, which waits for the ingester's
``("counted", None)``), ``("written", result)`` (before each commit, likewise
answered), ``("retry", None)`` (a
database retry, counted as it happens) and ``("log", record)``
(its log records, handled by the ingester's loggers, so the fleet's log format and
levels apply), then ``("done", outcome)``. ``("stop", None)`` ends it. The process
never acknowledges anything itself: the ingester publishes the stored acknowledgements
from the outcome, after the commit, exactly as with an in-thread writer.

If the process dies, `WriterProcess.run` raises `WorkerLostError`; the batch it held was
not acknowledged, so the caller can start a new process and send the batch again
(dedupe by (device, seq) makes a batch stored twice harmless).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from edgefleet.fleet.ingest.batches import BatchProcessor, Outcome, Raw
from edgefleet.fleet.ingest.writer import WriteResult
from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.store.engine import EngineRecipe

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # importing the fleet's modules on a loaded machine


class WorkerLostError(Exception):
    """The writer process exited or stopped answering: its batch is not stored."""


class WriterProcess:
    """One writer process; `start` it, `run` batches, `stop` it. One caller thread (the
    ingester's writer thread), besides `identities_changed` and `give_up_at`, which any
    thread may call. ``on_retry``, ``on_decoded`` and ``on_written`` are
    `BatchProcessor`'s, called in
    the caller's thread as the process reports them."""

    def __init__(
        self,
        settings: FleetSettings,
        recipe: EngineRecipe,
        *,
        on_retry: Callable[[], None],
        on_decoded: Callable[[int, int], None],
        on_written: Callable[[WriteResult], None],
    ) -> None:
        self._settings = settings
        self._recipe = recipe
        self._on_retry = on_retry
        self._on_decoded = on_decoded
        self._on_written = on_written
        # spawn, not fork: the ingester's process has threads (paho, the API) whose locks
        # a forked child would inherit held.
        self._context = multiprocessing.get_context("spawn")
        self._give_up_at: Synchronized[float] = self._context.Value("d", 0.0)  # 0: never
        self._identities_changed = self._context.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def start(self) -> None:
        """Start the process and wait until it is ready; raises `WorkerLostError` if it
        does not get there within `START_TIMEOUT_S`."""
        ours, theirs = self._context.Pipe(duplex=True)
        level = logging.getLogger("edgefleet").getEffectiveLevel()
        process = self._context.Process(
            target=serve,
            args=(
                theirs,
                WorkerStart(
                    self._settings, self._recipe, self._give_up_at, self._identities_changed, level
                ),
            ),
            name="fleet-ingest-writer",
            daemon=True,  # never outlives the fleet, even if stop is not reached
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        if not ours.poll(START_TIMEOUT_S):
            self.stop(timeout_s=1.0)
            raise WorkerLostError("the ingest writer process did not start")
        try:
            kind, _ = ours.recv()
        except (EOFError, OSError) as e:
            self.stop(timeout_s=1.0)
            raise WorkerLostError(f"the ingest writer process exited at start: {e}") from e
        if kind != "ready":
            self.stop(timeout_s=1.0)
            raise WorkerLostError(f"the ingest writer process said {kind!r} at start")

    @property
    def pid(self) -> int | None:
        """The process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def identities_changed(self) -> None:
        """An identity changed: the process reads the table afresh for its next batch."""
        self._identities_changed.set()

    def give_up_at(self, monotonic_s: float) -> None:
        """From ``monotonic_s`` on, a batch the database refuses is abandoned."""
        self._give_up_at.value = monotonic_s

    def run(self, raws: list[Raw]) -> Outcome:
        """Have the process decode and store ``raws``; its retries and log records are
        passed to the ingester as they come. Raises `WorkerLostError`."""
        conn = self._conn
        if conn is None:
            raise WorkerLostError("the ingest writer process is not running")
        try:
            conn.send(("batch", raws))
            while True:
                kind, body = conn.recv()
                if kind == "done":
                    assert isinstance(body, Outcome)
                    return body
                if kind == "decoded":
                    self._on_decoded(*body)
                    conn.send(("counted", None))
                elif kind == "written":
                    self._on_written(body)
                    conn.send(("counted", None))
                elif kind == "retry":
                    self._on_retry()
                elif kind == "log":
                    _handle(body)
        except (EOFError, OSError) as e:
            raise WorkerLostError(f"the ingest writer process is gone: {e}") from e

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the process to exit, wait up to ``timeout_s``, then kill it."""
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            with contextlib.suppress(OSError):  # already gone
                conn.send(("stop", None))
            conn.close()
        if process is not None:
            process.join(timeout_s)
            if process.is_alive():
                logger.warning("the ingest writer process did not exit; killing it")
                process.kill()
                process.join(5.0)


def _handle(record: logging.LogRecord) -> None:
    target = logging.getLogger(record.name)
    if target.isEnabledFor(record.levelno):
        target.handle(record)


class _PipeHandler(logging.Handler):
    """Sends each record to the ingester's process, made picklable (message and
    traceback as text)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info))
                record.exc_info = None
            self._conn.send(("log", record))
        except Exception:  # a log line must never stop the writer
            self.handleError(record)


@dataclass(frozen=True)
class WorkerStart:
    """What the writer process starts from (pickled into it at spawn)."""

    settings: FleetSettings
    recipe: EngineRecipe
    give_up_at: Synchronized[float]  # monotonic seconds; 0: never give up
    identities_changed: Any  # a multiprocessing Event
    log_level: int


def serve(conn: Connection, start: WorkerStart) -> None:
    """The writer process's main: batches from ``conn`` until ``("stop", None)`` or the
    ingester's end of the pipe closes."""
    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(conn)]
    root.setLevel(start.log_level)
    engine = start.recipe.make()
    give_up_at, identities_changed = start.give_up_at, start.identities_changed

    def deadline() -> float | None:
        value = give_up_at.value
        return value if value > 0 else None

    def decoded(received: int, ignored: int) -> None:
        # Wait until the ingester has counted them: then its received counter is ahead of
        # the commit that follows, as with a writer in its own thread.
        conn.send(("decoded", (received, ignored)))
        conn.recv()

    def written(result: WriteResult) -> None:
        # Counted by the ingester before the commit, as `decoded` before the write.
        conn.send(("written", result))
        conn.recv()

    processor = BatchProcessor(
        start.settings,
        engine,
        on_written=written,
        on_retry=lambda: conn.send(("retry", None)),
        on_decoded=decoded,
        give_up_at=deadline,
    )
    conn.send(("ready", None))
    try:
        while True:
            try:
                kind, body = conn.recv()
            except EOFError:
                return
            if kind == "stop":
                return
            if identities_changed.is_set():
                identities_changed.clear()
                processor.identities_changed()
            conn.send(("done", processor.run(body)))
    finally:
        engine.dispose()
