"""sd_notify over ``NOTIFY_SOCKET`` with the standard library; a no-op outside systemd.

Implements the parts of sd_notify(3) the agent uses: READY=1, WATCHDOG=1, STOPPING=1
and STATUS=. An address starting with '@' is an abstract socket (a leading NUL byte).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends state changes to the service manager named by ``env`` (default os.environ)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return bool(self._address)

    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half of WATCHDOG_USEC), or None if not asked."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, state: str) -> bool:
        """Send ``state`` (``KEY=value`` lines); True if sent. Never raises."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError as e:
            log.warning("cannot notify systemd at %r: %s", self._address, e)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # WATCHDOG_PID names the process the watchdog is meant for; ignore it if not us.
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec)
