"""The metric names a PromQL expression selects, and the queries of a Grafana dashboard.

Not a PromQL parser: enough of the lexical structure to find every metric name in the
expressions we write. What is removed before looking for names: string literals (label
values, ``legendFormat``-like strings), range and subquery brackets (``[5m]``,
``[$__rate_interval]``, ``[1h:5m]``), label matchers (``{score="psi"}``), the label lists
of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``, Grafana
variables (``$__rate_interval``, ``${datasource}``), numbers and durations after
``offset``. What remains is an identifier per name, function, aggregation or keyword; a
function or aggregation is followed by ``(`` and a keyword is in `KEYWORDS`, so the rest
are metric names, as written (``x_bucket``, ``x_total``: the sample names to look for in
a scrape).

``__name__`` matchers (``{__name__="x"}``) are not supported; `metric_names` raises
`ValueError` for one, rather than silently checking nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACKETS = re.compile(r"\[[^\]]*\]")
_MATCHERS = re.compile(r"\{[^}]*\}")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)", re.I)
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects. Raises `ValueError` for a ``__name__`` matcher."""
    if "__name__" in expr:
        raise ValueError(f"__name__ matchers are not supported: {expr!r}")
    text = _STRING.sub(" ", expr)
    text = _BRACKETS.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(name)
    return names


def dashboard_queries(path: Path) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every Prometheus query in a Grafana dashboard file,
    in rows and nested panels too."""
    document = json.loads(path.read_text())

    def panels(items: list[Any]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(document.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", "?"), target["expr"]
