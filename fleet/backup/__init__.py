"""Backups of a fleet: its database and every directory of state, taken while it runs.

`manifest` is the pure part (what a backup holds, where each part goes back, checks on
a manifest read from disk); `archive` takes and restores backups; `cli` is
``edgefleet fleet backup`` and ``edgefleet fleet restore``.
"""
