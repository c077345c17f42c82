"""Why an update was refused, versus why it could not be fetched.

`UpdateRejected` and its subclasses mean the peer sent something that must not be
installed (bad signature, replay, expiry, wrong hash...): retrying the same bytes will not
help. `TransportError` means the network failed: retrying later may.
"""

from __future__ import annotations


class SigningError(Exception):
    """Base of every error raised by `edgefleet.shared.signing`."""


class KeyFileError(SigningError):
    """A key file is missing, unreadable, or its passphrase is wrong."""


class UpdateRejected(SigningError):  # noqa: N818 - the name says what happened
    """An update, or the metadata that describes it, must not be installed."""


class Malformed(UpdateRejected):
    """The bytes are not a well-formed document of the expected kind."""


class BadSignature(UpdateRejected):
    """A signature does not verify, or too few signatures do."""


class UnknownKey(BadSignature):
    """The document is signed only by keys this device does not trust."""


class ReplayedOrOlder(UpdateRejected):
    """A desired state whose sequence number is not newer than the last accepted one."""


class Expired(UpdateRejected):
    """A signed document whose expiry is in the past."""


class WrongDevice(UpdateRejected):
    """A desired state addressed to another device."""


class DigestMismatch(UpdateRejected):
    """An artifact, or two claims about it, disagree on its hash."""


class LengthMismatch(UpdateRejected):
    """An artifact, or two claims about it, disagree on its length (or it never ends)."""


class Downgrade(UpdateRejected):
    """An older model version that the director did not sign as an explicit rollback."""


class TargetNotFound(UpdateRejected):
    """The image repository's signed targets do not list the artifact."""


class TufError(UpdateRejected):
    """The TUF metadata failed verification (signature, version rollback, expiry...)."""


class TransportError(SigningError):
    """The network failed (connection refused, timeout, HTTP 5xx): retry later."""
