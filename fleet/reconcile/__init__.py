"""Reconciliation: the fleet republishes desired states the broker lost or a device missed.

`policy` holds the rules (pure, table-tested); `watcher` sees the retained desired states
on the broker; `service` is the shell that runs both periodically in the fleet service.
"""
