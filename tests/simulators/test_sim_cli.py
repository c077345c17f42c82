"""`edgefleet sim` refuses bad arguments with one clear line, before it starts anything."""

from __future__ import annotations

import pytest

from edgefleet.shared.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "--devices must be at least 1"),
        (["--update-slots", "-1"], "--update-slots must be 0 (no limit) or more, got -1"),
        (["--repository-url", "http://127.0.0.1:1/v1/repository"], "go together"),
        (
            ["--enroll-at", "http://127.0.0.1:1", "--broker", "mqtts://127.0.0.1:1"],
            "--enroll-at needs a token with device:enroll in $EDGEFLEET_SIM_ADMIN_TOKEN",
        ),
    ],
)
def test_bad_sim_arguments_are_refused(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEFLEET_SIM_ADMIN_TOKEN", raising=False)
    assert main(["sim", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgefleet: error: ")
    assert message in err


def test_identities_need_the_tls_device_listener(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_SIM_ADMIN_TOKEN", "a-token-0123456789abcdef")
    assert main(["sim", "--enroll-at", "http://127.0.0.1:1", "--broker", "mqtt://127.0.0.1:1"]) == 2
    assert "--broker is the device listener: an mqtts:// URL" in capsys.readouterr().err
