"""Hostile bytes on the ``desired`` topic: every one is `Malformed`, nothing else escapes."""

from __future__ import annotations

import pytest

from edgefleet.shared.signing import keys
from edgefleet.shared.signing.director import (
    MAX_ENVELOPE_BYTES,
    MAX_ENVELOPE_DEPTH,
    claimed_seq,
    open_desired,
    sign_desired,
    trusted_keys,
)
from edgefleet.shared.signing.errors import Malformed
from edgefleet.shared.signing.tufapi import CryptoSigner
from tests.shared.signing.test_desired_state import body

SIG = b'"signatures":[{"keyid":"k","sig":"00"}]'


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HOSTILE: dict[str, tuple[bytes, str]] = {
    # Within the size cap, far beyond what the JSON decoder recurses into.
    "nested_30k": (nested(30_000), "levels deep"),
    "nested_objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "levels deep"),
    "nested_in_signed": (
        b'{"signed":{"x":' + nested(900) + b"}," + SIG + b"}",
        "levels deep",
    ),
    "nested_100k_over_cap": (nested(100_000), "at most 65536"),
    "lone_surrogate": (b'{"signed":{"x":"\\ud800"},' + SIG + b"}", "UTF-8"),
    "not_utf8": (b'{"signed":{"x":"\xff\xfe"},' + SIG + b"}", "not UTF-8"),
    "nan": (b'{"signed":{"x":NaN},' + SIG + b"}", "canonical"),
    "infinity": (b'{"signed":{"seq":Infinity},' + SIG + b"}", "canonical"),
    "huge_int": (b'{"signed":{"seq":' + b"9" * 5000 + b"}," + SIG + b"}", "not JSON"),
    "signatures_wrong_type": (b'{"signed":{},"signatures":[[{}]]}', "signature is invalid"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_envelope_is_malformed_not_a_crash(case: str) -> None:
    payload, message = HOSTILE[case]
    director = keys.generate_signer()
    with pytest.raises(Malformed, match=message):
        open_desired(
            payload, trusted_director_keys=trusted_keys([director.public_key]), device_id="cam-17"
        )
    assert claimed_seq(payload) is None


def test_depth_bound_leaves_room_for_a_real_desired_state() -> None:
    director: CryptoSigner = keys.generate_signer()
    trusted = trusted_keys([director.public_key])
    envelope = sign_desired(body(), director).to_bytes()
    assert open_desired(envelope, trusted_director_keys=trusted, device_id="cam-17") == body()
    # Brackets inside strings (escaped quotes too) are text, not nesting.
    brackets = body(rollout_id='\\"[' * (MAX_ENVELOPE_DEPTH * 4))
    envelope = sign_desired(brackets, director).to_bytes()
    assert open_desired(envelope, trusted_director_keys=trusted, device_id="cam-17") == brackets


@pytest.mark.parametrize(
    ("payload", "seq"),
    [
        (b'{"signed":{"seq":7},"signatures":[]}', 7),
        (b'{"signed":{"seq":true}}', None),
        (b'{"signed":{"seq":-1}}', None),
        (b'{"signed":{"seq":"7"}}', None),
        (b'{"signed":[7]}', None),
        (b"[1]", None),
        (b'{"signed":{"seq":7,"pad":"' + b"x" * MAX_ENVELOPE_BYTES + b'"}}', None),
        (nested(100_000), None),
    ],
)
def test_claimed_seq_reads_only_a_bounded_envelope(payload: bytes, seq: int | None) -> None:
    assert claimed_seq(payload) == seq
