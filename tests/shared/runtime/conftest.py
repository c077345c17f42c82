"""Held-out data for the committed test models (see simulators/tflite_models)."""

from __future__ import annotations

import pytest

from edgefleet.simulators.tflite_models.datasets import Split, digits_split, wine_split


@pytest.fixture(scope="session")
def wine_data() -> Split:
    """The wine rows the committed wine models were trained and scored on."""
    return wine_split()


@pytest.fixture(scope="session")
def digits_data() -> Split:
    """The digits rows the committed CNNs were trained and scored on."""
    return digits_split()
