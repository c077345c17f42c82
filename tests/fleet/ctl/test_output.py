"""Tables for people and JSON for scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edgefleet.fleet.ctl import output
from edgefleet.fleet.ctl.views import Device


def test_table_aligns_columns_and_capitalises_headers() -> None:
    text = output.table(
        ["device", "online", "tags"], [("pi-01", True, ["a", "b"]), ("x", False, [])]
    )
    assert text.splitlines() == [
        "DEVICE  ONLINE  TAGS",
        "pi-01   yes     a,b",
        "x       no      -",
    ]


def test_an_empty_table_is_its_header() -> None:
    assert output.table(["alert", "kind"], []) == "ALERT  KIND"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "-"),
        ("", "-"),
        ("two\nlines\tand  tabs", "two lines and tabs"),
        (
            datetime(2026, 1, 2, 3, 4, 5, 999, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02 01:04:05",
        ),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02 03:04:05"),
        (3, "3"),
        (("a", None), "a,-"),
    ],
)
def test_cells_are_one_line(value: object, shown: str) -> None:
    assert output.cell(value) == shown


@pytest.mark.parametrize(
    ("length", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**4, "3072.0 GiB"),
    ],
)
def test_sizes_are_in_binary_units(length: int, shown: str) -> None:
    assert output.size(length) == shown


def test_json_keeps_fields_the_command_line_does_not_declare() -> None:
    device = Device.model_validate(
        {
            "device_id": "pi-01",
            "online": True,
            "platform": {"os": "linux"},
            "first_seen": "2026-01-01T00:00:00Z",
        }
    )
    doc = json.loads(output.to_json([device]))
    assert doc[0]["platform"] == {"os": "linux"}
    assert doc[0]["first_seen"] == "2026-01-01T00:00:00Z"
    assert json.loads(output.to_json(device))["device_id"] == "pi-01"


def test_fields_align_keys() -> None:
    assert output.fields([("a", 1), ("long key", None)]) == "a:        1\nlong key: -"
