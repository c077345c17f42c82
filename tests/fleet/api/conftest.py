"""Fixtures for the API's route tests.

The drift routes (`test_drift.py`) run against windows ingested by a running fleet: the
same fixtures the drift package's tests use, so they are imported from there rather
than copied. Here ``fleet`` is that drift `tests.fleet.drift.conftest.Fleet`.
"""

from tests.fleet.drift.conftest import drift_api, fleet, wine

__all__ = ["drift_api", "fleet", "wine"]
