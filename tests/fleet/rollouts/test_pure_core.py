"""The rollout core is pure: importing it loads no database, broker or web library.

The package docstring promises "no database, no broker"; this keeps the promise true
as modules are added (the I/O shell is `edgefleet.fleet.rollout_service`).
"""

from __future__ import annotations

import subprocess
import sys

IO_LIBRARIES = ("sqlalchemy", "sqlmodel", "paho", "fastapi", "httpx")


def test_importing_the_rollout_core_loads_no_io_library() -> None:
    code = (
        "import sys\n"
        "import edgefleet.fleet.rollouts\n"
        "import edgefleet.fleet.rollouts.gates, edgefleet.fleet.rollouts.model\n"
        "import edgefleet.fleet.rollouts.policy, edgefleet.fleet.rollouts.selector\n"
        f"print(' '.join(m for m in {IO_LIBRARIES!r} if m in sys.modules))\n"
    )
    # A fresh interpreter: this one has imported them all for other tests.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == []
