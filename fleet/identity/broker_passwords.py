"""Per-device broker passwords, for brokers that cannot check client certificates: pure.

The weaker fallback of the closed broker (README "Security: device identity"): a random
password is made at enrollment, shown to the device once, and only its Mosquitto hash is
kept. The hash is Mosquitto 2's ``$7$`` form (PBKDF2-HMAC-SHA512,
``$7$<iterations>$<base64 salt>$<base64 hash>``), what ``mosquitto_passwd`` writes, so
`password_file` is a ``password_file`` the broker reads as it is. The passwords are 256
random bits, so the iteration count (Mosquitto's default, 101) is not what protects them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12
HASH_BYTES = 64  # sha512
PASSWORD_PREFIX = "efbp_"  # noqa: S105  (a visible scheme, recognisable in a leak scan)


def new_broker_password() -> str:
    """A fresh random password (256 bits, URL-safe)."""
    return PASSWORD_PREFIX + secrets.token_urlsafe(32)


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """The ``$7$`` hash Mosquitto checks ``password`` against (a new salt unless given)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches the ``$7$`` hash ``hashed`` (False for a malformed hash)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[:2] != ["", "7"] or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(expected))
    return hmac.compare_digest(digest, expected)


def password_file(entries: Iterable[tuple[str, str]]) -> str:
    """A Mosquitto ``password_file``: one ``user:hash`` line per (user, hash), sorted.

    Raises `ValueError` for a user the line format cannot hold (a ``:`` or whitespace;
    a device id never has them) or a hash that is not ``$7$``.
    """
    lines = []
    for user, hashed in sorted(entries):
        if not user or ":" in user or any(c.isspace() for c in user):
            raise ValueError(f"broker user {user!r} cannot go in a password file")
        if not hashed.startswith("$7$") or any(c.isspace() or c == ":" for c in hashed):
            raise ValueError(f"the hash of {user!r} is not a mosquitto $7$ hash")
        lines.append(f"{user}:{hashed}")
    return "".join(line + "\n" for line in lines)
