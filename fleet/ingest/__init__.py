"""Telemetry ingest: decode (pure), write batches (store), subscribe (MQTT)."""

from fleet.ingest.decode import Accepted, Decoded, Ignored, Rejected, decode
from fleet.ingest.metrics import IngestMetrics
from fleet.ingest.subscriber import Ingester
from fleet.ingest.writer import BatchWriter, TransientStoreError, WriteResult

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
