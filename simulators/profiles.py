"""``--profile`` strings of ``edgefleet sim`` parsed into `DeviceProfile` (pure).

Grammar: comma-separated ``key=value`` pairs; lists inside a value are separated by
``;``; ``fault`` may repeat. See `edgefleet.simulators.cli.PROFILE_HELP` for the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from edgefleet.simulators.faults import Fault, FaultKind
from edgefleet.simulators.fleet import DeviceProfile

_FAULT_PARAMS = ("slow_ms", "period_s", "down_s")
_FIELDS: dict[str, tuple[str, Callable[[str], object]]] = {
    "hardware": ("hardware", str),
    "tags": ("tags", lambda v: tuple(t for t in v.split(";") if t)),
    "count": ("count", int),
    "rate": ("inferences_per_s", float),
    "shift": ("shift", float),
}


class ProfileError(ValueError):
    """A ``--profile`` string that does not describe a device profile."""


def parse_profile(text: str, default: DeviceProfile | None = None) -> DeviceProfile:
    """The profile ``text`` describes, on top of ``default``; raises `ProfileError`."""
    profile = default or DeviceProfile()
    fault_specs: list[tuple[FaultKind, tuple[str, ...]]] = []
    params: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ProfileError(f"profile {text!r}: expected key=value, found {item!r}")
        try:
            if key in _FIELDS:
                field, convert = _FIELDS[key]
                profile = replace(profile, **{field: convert(value)})  # type: ignore[arg-type]
            elif key in _FAULT_PARAMS:
                params[key] = float(value)
            elif key == "fault":
                kind, _, versions = value.partition("@")
                fault_specs.append((FaultKind(kind), tuple(v for v in versions.split(";") if v)))
            else:
                raise ProfileError(
                    f"profile {text!r}: unknown key {key!r}; expected hardware, tags, count, "
                    f"rate, shift, fault, {', '.join(_FAULT_PARAMS)}"
                )
        except ValueError as e:
            if isinstance(e, ProfileError):
                raise
            raise ProfileError(f"profile {text!r}: bad value for {key}: {value!r} ({e})") from e
    if profile.count is not None and profile.count < 1:
        raise ProfileError(f"profile {text!r}: count must be at least 1, got {profile.count}")
    faults = tuple(Fault(kind, versions, **params) for kind, versions in fault_specs)  # type: ignore[arg-type]
    return replace(profile, faults=faults) if faults else profile
