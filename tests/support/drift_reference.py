"""Reference data and profiles shared by the drift tests."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.shared.drift import ReferenceProfile, build_profile
from edgefleet.shared.messages import DriftMessage, encode

FEATURES = ["temperature", "pressure", "count"]


def make_inputs(rng: np.random.Generator, n: int, *, shift: float = 0.0) -> np.ndarray:
    """Three columns: normal, skewed (lognormal) and discrete (Poisson)."""
    return np.column_stack(
        [
            rng.normal(20.0 + shift, 2.0, n),
            rng.lognormal(0.0, 0.5, n),
            rng.poisson(3.0, n).astype(np.float64),
        ]
    ).astype(np.float32)


def classify(x: np.ndarray) -> dict[str, np.ndarray]:
    """A fixed three-class 'model': softmax of a linear map, and its argmax."""
    logits = np.column_stack([x[:, 0] - 20.0, x[:, 1] - 1.0, (x[:, 2] - 3.0) / 2.0])
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    return {
        "label": scores.argmax(axis=1).astype(np.int64),
        "probabilities": scores.astype(np.float32),
    }


@pytest.fixture(scope="session")
def reference_data() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(7)
    x = make_inputs(rng, 2000)
    outputs = classify(x)
    # Labels agree with the model 85 % of the time.
    labels = np.where(rng.random(2000) < 0.85, outputs["label"], rng.integers(0, 3, 2000))
    return x, outputs, labels


@pytest.fixture(scope="session")
def profile(
    reference_data: tuple[np.ndarray, dict[str, np.ndarray], np.ndarray],
) -> ReferenceProfile:
    x, outputs, labels = reference_data
    return build_profile(x, outputs, feature_names=FEATURES, labels=labels)


def version1_payload(message: DriftMessage) -> bytes:
    """``message`` as an agent before the compact form sent it: a version-1 sketch at full
    precision (the sketch's own JSON), in the same envelope."""
    envelope = encode(message.model_copy(update={"sketch": None}))
    assert envelope.endswith(b'"sketch":null}')
    sketch = b"null" if message.sketch is None else message.sketch.model_dump_json().encode()
    return envelope[: -len(b"null}")] + sketch + b"}"
