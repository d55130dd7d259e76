"""The documentation's examples, run the way a user copies them.

Each tested block carries an invisible ``<!-- tested: NAME ... -->`` comment
on the line before its fence (README.md, docs/nats.md, docs/operations.md).
The block is taken from the markdown as it is, and only what cannot be the
same here is substituted: ports and URLs (the daemon binds free ports), the
token file's path, the JetStream stream and subject prefix (the NATS server is
shared), ``kubectl logs deploy/mqttgate`` (a log file this test's daemon
wrote), and the placeholders a user fills in (MQTT_USER, a device id). A
substitution that no longer finds its text fails the test: the example changed
and this file must follow.

One real daemon (``python -m mqttgate serve``: PostgreSQL, NATS JetStream, the
TLS listener, debug logs to a file) serves the whole module; the clients are
the real curl, jq, mosquitto_pub and mosquitto_sub, and the consumer example
runs as its own Python process. Docker and kubectl blocks are not run here
(tests/ops/test_deploy.py checks the manifests).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme

from tests.broker.raw import frame
from tests.conftest import RUN_ID
from tests.forwarder.conftest import Stored, _aio_read_stream

ROOT = Path(__file__).resolve().parent.parent
#: The marker line, then the fenced block right after it.
TESTED_BLOCK = re.compile(r"^<!-- tested: (\S+)[^\n]*-->\n```[\w-]*\n(.*?)^```", re.S | re.M)
#: The device id the docs use as their example (docs/nats.md "Subjects").
DOC_DEVICE_ID = "65f0c2a1e4b0a1b2c3d4e5f6"
TOOLS = ("bash", "curl", "jq", "mosquitto_pub", "mosquitto_sub")
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}
#: The venv's `mqttgate` first, as after `pip install` in an activated venv.
CLEAN_ENV["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

Record = dict[str, Any]


# ---------------------------------------------------------------- the markdown


def example(doc: str, name: str) -> str:
    """The fenced block after ``<!-- tested: name -->`` in ``doc``."""
    blocks = {m.group(1): m.group(2) for m in TESTED_BLOCK.finditer((ROOT / doc).read_text())}
    assert name in blocks, f"{doc}: no fenced block right after <!-- tested: {name} -->"
    return blocks[name]


def substitute(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, f"the example no longer contains {old!r}; update tests/test_docs_examples.py"
        text = text.replace(old, new)
    return text


def commands(block: str) -> list[str]:
    """The block's shell commands: comments dropped, backslash continuations joined."""
    out: list[str] = []
    current = ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1]
            continue
        out.append(current + line)
        current = ""
    return out


