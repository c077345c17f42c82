"""Broker passwords in Mosquitto's own ``$7$`` form, checked against ``mosquitto_passwd``."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefleet.fleet.identity.broker_passwords import (
    PASSWORD_PREFIX,
    check_password,
    mosquitto_hash,
    new_broker_password,
    password_file,
)

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def test_a_hash_of_mosquitto_passwd_checks_and_ours_is_the_same_for_its_salt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(path), "cam-1", "s3cret"], check=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert check_password("s3cret", theirs)
    assert not check_password("s3cret!", theirs)
    _, _, iterations, salt, _ = theirs.split("$")
    assert (
        mosquitto_hash("s3cret", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs
    )


def test_new_passwords_are_long_random_and_recognisable() -> None:
    first, second = new_broker_password(), new_broker_password()
    assert first != second
    assert first.startswith(PASSWORD_PREFIX)
    assert len(first) >= 40
    assert check_password(first, mosquitto_hash(first))


@pytest.mark.parametrize("hashed", ["", "$6$abc$def", "$7$x$abc$def", "$7$101$!!$??"])
def test_a_malformed_hash_never_checks(hashed: str) -> None:
    assert not check_password("anything", hashed)


def test_the_password_file_is_sorted_and_refuses_what_its_lines_cannot_hold() -> None:
    h = mosquitto_hash("pw")
    assert password_file([("b", h), ("a", h)]) == f"a:{h}\nb:{h}\n"
    for user in ("edgefleet:fleet", "two words", ""):
        with pytest.raises(ValueError, match="cannot go in a password file"):
            password_file([(user, h)])
    with pytest.raises(ValueError, match="not a mosquitto"):
        password_file([("a", "plain")])
