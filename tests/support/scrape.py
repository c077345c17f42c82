"""A live ``/metrics`` scrape, parsed with prometheus-client's own text parser.

`Scrape` holds every sample of one answer: ``value(name, **labels)`` is the value of the
sample with exactly those labels (None if absent), ``total(name, **labels)`` the sum over
the samples whose labels include those. Parsing with the library's parser (not a regex)
means a scrape that Prometheus could not read fails the test.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    content_type: str
    samples: tuple[Sample, ...]

    @property
    def names(self) -> set[str]:
        """Every sample name (``x_total``, ``x_bucket``: what PromQL selects)."""
        return {s.name for s in self.samples}

    def value(self, name: str, /, **labels: str) -> float | None:
        for s in self.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
        return None

    def total(self, name: str, /, **labels: str) -> float:
        return sum(
            float(s.value)
            for s in self.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


def scrape(url: str) -> Scrape:
    """GET ``url`` and parse it; raises AssertionError for a non-200 answer."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:200]}"
    families = text_string_to_metric_families(response.text)
    return Scrape(
        response.headers.get("content-type", ""),
        tuple(s for family in families for s in family.samples),
    )
