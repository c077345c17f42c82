"""The fleet's REST API (FastAPI)."""

from fleet.api.app import create_app

__all__ = ["create_app"]
