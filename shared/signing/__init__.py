"""Signed updates: keys, the TUF image repository's metadata, the director's desired state.

Follows the Uptane split (see DESIGN.md, "Signed updates"): a TUF image repository whose
targets role (the release key) approves model packages, and a director (the fleet's
online key) that signs each device's desired state. A device installs only what both say.

Invariant: nothing here imports `agent` or `fleet`; everything that decides whether an
update is acceptable is pure (bytes, keys and a reference time in, a verdict out).
"""
