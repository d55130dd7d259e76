"""``mqttgate logs``: filters, formats, prefixes, non-JSON lines, exit codes."""

from __future__ import annotations

import datetime
import io
import json
import pathlib
import subprocess
import sys

import pytest

from mqttgate.__main__ import build_parser
from mqttgate.logtool import parse_line, parse_when, run

UTC = datetime.UTC


def rec(ts: str, level: str, event: str, component: str = "broker", **fields: object) -> str:
    return json.dumps({"ts": ts, "level": level, "event": event, "component": component, **fields})


LINES = [
    rec("2026-11-29T08:00:00.000001Z", "info", "starting", "supervisor", config={"log_level": "info"}),
    rec("2026-11-29T08:00:01Z", "info", "client_connected", device_id="dev-a", client_id="c-a", peer="10.0.0.1:4000"),
    rec("2026-11-29T08:00:02Z", "info", "connect_denied", "auth", why="bad_password", reason="NOT_AUTHORIZED", mqtt_user="user-b", peer="10.0.0.2:5000"),
    "Traceback (most recent call last):",
    rec("2026-11-29T08:05:00Z", "warning", "forward_failed", client_id="c-a", detail="timeout"),
    rec("2026-11-29T08:10:00Z", "error", "crashed", "supervisor", error="RuntimeError('x')", exception="Traceback...\n  boom"),
    "",
    rec("2026-11-29T08:10:01Z", "info", "client_disconnected", client_id="c-a", reason="client_disconnect"),
]


def logs(*argv: str, lines: list[str] = LINES) -> tuple[int, list[str], str]:
    args = build_parser().parse_args(["logs", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run(args, stdin=io.StringIO("\n".join(lines) + "\n"), stdout=out, stderr=err)
    return code, out.getvalue().splitlines(), err.getvalue()


def events_of(output: list[str]) -> list[str]:
    return [json.loads(line)["event"] for line in output]


def test_parser_is_wired_into_the_cli() -> None:
    args = build_parser().parse_args(["logs", "--event", "x"])
    assert args.run is run


def test_no_filter_prints_every_record_and_reports_skipped_lines() -> None:
    code, out, err = logs("--json")
    assert code == 0
    assert events_of(out) == [
        "starting", "client_connected", "connect_denied", "forward_failed", "crashed", "client_disconnected",
    ]
    assert "skipped 1 line" in err


def test_keep_other_passes_non_json_lines_through() -> None:
    code, out, err = logs("--keep-other")
    assert code == 0
    assert "Traceback (most recent call last):" in out
    assert err == ""


def test_event_filter_repeatable_and_comma_separated() -> None:
    assert events_of(logs("--json", "--event", "crashed", "--event", "starting")[1]) == ["starting", "crashed"]
    assert events_of(logs("--json", "--event", "crashed,starting")[1]) == ["starting", "crashed"]


def test_level_is_a_minimum() -> None:
    assert events_of(logs("--json", "--level", "warning")[1]) == ["forward_failed", "crashed"]
    assert events_of(logs("--json", "--level", "error")[1]) == ["crashed"]


def test_device_matches_device_id_or_mqtt_user() -> None:
    assert events_of(logs("--json", "--device", "dev-a")[1]) == ["client_connected"]
    # The example: who was denied.
    code, out, _ = logs("--json", "--device", "user-b", "--event", "connect_denied")
    assert code == 0
    assert [json.loads(line)["why"] for line in out] == ["bad_password"]


def test_client_id_and_component() -> None:
    assert events_of(logs("--json", "--client-id", "c-a")[1]) == [
        "client_connected", "forward_failed", "client_disconnected",
    ]
    assert events_of(logs("--json", "--component", "supervisor")[1]) == ["starting", "crashed"]


def test_since_until_absolute() -> None:
    out = logs("--json", "--since", "2026-11-29T08:00:01Z", "--until", "2026-11-29T08:05:00Z")[1]
    assert events_of(out) == ["client_connected", "connect_denied", "forward_failed"]


def test_since_relative_age() -> None:
    now = datetime.datetime.now(UTC)
    recent = rec((now - datetime.timedelta(minutes=2)).isoformat(), "info", "recent")
    old = rec((now - datetime.timedelta(hours=2)).isoformat(), "info", "old")
    assert events_of(logs("--json", "--since", "10m", lines=[old, recent])[1]) == ["recent"]


def test_parse_when_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_when("yesterday", datetime.datetime.now(UTC))
    code, out, err = logs("--since", "yesterday")
    assert code == 2
    assert out == []
    assert "yesterday" in err


def test_readable_format() -> None:
    out = logs("--event", "connect_denied")[1]
    assert out == [
        "2026-11-29T08:00:02Z INFO    auth       connect_denied why=bad_password reason=NOT_AUTHORIZED "
        "mqtt_user=user-b peer=10.0.0.2:5000"
    ]
    starting = logs("--event", "starting")[1][0]
    assert starting.endswith('starting config={"log_level":"info"}')
    crashed = logs("--event", "crashed")[1]
    assert crashed[0].endswith("crashed error=RuntimeError('x')")
    assert crashed[1:] == ["    Traceback...", "      boom"]


def test_kubectl_and_compose_prefixes_are_understood() -> None:
    lines = [
        "[pod/mqttgate-7d9/mqttgate] " + rec("2026-11-29T08:00:01Z", "info", "client_connected", device_id="d1"),
        "mqttgate-1  | " + rec("2026-11-29T08:00:02Z", "info", "client_connected", device_id="d2"),
    ]
    assert events_of(logs("--json", "--device", "d2", lines=lines)[1]) == ["client_connected"]
    readable = logs("--device", "d1", lines=lines)[1]
    assert readable[0].startswith("[pod/mqttgate-7d9/mqttgate] 2026-11-29T08:00:01Z INFO")


def test_json_without_event_is_not_a_record() -> None:
    assert parse_line('{"not": "a log record"}') is None
    assert parse_line("[1, 2]") is None
    assert parse_line('prefix {"event": "x"}') is not None


def test_files_and_stdin(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.log"
    path.write_text(LINES[1] + "\n")
    args = build_parser().parse_args(["logs", "--json", str(path), "-"])
    out = io.StringIO()
    code = run(args, stdin=io.StringIO(LINES[2] + "\n"), stdout=out, stderr=io.StringIO())
    assert code == 0
    assert events_of(out.getvalue().splitlines()) == ["client_connected", "connect_denied"]


def test_command_line_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mqttgate", "logs", "--event", "connect_denied", "--json"],
        input="\n".join(LINES) + "\n", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert events_of(result.stdout.splitlines()) == ["connect_denied"]
