"""Graceful shutdown under load (issue 7 "Stopping it", issue 6 "Delivery
guarantees"): SIGTERM stops accepting, v5 clients get DISCONNECT 0x8B,
in-flight QoS 1/2 forwards finish, the forwarder flushes, the daemon exits 0
within ``MQTTGATE_SHUTDOWN_TIMEOUT``, and every message acknowledged to a
device (PUBACK, or PUBCOMP for QoS 2) is in JetStream exactly once.

The daemon runs as ``python -m mqttgate serve`` (a real SIGTERM, a real exit
status); paho clients publish from threads. Callbacks only record into
queues and lists; every assertion is in the test body.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import structlog
import trio
from paho.mqtt.enums import CallbackAPIVersion

from mqttgate.supervisor import run
from tests.broker import raw
from tests.conftest import JetStreamNames, make_config
from tests.forwarder.conftest import _aio_read_stream, nats_server_binary

MQTTGATE = [sys.executable, "-m", "mqttgate"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}
SERVER_SHUTTING_DOWN = 0x8B
#: paho's own in-flight window; the publisher threads keep exactly this many
#: QoS 1/2 messages unacknowledged (more would only queue inside paho).
WINDOW = 20


# ---------------------------------------------------------------- the daemon


class Daemon:
    """``mqttgate serve`` as a child process; a thread reads its JSON log lines
    (so a chatty shutdown never blocks on a full pipe)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*MQTTGATE, "serve", "--allow-anonymous", "true", "--mqtt-listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV,
        )  # fmt: skip
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "<not json>", "line": line})
        self.events.put({"event": "<eof>"})

    def wait_event(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            self.seen.append(event)
            if event["event"] == name:
                return event
            if event["event"] == "<eof>":
                raise AssertionError(f"no {name!r} before exit; got {[e['event'] for e in self.seen]}")

    def mqtt_port(self) -> int:
        ready = self.wait_event("ready")
        return int(ready["mqtt"][0].rsplit(":", 1)[1])

    def finish(self, timeout: float) -> tuple[int, list[dict[str, Any]]]:
        """Wait for the exit; its status and every log event."""
        returncode = self.proc.wait(timeout=timeout)
        self.wait_event("<eof>", timeout=5)
        self.seen.pop()  # the <eof> marker
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()
        return returncode, self.seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


# ---------------------------------------------------------------- the load


class Publisher:
    """One paho client publishing QoS 1 (and every 4th message QoS 2) as fast
    as its window allows, from its own thread, until stopped or disconnected."""

    def __init__(self, port: int, name: str, version: mqtt.MQTTProtocolVersion) -> None:
        self.name = name
        self.version = version
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=version)
        self.client.max_inflight_messages_set(WINDOW)
        self.window = threading.Semaphore(WINDOW)
        #: (payload, paho's MQTTMessageInfo), in publish order.
        self.sent: list[tuple[bytes, mqtt.MQTTMessageInfo]] = []
        #: (mid, reason code) of every PUBACK/PUBCOMP, from paho's thread.
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.connacks: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._publish_loop, daemon=True)
        c = self.client
        c.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.put(int(rc.value))
        c.on_publish = self._on_publish
        c.on_disconnect = self._on_disconnect
        #: paho's error log lines (why a connection was lost), for failure messages.
        self.errors: list[str] = []
        c.on_log = lambda _c, _u, level, text: self.errors.append(text) if level == mqtt.MQTT_LOG_ERR else None
        # The daemon is gone for good after the test: no reconnect storm.
        c.reconnect_delay_set(60, 120)
        c.connect("127.0.0.1", port, 60)
        c.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        self.acks.put((mid, int(rc.value)))
        self.window.release()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.disconnects.put(int(rc.value))
        self.disconnected.set()

    def start(self) -> None:
        assert self.connacks.get(timeout=10) == 0
        self.thread.start()

    def _publish_loop(self) -> None:
        n = 0
        while not self.stop.is_set() and not self.disconnected.is_set():
            if not self.window.acquire(timeout=0.2):
                continue
            payload = f"{self.name}-{n}".encode()
            qos = 2 if n % 4 == 3 else 1
            self.sent.append((payload, self.client.publish(f"load/{self.name}", payload, qos)))
            n += 1

    def acknowledged(self) -> list[bytes]:
        """Payloads whose PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived."""
        # rc != 0: not even sent (the connection was already closed).
        return [payload for payload, info in list(self.sent) if info.rc == 0 and info.is_published()]

    def ack_codes(self) -> list[int]:
        codes = []
        while True:
            try:
                codes.append(self.acks.get_nowait()[1])
            except queue.Empty:
                return codes

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    made: list[Publisher] = []
    yield made
    for publisher in made:
        publisher.close()


