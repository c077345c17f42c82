"""The pydantic base and the error hierarchy every drift module shares.

`edgefleet.shared.drift` must not import `edgefleet.shared.messages` (the messages import
the sketch), so it has its own base with the same wire behaviour: unknown fields ignored, frozen.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DriftModel(BaseModel):
    """Base of every serialised drift object: readers ignore fields from newer writers."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class DriftError(ValueError):
    """Base of the drift library's errors."""


class ProfileError(DriftError):
    """Reference data a profile cannot be built from (no rows, no finite values, ...)."""


class DriftInputError(DriftError):
    """A batch that does not fit the profile: a missing tensor, wrong width, bad dtype."""


class SketchMismatchError(DriftError):
    """Two sketches (or a sketch and a profile) that cannot be combined."""
