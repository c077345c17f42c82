"""The agent's ``GET /metrics``: rendered text Prometheus can parse, served for real by
the local API of a running agent."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.agent.daemon import Agent
from edgefleet.agent.exposition import AgentSample, families, render
from edgefleet.agent.update.machine import Phase
from edgefleet.shared.messages import LatencyPercentiles, ModelRef
from edgefleet.simulators.models import TrainedModel
from tests.fleet.publisher import wait_until
from tests.support.agent import agent_config, infer_until
from tests.support.mosquitto import MosquittoBroker
from tests.support.scrape import scrape


def _sample(**changes: object) -> AgentSample:
    values: dict[str, object] = {
        "inferences_total": 12,
        "errors_total": 1,
        "latency": LatencyPercentiles(p50_ms=2.0, p95_ms=5.0, p99_ms=9.5),
        "outbox_depth": 3,
        "outbox_dropped_total": 0,
        "drift_windows_total": 2,
        "connected": True,
        "uptime_s": 4.25,
        "active_model": ModelRef(name='odd "name"\\x', version="1.0.0"),
        "update_phase": Phase.PROBATION,
    } | changes
    return AgentSample(**values)  # type: ignore[arg-type]


def _parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_text_parses_back_to_the_sample_with_escaped_labels() -> None:
    parsed = _parsed(render(families(_sample())))
    assert parsed[("edgefleet_agent_inferences_total", ())] == 12
    assert parsed[("edgefleet_agent_inference_errors_total", ())] == 1
    assert parsed[("edgefleet_agent_inference_latency_seconds", (("quantile", "0.99"),))] == (
        pytest.approx(0.0095)
    )
    assert parsed[("edgefleet_agent_outbox_depth", ())] == 3
    assert parsed[("edgefleet_agent_uptime_seconds", ())] == 4.25
    info = ("edgefleet_agent_model_info", (("name", 'odd "name"\\x'), ("version", "1.0.0")))
    assert parsed[info] == 1
    phases = {
        labels[0][1]: v
        for (name, labels), v in parsed.items()
        if name == "edgefleet_agent_update_phase"
    }
    assert phases == {p.value: (1.0 if p is Phase.PROBATION else 0.0) for p in Phase}


def test_parts_not_running_are_left_out_rather_than_reported_as_zero() -> None:
    parsed = _parsed(render(families(_sample(latency=None, active_model=None, update_phase=None))))
    names = {name for name, _ in parsed}
    assert "edgefleet_agent_inference_latency_seconds" not in names
    assert "edgefleet_agent_model_info" not in names
    assert "edgefleet_agent_update_phase" not in names
    assert parsed[("edgefleet_agent_broker_connected", ())] == 1


def test_a_running_agent_serves_its_own_metrics_on_the_local_api(
    tmp_path: Path,
    shared_mosquitto: MosquittoBroker,
    unique_id: str,
    wine_model: TrainedModel,
    start_agent: object,
) -> None:
    config = agent_config(
        tmp_path,
        shared_mosquitto,
        f"metrics-{unique_id}",
        telemetry_interval_s=0.3,
        model={"path": str(wine_model.path), "name": "wine", "version": "1.0.0"},
    )
    agent: Agent = start_agent(config)  # type: ignore[operator]
    wait_until(lambda: agent.status.connected, what="the agent to connect")
    assert agent.api_port
    conn = http.client.HTTPConnection("127.0.0.1", agent.api_port, timeout=5)
    for row in wine_model.x_test[:7]:
        conn.request("POST", "/v1/predict", body=json.dumps({"inputs": {"input": [row.tolist()]}}))
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    conn.close()
    url = f"http://127.0.0.1:{agent.api_port}/metrics"

    # A scrape between telemetry intervals counts the inferences already.
    first = scrape(url)
    assert first.content_type.startswith("text/plain; version=0.0.4")
    assert first.value("edgefleet_agent_inferences_total") == 7
    assert first.value("edgefleet_agent_inference_errors_total") == 0
    assert first.value("edgefleet_agent_broker_connected") == 1
    assert first.value("edgefleet_agent_model_info", name="wine", version="1.0.0") == 1
    assert (first.value("edgefleet_agent_uptime_seconds") or 0) > 0
    assert first.value("edgefleet_agent_outbox_depth") is not None

    # Once telemetry closes an interval with inferences, their percentiles are there
    # (an idle interval has none: the gauge is left out rather than stale).
    stop = threading.Event()
    app = threading.Thread(target=infer_until, args=(agent, wine_model, stop))
    app.start()
    try:
        wait_until(
            lambda: (
                scrape(url).value("edgefleet_agent_inference_latency_seconds", quantile="0.5")
                is not None
            ),
            what="an interval with latencies",
        )
        during = scrape(url)
    finally:
        stop.set()
        app.join()
    p50 = during.value("edgefleet_agent_inference_latency_seconds", quantile="0.5") or 0
    p99 = during.value("edgefleet_agent_inference_latency_seconds", quantile="0.99") or 0
    assert 0 < p50 <= p99 < 1  # seconds
    # Scrapes are not inferences: with no app calling, the count stays put.
    settled = scrape(url).value("edgefleet_agent_inferences_total") or 0
    assert settled > 7
    assert scrape(url).value("edgefleet_agent_inferences_total") == settled
