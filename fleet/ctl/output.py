"""How ``edgefleet ctl`` prints: aligned tables for people, JSON for scripts.

``--output json`` prints the API's answer as it came (`edgefleet.fleet.ctl.views.View.
as_json`; a list command prints the list of items), indented, keys sorted, one document
per command, so ``jq`` and scripts read it without knowing the tables. Pure: these
functions build strings; the commands print them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from edgefleet.fleet.ctl.views import View

EMPTY = "-"


def to_json(data: View | Sequence[View] | dict[str, Any]) -> str:
    """One JSON document: a view's API representation, or a list of them."""
    if isinstance(data, View):
        doc: Any = data.as_json()
    elif isinstance(data, dict):
        doc = data
    else:
        doc = [item.as_json() for item in data]
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell (the last one not padded), headers in
    capitals like ``kubectl get``; an empty table is just its header line."""
    cells = [[cell(h).upper() for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [value.ljust(widths[i]) for i, value in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """``key: value`` lines, keys aligned, for one object."""
    items = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}" for k, v in items)


def cell(value: object) -> str:
    """One value as a table cell: ``-`` for nothing, lists comma-joined, times in UTC
    to the second, one line."""
    if value is None or value in ("", [], ()):
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    return " ".join(str(value).split())


def size(length: int) -> str:
    """A byte count for people: ``512 B``, ``3.4 KiB``, ``12.0 MiB``."""
    value = float(length)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
