"""Enrolling simulated devices the way an operator enrolls a real one.

For each device the simulator asks the fleet's REST API for a one-time enrollment token
bound to that device id (``POST /v1/enrollment-tokens``, a token with ``device:enroll``),
then runs the agent's own `edgefleet.agent.identity.enroll` with it: a P-256 key made in
the device's identity directory, a CSR, the certificate stored. A device that is
enrolled already (a state directory kept from an earlier run) keeps its identity.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.credentials import fleet_tls_context
from edgefleet.agent.identity import CERT_FILE, IdentityError, enroll

TOKEN_TTL_S = 900


@dataclass(frozen=True)
class IdentityPlan:
    """Identities on: where simulated devices enroll and which listener they use.

    ``admin_token`` must hold ``device:enroll``; ``device_broker_url`` is the broker's
    device listener (``mqtts://``, the device certificate required); ``fleet_ca_file``
    verifies an https fleet before a device has pinned the fleet's CA.
    """

    fleet_url: str
    admin_token: str
    device_broker_url: str
    fleet_ca_file: Path | None = None


class EnrollmentError(RuntimeError):
    """A simulated device could not be enrolled; the message says which and why."""


def enroll_device(plan: IdentityPlan, device_id: str, identity_dir: Path) -> bool:
    """Enroll ``device_id`` into ``identity_dir`` unless it is enrolled already.

    Returns True when it enrolled now. Raises `EnrollmentError` when the fleet refuses
    the token request or the enrollment, or cannot be reached.
    """
    if (identity_dir / CERT_FILE).exists():
        return False
    context = fleet_tls_context(None, plan.fleet_ca_file) if _https(plan.fleet_url) else None
    token = _enrollment_token(plan, device_id, context)
    try:
        enroll(
            plan.fleet_url, token, device_id=device_id, identity_dir=identity_dir, context=context
        )
    except (IdentityError, OSError) as e:
        raise EnrollmentError(f"{device_id}: enrollment failed: {e}") from e
    return True


def _https(url: str) -> bool:
    return url.startswith("https://")


def _enrollment_token(plan: IdentityPlan, device_id: str, context: ssl.SSLContext | None) -> str:
    body = json.dumps({"device_id": device_id, "expires_in_s": TOKEN_TTL_S}).encode()
    request = urllib.request.Request(  # noqa: S310 - the plan's http(s) fleet URL
        f"{plan.fleet_url.rstrip('/')}/v1/enrollment-tokens",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {plan.admin_token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
            return str(json.load(response)["token"])
    except urllib.error.HTTPError as e:
        detail = e.read(2048).decode(errors="replace")
        raise EnrollmentError(
            f"{device_id}: the fleet refused an enrollment token ({e.code}): {detail}"
        ) from e
    except (OSError, ValueError, KeyError) as e:
        raise EnrollmentError(f"{device_id}: no enrollment token from {plan.fleet_url}: {e}") from e