def read_stream(url: str, stream: str) -> list[bytes]:
    """Every payload stored in ``stream`` (plain asyncio: no daemon loop here)."""
    return [stored.data for stored in asyncio.run(_aio_read_stream(url, stream, 5.0))]


def names(events: list[dict[str, Any]]) -> list[str]:
    return [str(event["event"]) for event in events]


def after(events: list[dict[str, Any]], name: str) -> list[str]:
    """Event names from the first ``name`` on."""
    all_names = names(events)
    assert name in all_names, all_names
    return all_names[all_names.index(name) :]


# ---------------------------------------------------------------- tests


@pytest.mark.slow
def test_sigterm_under_load_keeps_every_acknowledged_message(
    jetstream: JetStreamNames, publishers: list[Publisher]
) -> None:
    timeout_s = 10.0
    daemon = Daemon(
        "--forward", "on", "--nats-url", jetstream.url, "--nats-stream", jetstream.stream,
        "--nats-subject-prefix", jetstream.prefix, "--nats-storage", "memory",
        "--shutdown-timeout", f"{timeout_s:g}s",
    )  # fmt: skip
    try:
        port = daemon.mqtt_port()
        for index, version in enumerate([mqtt.MQTTv311, mqtt.MQTTv5] * 3):
            tag = "v5" if version == mqtt.MQTTv5 else "v311"
            publishers.append(Publisher(port, f"pub{index}-{tag}", version))
        for publisher in publishers:
            publisher.start()
        # Load: until a good number of messages went all the way through
        # (at least 1 s, at most 10 s on a busy machine).
        started = time.monotonic()
        while True:
            acked = sum(len(p.acknowledged()) for p in publishers)
            elapsed = time.monotonic() - started
            if (acked >= 500 and elapsed >= 1.0) or elapsed >= 10.0:
                break
            time.sleep(0.05)
        assert acked >= 100, f"too little load before SIGTERM: {acked} acknowledged"
        assert not any(p.disconnected.is_set() for p in publishers)

        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        returncode, events = daemon.finish(timeout=timeout_s + 10)
        took = time.monotonic() - signalled
        for publisher in publishers:
            publisher.disconnected.wait(5)
            publisher.stop.set()
            publisher.thread.join(5)
    finally:
        daemon.close()

    assert returncode == 0, daemon.stderr
    assert "Traceback" not in daemon.stderr, daemon.stderr
    assert [e for e in events if e.get("level") == "error"] == []
    shutdown = after(events, "shutdown_requested")
    assert shutdown[-1] == "stopped"
    assert "shutdown_started" in shutdown and "forwarder_drained" in shutdown
    assert "shutdown_deadline_exceeded" not in shutdown
    assert took < timeout_s, f"exit took {took:.1f}s"
    drained = next(e for e in events if e["event"] == "forwarder_drained")
    assert drained["failed"] == 0 and drained["pending"] == 0, drained

    for publisher in publishers:
        # Every client was told: v5 with DISCONNECT 0x8B (v5 [MQTT-3.14.2-1]
        # reason 0x8B Server shutting down); 3.1.1 has no DISCONNECT from the
        # server, its connection is closed.
        assert publisher.disconnected.is_set(), publisher.name
        codes = []
        while not publisher.disconnects.empty():
            codes.append(publisher.disconnects.get_nowait())
        closed = [e for e in events if e.get("client_id") == publisher.name and e["event"] == "client_disconnected"]
        assert [e["reason"] for e in closed] == ["SERVER_SHUTTING_DOWN"], publisher.name
        if publisher.version == mqtt.MQTTv5:
            # Also while paho is still writing PUBLISHes: the broker half-closes
            # and lingers instead of resetting (the last test of this file).
            assert codes[0] == SERVER_SHUTTING_DOWN, json.dumps([publisher.name, codes, publisher.errors])
        # A healthy NATS: no acknowledgement carries a failure reason.
        assert [code for code in publisher.ack_codes() if code >= 0x80] == [], publisher.name

    acknowledged = [payload for p in publishers for payload in p.acknowledged()]
    assert len(acknowledged) >= 100
    # Some publishes were cut off by the shutdown (in flight, never acknowledged).
    assert sum(len(p.sent) for p in publishers) > len(acknowledged)

    stored = read_stream(jetstream.url, jetstream.stream)
    counts = collections.Counter(stored)
    missing = [payload for payload in acknowledged if payload not in counts]
    assert missing == [], f"{len(missing)} acknowledged messages not in JetStream, e.g. {missing[:5]}"
    # Exactly once (Nats-Msg-Id de-duplication), acknowledged or not.
    assert [payload for payload, n in counts.items() if n > 1] == []


