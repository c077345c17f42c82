from __future__ import annotations

import pytest

from edgefleet.simulators.models import TrainedModel
from tests.agent.update.support import Package, make_package


@pytest.fixture(scope="session")
def packages(wine_model: TrainedModel) -> list[Package]:
    """Three distinct versions of the real wine model, as packages."""
    return [make_package(wine_model.path, f"1.{i}.0") for i in range(3)]
