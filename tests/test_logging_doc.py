"""docs/logging.md lists exactly the events the code emits."""

from __future__ import annotations

import io
import json
import pathlib
import re

from mqttgate import logs

ROOT = pathlib.Path(__file__).parent.parent
# Call sites pass the event name as a literal first argument: log.info("client_connected", ...)
CALL = re.compile(r"\.(?:debug|info|warning|error|exception|critical)\(\s*\"([a-z][a-z0-9_]*)\"")
ROW = re.compile(r"^\|\s*`([a-z][a-z0-9_]*)`\s*\|", re.MULTILINE)


def events_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "mqttgate").rglob("*.py"):
        found.update(CALL.findall(path.read_text()))
    return found


def events_in_doc() -> set[str]:
    text = (ROOT / "docs" / "logging.md").read_text()
    return set(ROW.findall(text.split("## Events", 1)[1]))


def test_every_event_in_the_code_is_documented() -> None:
    missing = events_in_code() - events_in_doc()
    assert not missing, f"add these events to docs/logging.md: {sorted(missing)}"


def test_every_documented_event_exists_in_the_code() -> None:
    stale = events_in_doc() - events_in_code()
    assert not stale, f"docs/logging.md lists events the code no longer emits: {sorted(stale)}"


def test_records_are_json_with_the_stable_keys_and_no_secrets() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        logs.get_logger("test", conn_id=7).info("client_connected", password="hunter2", token="t")
        logs.get_logger("test").debug("not_written")
    finally:
        logs.configure("warning", "json")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert list(record)[:4] == ["ts", "level", "event", "component"]
    assert record["event"] == "client_connected"
    assert record["conn_id"] == 7
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", record["ts"])
    assert "hunter2" not in lines[0]
    assert record["password"] == "[redacted]"