# ---------------------------------------------------------------- NATS paused


class PausedNats:
    """A private nats-server we SIGSTOP (sync twin of tests/forwarder's PrivateNats)."""

    def __init__(self, store_dir: str) -> None:
        ports_dir = os.path.join(store_dir, "ports")
        os.makedirs(ports_dir)
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", store_dir,
             "--ports_file_dir", ports_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ports_file = os.path.join(ports_dir, f"nats-server_{self.proc.pid}.ports")
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, "nats-server exited"
            try:
                with open(ports_file) as f:
                    listening = json.load(f)["nats"][0]
                break
            except (OSError, ValueError, KeyError, IndexError):
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.02)  # its ports file appears in ~30 ms
        self.url = "nats://127.0.0.1:" + listening.rsplit(":", 1)[1]

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def paused_nats() -> Iterator[PausedNats]:
    with tempfile.TemporaryDirectory(prefix="mqttgate-shutdown-nats-") as store_dir:
        server = PausedNats(store_dir)
        try:
            yield server
        finally:
            server.stop()


@pytest.mark.slow
def test_sigterm_with_nats_paused_acknowledges_nothing_and_exits_by_the_deadline(
    paused_nats: PausedNats, publishers: list[Publisher]
) -> None:
    timeout_s = 3.0
    daemon = Daemon(
        "--forward", "on", "--nats-url", paused_nats.url, "--nats-stream", "SHUTDOWN",
        "--nats-subject-prefix", "shutdown", "--nats-storage", "memory",
        # Longer than the shutdown: no failure acks either, the messages are
        # simply still in flight when the deadline passes.
        "--forward-timeout", "30s", "--shutdown-timeout", f"{timeout_s:g}s",
    )  # fmt: skip
    try:
        port = daemon.mqtt_port()  # the stream exists: ready comes after the forwarder's setup
        paused_nats.pause()
        for index, version in enumerate([mqtt.MQTTv311, mqtt.MQTTv5]):
            publishers.append(Publisher(port, f"paused{index}", version))
        for publisher in publishers:
            publisher.start()
        # Each client fills its window; nothing comes back while NATS is paused.
        deadline = time.monotonic() + 10
        while any(len(p.sent) < WINDOW for p in publishers):
            assert time.monotonic() < deadline, [len(p.sent) for p in publishers]
            time.sleep(0.05)
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        returncode, events = daemon.finish(timeout=timeout_s + 15)
        took = time.monotonic() - signalled
        for publisher in publishers:
            publisher.disconnected.wait(5)
    finally:
        paused_nats.resume()
        daemon.close()

    # Documented (docs/operations.md "Graceful shutdown"): the deadline cancels
    # what is left, says so, and the exit is still a clean one (status 0).
    assert returncode == 0, daemon.stderr
    assert "Traceback" not in daemon.stderr, daemon.stderr
    shutdown = after(events, "shutdown_requested")
    assert "shutdown_deadline_exceeded" in shutdown
    assert shutdown[-1] == "stopped"
    assert took < timeout_s + 1.0, f"exit took {took:.1f}s for a {timeout_s:g}s shutdown timeout"

    # Nothing was acknowledged to the devices...
    assert [p.acknowledged() for p in publishers] == [[], []]
    assert all(p.disconnected.is_set() for p in publishers)
    # The deadline ends the wait for the acks; the v5 client is still told why.
    v5 = publishers[1]
    assert v5.version == mqtt.MQTTv5 and v5.disconnects.get_nowait() == SERVER_SHUTTING_DOWN
    # ...so nothing acknowledged can be missing, whatever NATS stores once it
    # resumes (what it had received may be stored: at least once, not acked).
    stored = read_stream(paused_nats.url, "SHUTDOWN")
    assert len(stored) <= sum(len(p.sent) for p in publishers)
    assert len(set(stored)) == len(stored)


