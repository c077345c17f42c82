"""Telemetry ingest: decode (pure), write batches (store), subscribe (MQTT)."""

from edgefleet.fleet.ingest.decode import Accepted, Decoded, Ignored, Rejected, decode
from edgefleet.fleet.ingest.metrics import IngestMetrics
from edgefleet.fleet.ingest.subscriber import Ingester
from edgefleet.fleet.ingest.writer import BatchWriter, TransientStoreError, WriteResult

__all__ = [
    "Accepted",
    "BatchWriter",
    "Decoded",
    "Ignored",
    "IngestMetrics",
    "Ingester",
    "Rejected",
    "TransientStoreError",
    "WriteResult",
    "decode",
]
