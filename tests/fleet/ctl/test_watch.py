"""The watch loop: it stops at the final status with its exit code, writes one line per
change to a log, redraws in place on a terminal, survives a short fleet outage and
gives up at --timeout. ``fetch`` is the loop's own interface: here a list of answers."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from edgefleet.fleet.ctl.errors import ApiError, AuthError, ExitCode, TransportError
from edgefleet.fleet.ctl.views import Rollout
from edgefleet.fleet.ctl.watch import WatchOptions, watch


def _rollout(status: str, healthy: int = 0) -> Rollout:
    return Rollout.model_validate(
        {
            "id": "ro-1",
            "model": "wine",
            "version": "1.1.0",
            "status": status,
            "current_wave": 0,
            "targets": 2,
            "wave_sizes": [2],
            "counts": {"healthy": healthy, "pending": 2 - healthy},
            "waves": [
                {"index": 0, "size": 2, "end": 2, "started": True, "counts": {"healthy": healthy}}
            ],
        }
    )


class Script:
    """Answers (a rollout or an error to raise) one per poll, with a clock that each
    sleep advances."""

    def __init__(self, answers: Iterable[Rollout | Exception]) -> None:
        self.answers = list(answers)
        self.now = 0.0
        self.polls = 0

    def fetch(self) -> Rollout:
        answer = self.answers[min(self.polls, len(self.answers) - 1)]
        self.polls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def run(self, **options: Any) -> tuple[Rollout | None, ExitCode, str]:
        out = io.StringIO()
        last, code = watch(
            self.fetch, out, WatchOptions(**options), clock=lambda: self.now, sleep=self.sleep
        )
        return last, code, out.getvalue()


@pytest.mark.parametrize(
    ("final", "code"),
    [
        ("completed", ExitCode.OK),
        ("rolled_back", ExitCode.ROLLED_BACK),
        ("aborted", ExitCode.ABORTED),
        ("failed", ExitCode.FAILED),
        ("approval_denied", ExitCode.DENIED),
    ],
)
def test_watch_ends_at_the_final_status_with_its_exit_code(final: str, code: ExitCode) -> None:
    script = Script([_rollout("running"), _rollout("running", 1), _rollout(final, 2)])
    last, got, _ = script.run()
    assert got == code
    assert last is not None
    assert last.status == final
    assert script.polls == 3


def test_a_log_gets_one_line_per_change() -> None:
    same = _rollout("running", 1)
    script = Script([_rollout("running"), same, same, same, _rollout("completed", 2)])
    _, _, text = script.run(interval_s=2)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[    0s] rollout ro-1: wine 1.1.0 running, wave 1/1, 0/2 healthy")
    assert lines[1].startswith("[    2s] rollout ro-1: wine 1.1.0 running, wave 1/1, 1/2 healthy")
    assert lines[2].startswith("[    8s] rollout ro-1: wine 1.1.0 completed")
    assert "\x1b" not in text


def test_a_terminal_gets_its_frame_redrawn_in_place() -> None:
    script = Script([_rollout("running"), _rollout("completed", 2)])
    _, _, text = script.run(tty=True, color=True, width=4)
    first, second = text.split("\x1b[2F")
    assert first.startswith("\x1b[J")
    assert first.count("\n") == 2
    assert "\x1b[32mcompleted\x1b[0m" in second
    assert "\x1b[32m####\x1b[0m" in second


def test_paused_ends_the_watch_only_with_exit_on_pause() -> None:
    answers = [_rollout("paused"), _rollout("paused"), _rollout("aborted")]
    assert Script(answers).run(exit_on_pause=True)[1] == ExitCode.PAUSED
    assert Script(answers).run()[1] == ExitCode.ABORTED


def test_watch_gives_up_at_its_timeout() -> None:
    script = Script([_rollout("running")])
    last, code, text = script.run(interval_s=1, timeout_s=3)
    assert code == ExitCode.TIMEOUT
    assert last is not None
    assert last.status == "running"
    assert script.polls == 4
    assert text.splitlines()[-1] == "[    3s] gave up after --timeout 3s"


def _unreachable() -> TransportError:
    return TransportError("GET /v1/rollouts/ro-1: cannot reach the fleet at http://f: refused")


def _unavailable() -> ApiError:
    return ApiError("GET /v1/rollouts/ro-1", 503, "unavailable", "database is down")


@pytest.mark.parametrize("outage", [_unreachable, _unavailable])
def test_a_short_outage_is_retried_and_reported(outage: Callable[[], Exception]) -> None:
    script = Script([_rollout("running"), outage(), outage(), _rollout("completed", 2)])
    _, code, text = script.run(unreachable_grace_s=10)
    assert code == ExitCode.OK
    assert text.count("retrying: GET /v1/rollouts/ro-1") == 1  # once per change, not per poll


def test_an_outage_longer_than_the_grace_is_raised() -> None:
    script = Script([_rollout("running"), _unreachable()])
    with pytest.raises(TransportError, match="cannot reach the fleet"):
        script.run(interval_s=1, unreachable_grace_s=5)
    assert script.now == 6  # first failure at 1 s, then 5 s of them


def test_a_fleet_that_never_answered_is_not_waited_for() -> None:
    script = Script([_unreachable(), _rollout("completed", 2)])
    with pytest.raises(TransportError):
        script.run(unreachable_grace_s=10)
    assert script.polls == 1


@pytest.mark.parametrize(
    "error",
    [
        AuthError("GET /v1/rollouts/ro-1", 401, "unauthenticated", "token expired"),
        ApiError("GET /v1/rollouts/ro-1", 404, "not_found", "no rollout 'ro-1'"),
    ],
)
def test_a_refusal_is_not_retried(error: ApiError) -> None:
    script = Script([error])
    with pytest.raises(type(error)):
        script.run()
    assert script.polls == 1