def sh(script: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run ``script`` with bash as a user's shell would (pipefail, so a failing
    ``mqttgate logs`` is not hidden by the ``jq`` after it); its stdout."""
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True, text=True, timeout=30, env={**CLEAN_ENV, **(env or {})},
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"$ {script}\nexit {result.returncode}\n{result.stderr}"
    return result.stdout


# ---------------------------------------------------------------- the daemon


@attrs.frozen
class Daemon:
    process: subprocess.Popen[bytes]
    args: tuple[str, ...]
    log: Path
    token_file: Path
    ca_file: Path
    cert_file: Path
    mqtt_port: int
    mqtts_port: int
    http_url: str
    nats_url: str
    stream: str
    prefix: str

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def records(self) -> list[Record]:
        # The last piece is empty or a line still being written.
        return [json.loads(line) for line in self.log.read_text().split("\n")[:-1]]

    def wait_for(self, what: str, predicate: Callable[[Record], bool], timeout: float = 15) -> Record:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if predicate(record):
                    return record
            assert self.process.poll() is None, f"the daemon exited ({self.process.returncode})"
            time.sleep(0.05)
        raise AssertionError(f"no {what} in the daemon's log")

    def provision(self) -> dict[str, str]:
        request = urllib.request.Request(
            self.http_url + "/devices", data=b'{"type": "thermometer"}', method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            reply: dict[str, str] = json.load(response)
        return reply

    def stored(self) -> list[Stored]:
        return asyncio.run(_aio_read_stream(self.nats_url, self.stream, 5.0))


@pytest.fixture(scope="module")
def daemon(database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install curl jq mosquitto-clients", pytrace=False)
    tmp = tmp_path_factory.mktemp("docs")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert_file, key_file, ca_file = tmp / "tls.crt", tmp / "tls.key", tmp / "ca.crt"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    stream, prefix = f"MQTTGATE_T{RUN_ID}_DOCS".upper(), f"t{RUN_ID}docs"
    args = (
        "--database-url", database_url, "--api-token-file", str(tmp / "api-token"),
        "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--mqtts-listen", "127.0.0.1:0", "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
        "--tls-reload-interval", "0",  # only SIGHUP reloads: the test breaks the file on purpose
        "--nats-url", nats_url, "--nats-stream", stream, "--nats-subject-prefix", prefix,
        "--log-level", "debug", "--shutdown-timeout", "5s",
    )  # fmt: skip
    log = tmp / "mqttgate.log"
    with open(log, "wb") as stdout, open(tmp / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mqttgate", "serve", *args], stdout=stdout, stderr=stderr, env=CLEAN_ENV
        )
    try:
        partial = Daemon(process, args, log, tmp / "api-token", ca_file, cert_file, 0, 0, "", nats_url, stream, prefix)
        ready = partial.wait_for("ready event", lambda r: r["event"] == "ready", timeout=30)
        [mqtt] = [a for a in ready["mqtt"] if a.startswith("mqtt://")]
        [mqtts] = [a for a in ready["mqtt"] if a.startswith("mqtts://")]
        yield attrs.evolve(
            partial,
            mqtt_port=int(mqtt.rsplit(":", 1)[1]),
            mqtts_port=int(mqtts.rsplit(":", 1)[1]),
            http_url=ready["http"][0],
        )
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mqtt_login(port: int, client_id: str, user: str, password: str) -> socket.socket:
    """A 3.1.1 connection from hand-written bytes that stays open (no client
    library that would reconnect after a takeover or a kick)."""

    def s(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()

    # v311 [MQTT-3.1.2-3]: flags 0xC2 = user name, password, clean session.
    body = s("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big") + s(client_id) + s(user) + s(password)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(frame(0x10, body))
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        assert chunk, "connection closed before CONNACK"
        connack += chunk
    assert connack == b"\x20\x02\x00\x00", connack  # CONNACK, no session present, accepted
    return sock


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


# ---------------------------------------------------------------- README quickstart


def test_readme_quickstart_provisions_and_publishes(daemon: Daemon) -> None:
    block = example("README.md", "quickstart-provision")
    token_line, curl, mosquitto = commands(block)
    provision = substitute(
        token_line + "\n" + curl,
        ("~/.local/share/mqttgate/api-token", str(daemon.token_file)),
        ("http://127.0.0.1:9091", daemon.http_url),
    )
    printed = sh(provision).strip()
    # The output comment is what curl prints, "..." standing for the values.
    [comment] = [line.removeprefix("# -> ") for line in block.splitlines() if line.startswith("# -> ")]
    assert re.fullmatch(re.escape(comment).replace(re.escape("..."), '[^"]+'), printed), (printed, comment)
    device = json.loads(printed)

    sh(substitute(
        mosquitto,
        ("-p 1883", f"-p {daemon.mqtt_port}"),
        ("MQTT_USER", device["mqtt_user"]), ("MQTT_PASSWORD", device["mqtt_password"]),
    ))  # fmt: skip

    # "The message lands in the JetStream stream `MQTT` on subject `mqtt.<device id>...`"
    readme = (ROOT / "README.md").read_text()
    template = re.search(r"stream `MQTT` on subject\s+`([^`]+)`", readme)
    assert template is not None, "README: the sentence naming the subject changed"
    subject = substitute(
        template.group(1),
        ("mqtt.", daemon.prefix + "."), ("<device id>", device["id"]), ("<mqtt_user>", device["mqtt_user"]),
    )  # fmt: skip
    stored = [m for m in daemon.stored() if m.subject == subject]
    assert [m.data for m in stored] == [b'{"t": 21.5}']  # QoS 1: stored before mosquitto_pub got PUBACK
    assert stored[0].headers["Mqtt-Device-Id"] == device["id"]


# ---------------------------------------------------------------- docs/nats.md consumer


def test_nats_consumer_example_prints_device_topic_and_payload(daemon: Daemon, tmp_path: Path) -> None:
    code = substitute(
        example("docs/nats.md", "nats-consumer"),
        ('"nats://127.0.0.1:4222"', json.dumps(daemon.nats_url)),
        ('"mqtt.*.sensors.>"', f'"{daemon.prefix}.*.sensors.>"'),
        ('stream="MQTT"', f'stream="{daemon.stream}"'),
    )  # fmt: skip
    (tmp_path / "consumer.py").write_text(code)
    device = daemon.provision()
    expected = substitute(example("docs/nats.md", "nats-consumer-output"), (DOC_DEVICE_ID, device["id"]))

    # `python -u`, as the doc says for a pipe.
    consumer = subprocess.Popen(
        [sys.executable, "-u", str(tmp_path / "consumer.py")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    stdout = consumer.stdout
    assert stdout is not None

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        sh(
            f"mosquitto_pub -h 127.0.0.1 -p {daemon.mqtt_port} -V mqttv5 -u {device['mqtt_user']} "
            f"-P {device['mqtt_password']} -t sensors/temp -q 1 -m '{{\"t\": 21.5}}' "
            "-D publish user-property unit C"
        )
        try:
            line = lines.get(timeout=20)
        except queue.Empty:
            consumer.kill()
            assert consumer.stderr is not None
            raise AssertionError(f"the consumer printed nothing; stderr:\n{consumer.stderr.read()}") from None
        assert line == expected
        assert consumer.poll() is None  # it keeps consuming
    finally:
        consumer.kill()
        consumer.wait()


# ---------------------------------------------------------------- docs/operations.md


def test_clients_api_example_lists_and_disconnects(daemon: Daemon) -> None:
    device = daemon.provision()
    sock = mqtt_login(daemon.mqtt_port, "sensor-17", device["mqtt_user"], device["mqtt_password"])
    try:
        listing, delete = (
            substitute(c, ("http://127.0.0.1:9091", daemon.http_url))
            for c in commands(example("docs/operations.md", "clients-api"))
        )
        env = {"MQTTGATE_API_TOKEN": daemon.token}
        shown, decoder, text = [], json.JSONDecoder(), sh(listing, env).strip()
        while text:
            value, end = decoder.raw_decode(text)
            shown.append(value)
            text = text[end:].strip()
        host, port = sock.getsockname()[:2]
        assert {"client_id": "sensor-17", "device_id": device["id"], "peer": f"{host}:{port}"} in shown

        assert sh(delete, env) == ""  # 204, no body
        assert closed_by_server(sock)  # 3.1.1: the connection is closed
        daemon.wait_for("client_kicked", lambda r: r["event"] == "client_kicked" and r["client_id"] == "sensor-17")
    finally:
        sock.close()


def test_tls_example_publishes_over_the_tls_listener(daemon: Daemon) -> None:
    serve, publish = commands(example("docs/operations.md", "tls-listener"))
    # The daemon of this module runs with the example's serve flags.
    assert {f for f in serve.split() if f.startswith("--")} <= set(daemon.args)
    device = daemon.provision()
    sh(substitute(
        publish,
        ("mqtt.example.com", "localhost"), ("-p 8883", f"-p {daemon.mqtts_port}"),
        ("ca.crt", str(daemon.ca_file)),
        ("MQTT_USER", device["mqtt_user"]), ("MQTT_PASSWORD", device["mqtt_password"]),
    ))  # fmt: skip
    subject = f"{daemon.prefix}.{device['id']}.t"
    assert [m.data for m in daemon.stored() if m.subject == subject] == [b"hi"]


# ---------------------------------------------------------------- docs/operations.md "Reading the logs"


@attrs.frozen
class Story:
    device: dict[str, str]
    snapshot: Path
    records: list[Record]


@pytest.fixture(scope="module")
def story(daemon: Daemon) -> Story:
    """One device's connects, a takeover, denials and a TLS reload error, in
    the daemon's own log, frozen into a snapshot the examples read."""
    device = daemon.provision()
    user, password, port = device["mqtt_user"], device["mqtt_password"], daemon.mqtt_port
    mine = f"-h 127.0.0.1 -p {port} -V mqttv5 -i sensor-17 -u {user}"

    first = mqtt_login(port, "sensor-17", user, password)
    try:
        # A second CONNECT with the same client id takes the session over.
        sh(f"mosquitto_pub {mine} -P {password} -t devices/{user}/x -q 1 -m y")
        daemon.wait_for("session_taken_over", lambda r: r["event"] == "session_taken_over")
    finally:
        first.close()
    sh(f"mosquitto_pub {mine} -P wrong-password -t x -m y", check=False)  # connect_denied bad_password
    sh(f"mosquitto_pub -h 127.0.0.1 -p {port} -u nosuchuser -P x -t x -m y", check=False)  # unknown_user
    sh(f"mosquitto_pub {mine} -P {password} -t devices/someone-else/x -q 1 -m y", check=False)  # publish_denied
    sh(f"mosquitto_sub {mine} -P {password} -t '#' -W 5", check=False)  # subscribe_denied: it exits
    sh(f"mosquitto_pub {mine} -P {password} -t 'sensors/*' -q 1 -m y")  # forward_refused (warning): no subject
    # An error-level record: a broken certificate file reloaded on SIGHUP.
    daemon.cert_file.write_text("not a certificate\n")
    daemon.process.send_signal(signal.SIGHUP)

    for event in ("connect_denied", "publish_denied", "forward_refused", "tls_reload_failed"):
        daemon.wait_for(event, lambda r, e=event: r["event"] == e)  # type: ignore[misc]
    denied = daemon.wait_for("subscribe_denied", lambda r: r["event"] == "subscribe_denied")
    daemon.wait_for(
        "the denied subscriber's disconnect",
        lambda r: r["event"] == "client_disconnected" and r["conn_id"] == denied["conn_id"],
    )
    snapshot = daemon.log.parent / "snapshot.log"
    shutil.copy(daemon.log, snapshot)
    text = snapshot.read_text()
    snapshot.write_text(text[: text.rfind("\n") + 1])  # whole lines only
    return Story(device, snapshot, [json.loads(line) for line in snapshot.read_text().splitlines()])


