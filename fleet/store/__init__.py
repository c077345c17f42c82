"""The fleet's database: every table (SQLModel) and the engine factory for SQLite and PostgreSQL.

`tables` holds the device registry, telemetry, events, tokens, models and desired
states; `rollout_tables` the rollouts, their history and the leases; `drift_tables` the
reference profiles, thresholds, alerts and webhooks. `migrate` brings a database to
the schema's head revision; `create_all` makes an empty one at head in one step.
"""

from edgefleet.fleet.store.engine import make_engine, normalise_url
from edgefleet.fleet.store.migrate import create_all
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
