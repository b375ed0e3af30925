"""agent/logs.py: the text and JSON line formats of `run`, `csi` and `controller`, and reconfiguration."""

import io
import json
import logging
import re

import pytest

from agent.logs import JSONFormatter, configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_log_lines():
    record = logging.LogRecord("selinux-mount-agent", logging.INFO, __file__, 1, "staged %s", ("vol-1",), None)
    record.volume = "vol-1"
    entry = json.loads(JSONFormatter().format(record))
    assert entry["msg"] == "staged vol-1" and entry["level"] == "info" and entry["volume"] == "vol-1"
    assert entry["time"].endswith("Z") and entry["logger"] == "selinux-mount-agent"


def test_json_lines_carry_the_error_and_stringify_other_values():
    try:
        raise OSError(5, "Input/output error")
    except OSError as err:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), (OSError, err, err.__traceback__))
    record.path = ["/a", "/b"]
    entry = json.loads(JSONFormatter().format(record))
    assert entry["path"] == "['/a', '/b']" and "OSError: [Errno 5] Input/output error" in entry["error"]


def test_text_lines_are_time_level_logger_message(restore_logging):
    stream = io.StringIO()
    configure_logging("text", "info", stream)
    logging.getLogger("selinux-mount-agent").info("started %s", "csi")
    logging.getLogger("selinux-mount-agent").debug("not shown at info")
    [line] = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO selinux-mount-agent: started csi", line), line


def test_configuring_again_replaces_the_handler(restore_logging):
    first, second = io.StringIO(), io.StringIO()
    configure_logging("text", "info", first)
    configure_logging("json", "debug", second)
    logging.getLogger("selinux-mount-agent").debug("once")
    assert first.getvalue() == "" and json.loads(second.getvalue())["msg"] == "once"
    assert len(logging.getLogger().handlers) == 1
