"""``edgefleet ctl rollouts watch``: poll a rollout and show its progress until it ends.

The loop only fetches, times and writes; what it shows and when it stops come from
`edgefleet.fleet.ctl.progress`. On a terminal it redraws one frame in place; otherwise
it writes `progress.summary` each time it changes, prefixed with the seconds since the
watch began. A fleet that stops answering (a restart, a load balancer switching
replicas) after the first answer is retried for ``unreachable_grace_s``: a watch in
CI should outlive a rolling upgrade of the fleet, but not wait forever for one that is
gone, nor at all for a URL that never answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from edgefleet.fleet.ctl import progress
from edgefleet.fleet.ctl.errors import ApiError, ExitCode, TransportError
from edgefleet.fleet.ctl.views import Rollout


@dataclass(frozen=True)
class WatchOptions:
    """How to watch: poll interval, when to give up, and how to draw."""

    interval_s: float = 1.0
    timeout_s: float | None = None
    exit_on_pause: bool = False
    tty: bool = False
    color: bool = False
    width: int = 30
    unreachable_grace_s: float = 30.0


def watch(
    fetch: Callable[[], Rollout],
    out: TextIO,
    options: WatchOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Rollout | None, ExitCode]:
    """Poll ``fetch`` until the rollout is final (or paused, with ``exit_on_pause``) or
    ``timeout_s`` passes; returns the last rollout seen and the exit code. Raises what
    ``fetch`` raises, except that after a first answer a `TransportError` or a 5xx
    `ApiError` is retried until it has lasted ``unreachable_grace_s``."""
    start = clock()
    last: Rollout | None = None
    shown_lines, shown_summary = 0, ""
    failing_since: float | None = None
    while True:
        problem = ""
        try:
            last = fetch()
            failing_since = None
        except (TransportError, ApiError) as e:
            if last is None or (isinstance(e, ApiError) and e.status < 500):
                raise  # a wrong URL or a refusal: waiting would not help
            failing_since = clock() if failing_since is None else failing_since
            if clock() - failing_since >= options.unreachable_grace_s:
                raise
            problem = f"retrying: {e}"
        elapsed = clock() - start
        if options.tty:
            lines = progress.render(last, width=options.width, color=options.color) if last else []
            if problem:
                lines.append(f"  {problem}")
            out.write(progress.redraw(shown_lines, lines))
            shown_lines = len(lines)
        else:
            line = problem or (progress.summary(last) if last else "")
            if line and line != shown_summary:
                out.write(f"[{elapsed:5.0f}s] {line}\n")
                shown_summary = line
        out.flush()
        if last is not None and not problem:
            code = _stop(last, options)
            if code is not None:
                return last, code
        if options.timeout_s is not None and elapsed >= options.timeout_s:
            if not options.tty:
                out.write(f"[{elapsed:5.0f}s] gave up after --timeout {options.timeout_s:g}s\n")
            return last, ExitCode.TIMEOUT
        sleep(options.interval_s)


def _stop(rollout: Rollout, options: WatchOptions) -> ExitCode | None:
    final = progress.outcome(rollout.status)
    if final is not None:
        return final
    if options.exit_on_pause and rollout.status == "paused":
        return ExitCode.PAUSED
    return None
