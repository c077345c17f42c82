"""The fleet's database: tables (SQLModel) and the engine factory for SQLite and PostgreSQL."""

from edgefleet.fleet.store.engine import create_all, make_engine, normalise_url
from edgefleet.fleet.store.tables import (
    ApiToken,
    DeadLetter,
    Device,
    DevicePublic,
    DriftWindowRow,
    EventRow,
    TelemetryPublic,
    TelemetryRow,
    TokenRole,
)

__all__ = [
    "ApiToken",
    "DeadLetter",
    "Device",
    "DevicePublic",
    "DriftWindowRow",
    "EventRow",
    "TelemetryPublic",
    "TelemetryRow",
    "TokenRole",
    "create_all",
    "make_engine",
    "normalise_url",
]