# ---------------------------------------------------------------- in process


async def test_a_quiet_daemon_with_forwarding_stops_well_before_its_deadline(
    jetstream: JetStreamNames,
) -> None:
    config = make_config(
        forward=True, nats_url=jetstream.url, nats_stream=jetstream.stream,
        nats_subject_prefix=jetstream.prefix, nats_storage="memory", shutdown_timeout=10.0,
    )  # fmt: skip
    shutdown = trio.Event()
    with structlog.testing.capture_logs() as logged:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: run(
                config, shutdown=shutdown, install_signal_handlers=False, task_status=task_status
            ))  # fmt: skip
            started = trio.current_time()
            shutdown.set()
        took = trio.current_time() - started
    assert took < 2.0, f"a quiet daemon took {took:.1f}s to stop"
    assert "shutdown_deadline_exceeded" not in [entry["event"] for entry in logged]


def test_a_v5_client_still_sending_gets_disconnect_0x8b_and_an_orderly_close() -> None:
    """Regression: the broker used to close a socket with unread input, so the
    kernel sent RST instead of FIN and paho, still writing, reported EPIPE or
    ECONNRESET (0x80) instead of the DISCONNECT 0x8B it had received. The
    broker now half-closes and lingers (broker/connection.py ``_linger``)."""
    # A child process: in process, the sender thread and the broker share the
    # GIL and the broker closes before any more input arrives.
    daemon = Daemon("--forward", "off", "--shutdown-timeout", "5s")
    stop = threading.Event()
    sending = threading.Event()
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", daemon.mqtt_port()), timeout=5)
        sock.sendall(raw.connect("still-sending", version=5))
        connack = sock.recv(1024)
        assert connack[0] == 0x20 and connack[3] == 0x00, connack  # CONNACK, Success
        publish = raw.publish("nobody/listens", b"x" * 1000, v5=True) * 16

        def blast() -> None:
            # Like paho under load: keep writing, whatever the server does.
            try:
                while not stop.is_set():
                    sock.sendall(publish)
                    sending.set()
            except OSError:
                pass

        threading.Thread(target=blast, daemon=True).start()
        assert sending.wait(5)
        daemon.proc.send_signal(signal.SIGTERM)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError as error:
                ending = type(error).__name__
                break
            if not chunk:
                ending = "eof"
                break
            data += chunk
        returncode, _ = daemon.finish(timeout=10)
    finally:
        stop.set()
        if sock is not None:
            sock.close()
        daemon.close()
    assert returncode == 0
    # The DISCONNECT arrives either way (what is queued at the client stays
    # readable after a reset)...
    assert data[:1] == b"\xe0" and data[2] == SERVER_SHUTTING_DOWN, data[:16]
    # ...but a client that writes before it reads (paho) only gets to it after a FIN.
    assert ending == "eof"
