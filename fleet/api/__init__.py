"""The fleet's REST API (FastAPI)."""

from edgefleet.fleet.api.app import create_app

__all__ = ["create_app"]
