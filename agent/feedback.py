"""Late labels (feedback) joined to earlier predictions by request id.

The body of ``POST /v1/feedback`` is either one item ``{"request_id": "...", "label":
<scalar>}`` or a batch ``{"items": [<item>, ...]}``. A label is a JSON string, number or
boolean (a class as the model names it, or a value for a regression).

Answers:
- one item: 200 ``{"request_id", "joined": true}``, or 404 ``unknown_request_id`` when
  the prediction is unknown, already labelled, or older than the ``label_memory`` most
  recent predictions, or was made by a model that no longer serves;
- a batch: 200 with one result per item, in order (``{"request_id", "joined"}`` plus
  ``"error": "unknown_request_id"`` for those not joined) and the two totals, because
  a batch is usually a mix and a client wants to know which ones to resend or drop;
- 400 for a body that is not one of the two forms (nothing of it is recorded), 409
  ``not_monitored`` when the active model has no drift monitor or its reference
  profile has no label spec (labels could never count), 503 ``no_model``.

A label counts in the drift window that is open when it arrives.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from edgefleet.agent.drift_monitor import DriftMonitor

MAX_REQUEST_ID_CHARS = 200
MAX_FEEDBACK_ITEMS = 10_000

Label = StrictBool | StrictInt | StrictFloat | StrictStr


class FeedbackItem(BaseModel):
    """One label for one earlier prediction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS)
    label: Label


class FeedbackBatch(BaseModel):
    """Several labels in one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)


class FeedbackError(Exception):
    """Feedback the API answers with an error status."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def usable_monitor(monitor: DriftMonitor | None) -> DriftMonitor:
    """The monitor labels can join; raises `FeedbackError` (409) when there is none."""
    if monitor is None:
        raise FeedbackError(
            HTTPStatus.CONFLICT,
            "not_monitored",
            "the active model has no drift monitor (its package has no reference profile, "
            "or drift.enabled is false): labels cannot be joined",
        )
    if monitor.profile.labels is None:
        raise FeedbackError(
            HTTPStatus.CONFLICT,
            "not_monitored",
            "the active model's reference profile has no label spec: labels cannot be scored",
        )
    return monitor


def record_one(monitor: DriftMonitor, item: FeedbackItem) -> dict[str, Any]:
    """Join one label; raises `FeedbackError` (404) when the request id is unknown."""
    if not monitor.record_label(item.request_id, item.label):
        raise FeedbackError(
            HTTPStatus.NOT_FOUND,
            "unknown_request_id",
            f"no prediction with request_id {item.request_id!r} is waiting for a label: "
            "unknown, already labelled, made by a model that no longer serves, or older "
            "than the most recent drift.label_memory predictions",
        )
    return {"request_id": item.request_id, "joined": True}


def record_batch(monitor: DriftMonitor, batch: FeedbackBatch) -> dict[str, Any]:
    """Join every label of ``batch``; per-item results, in order, and the totals."""
    results: list[dict[str, Any]] = []
    for item in batch.items:
        if monitor.record_label(item.request_id, item.label):
            results.append({"request_id": item.request_id, "joined": True})
        else:
            results.append(
                {"request_id": item.request_id, "joined": False, "error": "unknown_request_id"}
            )
    joined = sum(1 for r in results if r["joined"])
    return {"results": results, "joined": joined, "unknown": len(results) - joined}
