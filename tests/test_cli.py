"""The ``mqttgate`` command as a user runs it: exit codes, one-line errors, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mqttgate import __version__

MQTTGATE = [sys.executable, "-m", "mqttgate"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MQTTGATE, *args], capture_output=True, text=True, timeout=60, env={**CLEAN_ENV, **(env or {})}
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mqttgate {__version__}"


def test_bad_flag_value_is_one_line_naming_the_flag_and_exit_2() -> None:
    result = run("serve", "--mqtt-listen", "nonsense")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--mqtt-listen" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_environment_value_names_the_variable() -> None:
    result = run("serve", env={"MQTTGATE_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mqttgate: error: MQTTGATE_LOG_FORMAT: 'xml' is not one of json, console"
    ]


def _read_events(proc: subprocess.Popen[str], until: str, timeout: float = 20.0) -> list[dict[str, object]]:
    assert proc.stdout is not None
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        event = json.loads(line)
        events.append(event)
        if event["event"] == until:
            return events
    raise AssertionError(f"no {until!r} event; got {[e['event'] for e in events]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_daemon_gracefully(signum: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*MQTTGATE, "serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--allow-anonymous", "true", "--forward", "off", "--shutdown-timeout", "5s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV,
    )
    try:
        events = _read_events(proc, "ready")
        ready = events[-1]
        assert ready["mqtt"] and ready["http"]
        for event in events:
            assert {"ts", "level", "event", "component"} <= event.keys()
            assert str(event["ts"]).endswith("Z")
        proc.send_signal(signum)
        rest = _read_events(proc, "stopped", timeout=10)
        assert proc.wait(timeout=10) == 0
        names = [e["event"] for e in rest]
        assert names[0] == "shutdown_requested"
        assert "shutdown_started" in names
        # A quiet daemon stops by itself, it does not wait out its deadline.
        assert "shutdown_deadline_exceeded" not in names
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_a_crashing_component_stops_the_daemon_with_an_error_event_and_exit_1() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(
            "serve", "--mqtt-listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0",
            "--allow-anonymous", "true", "--forward", "off",
        )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    crashed = [e for e in events if e["event"] == "crashed"]
    assert crashed and crashed[0]["level"] == "error"
    assert "Traceback" not in result.stderr


def test_sighup_without_tls_does_not_stop_the_daemon() -> None:
    proc = subprocess.Popen(
        [*MQTTGATE, "serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--allow-anonymous", "--forward", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV,
    )
    try:
        _read_events(proc, "ready")
        proc.send_signal(signal.SIGHUP)
        _read_events(proc, "sighup_ignored")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _read_events(proc, "stopped", timeout=10)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
