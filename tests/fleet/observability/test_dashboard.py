"""The Grafana dashboard's shape, and the PromQL name finder that the live check uses.

The check against a running fleet's scrape is in `test_live_scrape`; here the finder is
tested on the shapes the dashboard uses and on the ones that would fool a naive one, and
the dashboard on what an import needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.promql import dashboard_queries, metric_names

DASHBOARD = Path(__file__).parents[3] / "packaging/grafana/edgefleet-fleet.json"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            'sum by (state) (edgefleet_rollout_devices{state!="pending"})',
            {"edgefleet_rollout_devices"},
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(x_seconds_bucket[$__rate_interval])))",
            {"x_seconds_bucket"},
        ),
        ("rate(a_total[5m] offset 1h) / on (job) group_left (kind) b_info", {"a_total", "b_info"}),
        ('max_over_time(x{slice="tag:by (x)"}[1h:5m])', {"x"}),
        ("sum without (instance) (c_total) > bool 2e3 and d unless e", {"c_total", "d", "e"}),
        ("${metric_var} + 1", set()),
        ("topk(5, sum by (model) (edgefleet_drift_score))", {"edgefleet_drift_score"}),
        ("namespace:x_total:rate5m", {"namespace:x_total:rate5m"}),
    ],
)
def test_metric_names_are_what_the_expression_selects(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_name_matcher_is_refused_rather_than_checked_for_nothing() -> None:
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"edgefleet_.*"}')


def test_the_dashboard_has_panels_for_every_part() -> None:
    queried = {n for _, expr in dashboard_queries(DASHBOARD) for n in metric_names(expr)}
    for prefix in (
        "edgefleet_rollout_",
        "edgefleet_drift_",
        "edgefleet_director_",
        "edgefleet_repository_",
        "edgefleet_ingest_lag_",
    ):
        assert any(n.startswith(prefix) for n in queried), prefix


def test_the_dashboard_imports_anywhere() -> None:
    document = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    ids: list[int] = []
    for panel in _panels(document["panels"]):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        # Every query goes to the chosen data source, none to one named on our machine.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in targets)
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
    assert len(ids) == len(set(ids))


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))
