"""The names of the identity directory's files and `IdentityError`, without cryptography.

`edgefleet.agent.identity` (enrollment, the key) imports cryptography, ~10 MiB of RSS;
the daemon needs only these names to decide whether a device has an identity at all
(`edgefleet.agent.credentials.load_credentials`), so a device without one never loads it.
`edgefleet.agent.identity` re-exports everything here.
"""

from __future__ import annotations

KEY_FILE = "device.key.pem"
CERT_FILE = "device.cert.pem"
CA_FILE = "ca.pem"
BROKER_PASSWORD_FILE = "broker-password"  # noqa: S105  (a file name; password-mode brokers)


class IdentityError(Exception):
    """Enrollment failed; the message says what and why, in one line."""
