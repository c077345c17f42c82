"""`edgefleet.shared.logs`: the JSON line's fields, the ids it picks up, the format choice."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from edgefleet.shared import logs
from edgefleet.shared.cli import build_parser


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("tests.shared.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)
    log.propagate = True
    logs._process_fields.clear()


@pytest.fixture
def text_format() -> Iterator[None]:
    yield
    logs._active["format"] = "text"


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_ts_level_logger_and_the_formatted_message(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    log.warning("device %s sent %d bytes", "d1", 12)
    [line] = lines(stream)
    assert line["level"] == "WARNING"
    assert line["logger"] == "tests.shared.logs"
    assert line["msg"] == "device d1 sent 12 bytes"
    assert str(line["ts"]).endswith("+00:00")
    assert "request_id" not in line
    assert "device_id" not in line


def test_request_and_device_ids_come_from_the_context_and_extra_wins(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    request = logs.REQUEST_ID.set("req-1")
    device = logs.DEVICE_ID.set("dev-ctx")
    try:
        log.info("one")
        log.info("two", extra={"device_id": "dev-extra", "rollout_id": "r1", "secret": "x"})
    finally:
        logs.REQUEST_ID.reset(request)
        logs.DEVICE_ID.reset(device)
    one, two = lines(stream)
    assert (one["request_id"], one["device_id"]) == ("req-1", "dev-ctx")
    assert (two["device_id"], two["rollout_id"]) == ("dev-extra", "r1")
    assert "secret" not in two  # only the fields meant for lines


def test_process_fields_reach_lines_logged_from_other_threads(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    logs.set_process_fields(device_id="cam-7")
    worker = threading.Thread(target=lambda: log.info("from a thread"))
    worker.start()
    worker.join()
    assert lines(stream)[0]["device_id"] == "cam-7"


def test_tracebacks_and_unencodable_or_bad_arguments_never_break_a_line(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    log.info("value %s", object(), extra={"seq": {1, 2}})
    failed, value = lines(stream)
    assert "RuntimeError: boom" in str(failed["exc"])
    assert str(value["seq"]).startswith("{1, 2}")
    # Formatted directly: a logging handler would report the bad call on its own.
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("nan",), None)
    assert "unformattable" in json.loads(logs.JsonFormatter().format(bad))["msg"]


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, None, "text"),
        (None, "json", "json"),
        (None, " JSON ", "json"),
        ("text", "json", "text"),
        ("json", None, "json"),
    ],
)
def test_the_flag_wins_over_the_environment(
    flag: str | None, env: str | None, expected: str
) -> None:
    environ = {} if env is None else {logs.ENV_VAR: env}
    assert logs.resolve_format(flag, environ) == expected


def test_an_unknown_format_names_where_it_came_from() -> None:
    with pytest.raises(logs.LogFormatError, match="EDGEFLEET_LOG_FORMAT must be one of text, json"):
        logs.resolve_format(None, {logs.ENV_VAR: "xml"})


def test_both_daemons_take_the_flag_after_their_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["agent", "run", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["fleet", "serve", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["--log-format", "json", "fleet", "serve"]).log_format == "json"
    assert parser.parse_args(["fleet", "serve"]).log_format is None


def test_configure_switches_the_root_format_and_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        first, second = io.StringIO(), io.StringIO()
        logs.configure(logging.INFO, "text", first)
        logs.configure(logging.INFO, "json", second)
        logging.getLogger("tests.configure").info("hello")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["msg"] == "hello"
        assert len(root.handlers) == 1
    finally:
        root.handlers, level = saved
        root.setLevel(level)


def test_console_lines_follow_the_configured_format(text_format: None) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        plain, as_json = io.StringIO(), io.StringIO()
        logs.configure(logging.WARNING, "text", io.StringIO())
        logs.console("fleet at http://x", plain, url="http://x")
        logs.configure(logging.WARNING, "json", io.StringIO())
        logs.console("fleet at http://x", as_json, url="http://x")  # shown at any level
    finally:
        root.handlers, level = saved
        root.setLevel(level)
    assert plain.getvalue() == "fleet at http://x\n"
    line = json.loads(as_json.getvalue())
    assert (line["msg"], line["url"], line["logger"]) == (
        "fleet at http://x",
        "http://x",
        "edgefleet.console",
    )
