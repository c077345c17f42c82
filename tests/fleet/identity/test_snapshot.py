"""The identity cache: a copy serves for its TTL, and one read before a given instant is
read again when asked for (a refusal must not rest on a copy older than the request)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.fleet.identity.snapshot import IdentityCache
from edgefleet.fleet.store.identity_tables import DeviceIdentityRow


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def enroll(engine: Engine, device_id: str) -> None:
    with Session(engine) as s:
        s.add(DeviceIdentityRow(device_id=device_id, state="active"))
        s.commit()


def test_a_copy_read_before_the_request_is_read_again_within_its_ttl(engine: Engine) -> None:
    clock = Clock()
    cache = IdentityCache(engine, 60.0, monotonic=clock)
    assert cache.snapshot().refusal("dev-1") is not None
    enroll(engine, "dev-1")  # at another replica: this cache is not told
    clock.t += 1.0
    arrived = cache.now()
    clock.t += 0.1
    assert cache.snapshot().refusal("dev-1") is not None, "within its TTL the copy serves"
    fresh = cache.snapshot(read_after=arrived)
    assert fresh.refusal("dev-1") is None
    assert fresh.read_at >= arrived
    assert cache.snapshot(read_after=arrived) is fresh, "read once, then served"
