"""The director's signed desired state: what a device accepts, and every way it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgefleet.shared.signing import keys
from edgefleet.shared.signing.director import (
    DesiredBody,
    DesiredTarget,
    sign_desired,
    trusted_keys,
    verify_desired,
)
from edgefleet.shared.signing.errors import (
    BadSignature,
    Expired,
    Malformed,
    ReplayedOrOlder,
    UnknownKey,
    UpdateRejected,
    WrongDevice,
)
from edgefleet.shared.signing.tufapi import CryptoSigner

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def director() -> CryptoSigner:
    return keys.generate_signer()


def body(**changes: object) -> DesiredBody:
    fields: dict[str, object] = {
        "device_id": "cam-17",
        "seq": 8,
        "target": DesiredTarget(
            name="wine-1.5.2.efpkg", sha256="ab" * 32, length=307200, version="1.5.2"
        ),
        "expires_at": NOW + timedelta(hours=1),
        "rollout_id": "ro-42",
        "rollback": False,
        "issued_at": NOW - timedelta(minutes=1),
    }
    fields.update(changes)
    return DesiredBody.model_validate(fields)


def verify(envelope: bytes, director: CryptoSigner, **kw: object) -> DesiredBody:
    args: dict[str, object] = {
        "trusted_director_keys": trusted_keys([director.public_key]),
        "device_id": "cam-17",
        "last_seq": 7,
        "now": NOW,
    }
    args.update(kw)
    return verify_desired(envelope, **args)  # type: ignore[arg-type]


def test_signed_desired_state_round_trips(director: CryptoSigner):
    envelope = sign_desired(body(), director).to_bytes()

    assert verify(envelope, director) == body()
    assert json.loads(envelope)["signed"]["schema"] == "edgefleet/v1/desired-state"


def test_first_desired_state_is_accepted_with_no_last_seq(director: CryptoSigner):
    assert verify(sign_desired(body(seq=0), director).to_bytes(), director, last_seq=None).seq == 0


def test_desired_state_signed_by_unknown_key_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(), keys.generate_signer()).to_bytes()

    with pytest.raises(UnknownKey, match="unknown key"):
        verify(envelope, director)


def test_flipped_bit_in_desired_state_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(), director).to_dict()
    envelope["signed"]["target"]["sha256"] = "ac" + "ab" * 31  # one bit of the hash

    with pytest.raises(BadSignature, match="does not verify"):
        verify(json.dumps(envelope).encode(), director)


def test_forged_signature_by_trusted_key_id_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(), director).to_dict()
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]

    with pytest.raises(BadSignature):
        verify(json.dumps(envelope).encode(), director)


def test_replayed_desired_state_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(seq=7), director).to_bytes()

    with pytest.raises(ReplayedOrOlder, match="seq 7 is not newer than the last accepted 7"):
        verify(envelope, director)


def test_lower_sequence_number_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(seq=4), director).to_bytes()

    with pytest.raises(ReplayedOrOlder, match="seq 4 is not newer than the last accepted 7"):
        verify(envelope, director)


def test_expired_desired_state_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(expires_at=NOW - timedelta(seconds=1)), director).to_bytes()

    with pytest.raises(Expired, match="expired at 2025-06-01T11:59:59"):
        verify(envelope, director)


def test_desired_state_for_another_device_is_rejected(director: CryptoSigner):
    envelope = sign_desired(body(device_id="cam-18"), director).to_bytes()

    with pytest.raises(WrongDevice, match="for device 'cam-18', this device is 'cam-17'"):
        verify(envelope, director)


def test_signature_covers_unknown_fields_that_are_then_ignored(director: CryptoSigner):
    # A newer director may add fields; an older device must verify and ignore them.
    raw = body().model_dump(mode="json", by_alias=True) | {"priority": "high"}
    from edgefleet.shared.signing.canonical import canonical_bytes

    sig = director.sign(canonical_bytes(raw))
    envelope: dict[str, Any] = {
        "signed": raw,
        "signatures": [{"keyid": sig.keyid, "sig": sig.signature}],
    }
    assert verify(json.dumps(envelope).encode(), director) == body()

    envelope["signed"]["priority"] = "low"
    with pytest.raises(BadSignature):
        verify(json.dumps(envelope).encode(), director)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"signatures": []}', "no 'signed'"),
        (b'{"signed": {}, "signatures": []}', "no 'signatures'"),
        (b'{"signed": {}, "signatures": [{"keyid": 1}]}', "signature is invalid"),
        (b" " * 70000, "at most"),
    ],
)
def test_malformed_envelope_is_rejected(director: CryptoSigner, payload: bytes, message: str):
    with pytest.raises(Malformed, match=message):
        verify(payload, director)


def test_correctly_signed_but_invalid_body_is_malformed(director: CryptoSigner):
    from edgefleet.shared.signing.canonical import canonical_bytes

    raw = body().model_dump(mode="json", by_alias=True) | {"seq": -1}
    sig = director.sign(canonical_bytes(raw))
    envelope = {"signed": raw, "signatures": [{"keyid": sig.keyid, "sig": sig.signature}]}

    with pytest.raises(Malformed, match="seq"):
        verify(json.dumps(envelope).encode(), director)


def test_every_rejection_is_an_update_rejected():
    for cls in (BadSignature, UnknownKey, ReplayedOrOlder, Expired, WrongDevice, Malformed):
        assert issubclass(cls, UpdateRejected)
