"""The edgefleet device agent. Never imports `fleet`; depends only on the `agent` extra."""

from edgefleet.shared import __version__

__all__ = ["__version__"]
