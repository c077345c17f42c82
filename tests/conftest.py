"""Fixtures shared by every test: a real Mosquitto, real models, real databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon import Agent
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.simulators.models import TrainedModel, train_wine_classifier
from tests.support import pg
from tests.support.mosquitto import MosquittoBroker

# Fixtures every folder may use live in tests/support/ and are registered here once;
# a folder's own conftest.py holds only what its tests alone need.
pytest_plugins = [
    "tests.support.agent",
    "tests.support.agent_process",
    "tests.support.drift_reference",
    "tests.support.fleet_fixtures",
    "tests.support.webhooks",
]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of this test's own on a free port; the test may stop and restart it."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def durable_mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto that keeps sessions and queued messages across its own restart."""
    store = tmp_path / "mosquitto-store"
    store.mkdir()
    # `user root` stops mosquitto dropping to a user that cannot write the test's tmp dir.
    extra = f"persistence true\npersistence_location {store}/\n"
    if os.geteuid() == 0:
        extra += "user root\n"
    broker = MosquittoBroker(tmp_path / "mosquitto", extra_config=extra)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def shared_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One Mosquitto for the session, for tests that only publish and subscribe.

    Tests that share it must use `unique_id` in their device ids so they cannot collide.
    """
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto-shared"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def unique_id() -> str:
    """A short id unique to this test, for device ids and topics."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def wine_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A real ONNX classifier trained once per session on scikit-learn's wine data."""
    return train_wine_classifier(tmp_path_factory.mktemp("models") / "wine.onnx")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each fleet-store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    reason = pg.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pg.fresh_database() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A fresh fleet store on `database_url` (SQLite and PostgreSQL), disposed after."""
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def start_agent() -> Iterator[Callable[[AgentConfig], Agent]]:
    """Start in-process agents from their configs; every one is stopped after the test."""
    started: list[Agent] = []

    def start(config: AgentConfig) -> Agent:
        agent = Agent(config)
        agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(2.0)
