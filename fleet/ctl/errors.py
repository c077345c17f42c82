"""What can go wrong in ``edgefleet ctl``, and the exit code each failure gives.

One small hierarchy: `UsageError` (our side: arguments, config, a rollout file),
`TransportError` (the fleet could not be reached) and `ApiError` (the fleet answered
with an error status; `AuthError` for 401 and 403). Each message names what failed:
the request, the status and the API's own ``error.message``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes a CI job can rely on (also in ``edgefleet ctl --help`` and the README)."""

    OK = 0  # the command did what it was asked; a watched rollout completed
    USAGE = 2  # bad arguments, config or input file (argparse uses 2 as well)
    API = 3  # the fleet refused the request (404, 409, 422, 5xx, ...)
    AUTH = 4  # no valid token (401) or the token may not do this (403)
    UNREACHABLE = 5  # no answer from the fleet: connection refused, DNS, TLS, timeout
    ROLLED_BACK = 10  # the watched rollout ended rolled back
    ABORTED = 11  # the watched rollout was aborted
    FAILED = 12  # the watched rollout failed
    DENIED = 13  # the watched rollout's approval was denied
    PAUSED = 14  # the watched rollout paused (only with --exit-on-pause)
    TIMEOUT = 15  # the watch gave up (--timeout) while the rollout was still going


EXIT_CODES_HELP = """exit codes:
  0   ok; a watched rollout completed
  2   usage: bad arguments, config file or input file
  3   the fleet refused the request (404, 409, 422, 5xx)
  4   authentication or permission: a missing, wrong or expired token (401), or one
      that may not do this (403)
  5   the fleet could not be reached (connection refused, DNS, TLS, timeout)
  10  the watched rollout ended rolled back
  11  the watched rollout was aborted
  12  the watched rollout failed
  13  the watched rollout's approval was denied
  14  the watched rollout paused (with --exit-on-pause)
  15  the watch timed out (--timeout) while the rollout was still going"""


class CtlError(Exception):
    """An error reported as one line; ``exit_code`` is what the command exits with."""

    exit_code: ExitCode = ExitCode.API


class UsageError(CtlError):
    """Bad arguments, config or input file: nothing was sent."""

    exit_code = ExitCode.USAGE


class TransportError(CtlError):
    """The request got no HTTP answer (refused, DNS, TLS, timeout)."""

    exit_code = ExitCode.UNREACHABLE


class ApiError(CtlError):
    """The fleet answered with an error status; ``code`` is the API's stable error code."""

    def __init__(self, what: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{what}: HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class AuthError(ApiError):
    """401 (no token, or one the fleet does not accept) or 403 (not allowed)."""

    exit_code = ExitCode.AUTH