def log_commands(story: Story, name: str, *pairs: tuple[str, str]) -> list[str]:
    """The block's commands reading the snapshot instead of ``kubectl logs``."""
    block = example("docs/operations.md", name).replace("deploy/mqttgate --since=1h", "deploy/mqttgate")
    return commands(substitute(block, ("kubectl logs deploy/mqttgate", f"cat {story.snapshot}"), *pairs))


def human(output: str) -> list[list[str]]:
    """``mqttgate logs`` lines split into words: ts, LEVEL, component, event, fields."""
    return [line.split() for line in output.splitlines()]


def json_lines(output: str) -> list[Record]:
    return [json.loads(line) for line in output.splitlines()]


def test_logs_who_was_denied(story: Story) -> None:
    tool, jq, counts = (sh(c) for c in log_commands(story, "logs-denied"))
    words = human(tool)
    assert {w[3] for w in words} == {"connect_denied"}
    assert any("client_id=sensor-17" in line and "why=bad_password" in line for line in words)
    assert any("mqtt_user=nosuchuser" in line and "why=unknown_user" in line for line in words)
    objects = json_lines(jq)
    assert [o["ts"] for o in objects] == [w[0] for w in words]  # the jq line shows the same records
    [bad] = [o for o in objects if o["why"] == "bad_password" and o["mqtt_user"] == story.device["mqtt_user"]]
    assert bad["device_id"] == story.device["id"] and bad["client_id"] == "sensor-17"
    assert all(value is not None for o in objects for key, value in o.items() if key != "device_id")
    denied = [r for r in story.records if r["event"] == "connect_denied"]
    assert counts.split() == [str(len(denied)), "BAD_USER_NAME_OR_PASSWORD"]


