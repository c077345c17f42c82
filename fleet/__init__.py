"""The fleet service: device registry, telemetry ingest, REST API, rollouts.

Invariant: nothing here imports `agent` (the fleet never runs device code).
"""
