"""The fleet's domain errors. Services raise these; the API maps each to one HTTP status."""

from __future__ import annotations


class FleetError(Exception):
    """Base of errors the fleet reports to a client; ``code`` is stable for scripts."""

    code = "fleet_error"


class NotFoundError(FleetError):
    """The named thing does not exist."""

    code = "not_found"


class AuthenticationError(FleetError):
    """No credentials, or credentials that match no token."""

    code = "unauthenticated"


class PermissionDeniedError(FleetError):
    """A valid caller whose grants do not allow the operation; names the permission."""

    code = "forbidden"

    def __init__(self, message: str, *, permission: str | None = None) -> None:
        super().__init__(message)
        self.permission = permission


class FourEyesError(FleetError):
    """An approval by the person who asked for it (uploaded the version, created the
    rollout): someone else must approve."""

    code = "four_eyes"


class PublishError(FleetError):
    """The broker did not acknowledge a publish (no connection, or no PUBACK in time).

    Raised by the fleet's publishers (`edgefleet.fleet.mqtt_publisher`); for a desired
    state the director has already stored the envelope, so a re-publish converges.
    """

    code = "publish_failed"


class InvalidRequestError(FleetError):
    """Arguments that are well-formed but make no sense together (e.g. since > until)."""

    code = "invalid_request"
