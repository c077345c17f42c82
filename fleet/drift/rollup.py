"""Roll device windows up into slices and time buckets. Pure: no database, no clock.

A slice is any set of windows of one model version: a device, a tag, a hardware type,
a time range, or the whole fleet. Because window sketches merge by addition
(`edgefleet.shared.drift.merge`), the merged sketch of a slice is the sketch of the union of its
devices' data, so every statistic of a slice is exact, not an average of averages.

Time: a window belongs to the range [since, until) when it overlaps it, and to the time
bucket in which it *starts* (buckets are aligned to the Unix epoch), so each window is
counted in exactly one bucket.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from edgefleet.shared.drift import SketchMismatchError, WindowSketch, merge_all

FLEET_SLICE = "fleet"


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One stored device window with what slices are cut by."""

    device_id: str
    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    sketch: WindowSketch
    tags: tuple[str, ...] = ()
    hardware: str = ""


class SliceFilter(BaseModel):
    """Which windows a slice holds; None means "any"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    version: str | None = None
    device: str | None = None
    tag: str | None = None
    hardware: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until")
    @classmethod
    def _naive_is_utc(cls, value: datetime | None) -> datetime | None:
        # Windows are stored in UTC; a time without an offset (``2026-12-04T10:00``) means
        # UTC too, as on ``/v1/alerts``, rather than a comparison that cannot be made.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _range_is_ordered(self) -> SliceFilter:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )
        return self

    def matches(self, record: WindowRecord) -> bool:
        """Whether ``record`` belongs to this slice (time: the window overlaps the range)."""
        return (
            (self.model is None or record.model_name == self.model)
            and (self.version is None or record.model_version == self.version)
            and (self.device is None or record.device_id == self.device)
            and (self.tag is None or self.tag in record.tags)
            and (self.hardware is None or record.hardware == self.hardware)
            and (self.since is None or record.window_end > self.since)
            and (self.until is None or record.window_start < self.until)
        )

    def describe(self) -> dict[str, str]:
        """The set fields, as strings (for alert evidence and responses)."""
        return {
            k: v.isoformat() if isinstance(v, datetime) else str(v)
            for k, v in self.model_dump(exclude_none=True).items()
        }


@dataclass(frozen=True, slots=True)
class Rollup:
    """The merged sketch of some windows and what went into it."""

    sketch: WindowSketch
    windows: int
    devices: int
    start: datetime
    end: datetime


def rollup(records: Sequence[WindowRecord]) -> Rollup:
    """Merge ``records`` into one sketch.

    Raises `SketchMismatchError` if there are none or they were counted against
    different profiles (mixing model versions whose profiles differ).
    """
    if not records:
        raise SketchMismatchError("no windows to roll up")
    return Rollup(
        sketch=merge_all(r.sketch for r in records),
        windows=len(records),
        devices=len({r.device_id for r in records}),
        start=min(r.window_start for r in records),
        end=max(r.window_end for r in records),
    )


def group(
    records: Iterable[WindowRecord], key: Callable[[WindowRecord], Iterable[str]]
) -> dict[str, list[WindowRecord]]:
    """Records by every key ``key`` gives them (a device with two tags is in both)."""
    groups: dict[str, list[WindowRecord]] = defaultdict(list)
    for record in records:
        for k in key(record):
            groups[k].append(record)
    return dict(groups)


SLICERS: dict[str, Callable[[WindowRecord], Iterable[str]]] = {
    FLEET_SLICE: lambda r: [FLEET_SLICE],
    "device": lambda r: [f"device:{r.device_id}"],
    "tag": lambda r: [f"tag:{t}" for t in r.tags],
    "hardware": lambda r: [f"hardware:{r.hardware}"] if r.hardware else [],
}


def slices(records: Sequence[WindowRecord], kinds: Iterable[str]) -> dict[str, list[WindowRecord]]:
    """Records by slice key (``fleet``, ``device:<id>``, ``tag:<t>``, ``hardware:<h>``).

    Raises `KeyError` for a kind that is not in `SLICERS`.
    """
    out: dict[str, list[WindowRecord]] = {}
    for kind in kinds:
        out |= group(records, SLICERS[kind])
    return out


def slice_fields(slice_key: str) -> dict[str, str]:
    """``device:d1`` -> ``{"device": "d1"}``; ``fleet`` -> ``{}``."""
    if slice_key == FLEET_SLICE:
        return {}
    kind, _, value = slice_key.partition(":")
    return {kind: value}


def bucket_start(ts: datetime, bucket_s: int) -> datetime:
    """The start of the epoch-aligned bucket of ``bucket_s`` seconds holding ``ts``."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = int((ts - epoch).total_seconds() // bucket_s) * bucket_s
    return epoch + timedelta(seconds=seconds)


def buckets(records: Iterable[WindowRecord], bucket_s: int) -> list[tuple[datetime, Rollup]]:
    """Records merged per time bucket (by window start), oldest first; empty buckets absent.

    Raises `ValueError` for a non-positive ``bucket_s`` and `SketchMismatchError` as
    `rollup` does.
    """
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, got {bucket_s}")
    by_bucket: dict[datetime, list[WindowRecord]] = defaultdict(list)
    for record in records:
        by_bucket[bucket_start(record.window_start, bucket_s)].append(record)
    return [(start, rollup(by_bucket[start])) for start in sorted(by_bucket)]