def test_logs_one_devices_story(story: Story) -> None:
    tool, jq = (sh(c) for c in log_commands(story, "logs-device", (DOC_DEVICE_ID, story.device["id"])))
    words = human(tool)
    # Connection events after authentication carry device_id too (docs/logging.md).
    assert {
        "device_created", "client_connected", "connect_denied", "client_disconnected",
        "session_taken_over", "publish_denied", "subscribe_denied",
    } <= {w[3] for w in words}
    assert all(f"device_id={story.device['id']}" in line for line in words)
    assert [o["ts"] for o in json_lines(jq)] == [w[0] for w in words]


def test_logs_reconnecting_devices(story: Story) -> None:
    tool_counts, jq_counts, disconnects = (sh(c) for c in log_commands(story, "logs-reconnects"))
    assert tool_counts == jq_counts
    connects = sum(1 for r in story.records if r["event"] == "client_connected" and r["device_id"] == story.device["id"])
    assert connects >= 4  # the raw login, the takeover, the denied publish, the denied subscribe
    assert [str(connects), story.device["id"]] in [line.split() for line in tool_counts.splitlines()]
    words = human(disconnects)
    assert {"session_taken_over", "client_disconnected"} <= {w[3] for w in words}
    assert all("client_id=sensor-17" in line for line in words)


def test_logs_dropped_or_refused(story: Story) -> None:
    tool, jq = (sh(c) for c in log_commands(story, "logs-dropped"))
    words = human(tool)
    assert {"publish_denied", "subscribe_denied"} <= {w[3] for w in words}  # publish_denied: debug level
    objects = json_lines(jq)
    assert [(o["ts"], o["event"]) for o in objects] == [(w[0], w[3]) for w in words]
    assert {"topic": "devices/someone-else/x", "event": "publish_denied"}.items() <= next(
        o for o in objects if o["event"] == "publish_denied"
    ).items()


def test_logs_errors_only(story: Story) -> None:
    tool, jq = (sh(c) for c in log_commands(story, "logs-errors"))
    words = human(tool)
    assert "tls_reload_failed" in {w[3] for w in words}
    assert {w[1] for w in words} == {"ERROR"}  # not the forward_refused warning
    assert [o["ts"] for o in json_lines(jq)] == [w[0] for w in words]
