"""MQTT over TLS: the listener, TLS 1.2+, start-up errors, SIGHUP and file-watch reload, slow handshakes.

Certificates are made at test time with trustme; each test gets its own CA.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trio
import trio.testing
import trustme
import yaml

from mqttgate.config import Address, Config, ConfigError
from mqttgate.supervisor import Endpoints
from mqttgate.supervisor import run as run_daemon
from mqttgate.tls import CERT_VAR, KEY_VAR, Certificates, build_context
from tests.broker.paho_client import V5, V311, Paho
from tests.conftest import StartDaemon, make_config

run = trio.to_thread.run_sync
MQTTGATE = [sys.executable, "-m", "mqttgate"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}
IDENTITIES = ("127.0.0.1", "localhost")


class Files:
    """A CA, a server certificate it issued, and the PEM files the daemon reads."""

    def __init__(self, directory: Path) -> None:
        self.cert = str(directory / "server.crt")
        self.key = str(directory / "server.key")
        self.ca = trustme.CA()
        self.issue(self.ca)

    def issue(self, ca: trustme.CA) -> trustme.LeafCert:
        """Write a new server certificate from ``ca`` over the files."""
        leaf = ca.issue_cert(*IDENTITIES)
        leaf.private_key_pem.write_to_path(self.key)
        leaf.cert_chain_pems[0].write_to_path(self.cert)
        self.leaf = leaf
        return leaf

    def client_context(self, *cas: trustme.CA) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for ca in cas or (self.ca,):
            ca.configure_trust(context)
        return context

    def der(self, leaf: trustme.LeafCert | None = None) -> bytes:
        return ssl.PEM_cert_to_DER_cert((leaf or self.leaf).cert_chain_pems[0].bytes().decode())


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def tls_config(files: Files, **overrides: Any) -> Config:
    return make_config(
        mqtts_listen=Address("127.0.0.1", 0), tls_cert_file=files.cert, tls_key_file=files.key, **overrides
    )


def tls_port(mqtt: list[str]) -> int:
    [address] = [a for a in mqtt if a.startswith("mqtts://")]
    return int(address.rsplit(":", 1)[1])


# --- raw MQTT 3.1.1 over a trio TLS stream (exact bytes, exact certificates) ---


def connect_packet(client_id: bytes) -> bytes:
    # v311 CONNECT: protocol name, level 4, flags 0x02 (clean session), keep alive 60
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    return b"\x10" + bytes([len(body)]) + body


CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    return data


async def mqtt_over_tls(port: int, context: ssl.SSLContext, client_id: bytes) -> trio.SSLStream[trio.SocketStream]:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    await stream.send_all(connect_packet(client_id))
    assert await receive_exactly(stream, 4) == CONNACK_ACCEPTED
    return stream


async def ping(stream: trio.SSLStream[trio.SocketStream]) -> None:
    await stream.send_all(PINGREQ)
    assert await receive_exactly(stream, 2) == PINGRESP


# --- certificate loading ---------------------------------------------------


def test_context_is_tls_1_2_or_newer(files: Files) -> None:
    context = build_context(files.cert, files.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_key_may_live_in_the_certificate_file(files: Files, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(files.leaf.private_key_and_cert_chain_pem.bytes())
    build_context(str(combined), None)


def test_bad_files_name_their_variable(files: Files, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file\n")
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(str(other_key))
    cases = [
        ((None, files.key), CERT_VAR, "required"),
        ((str(tmp_path / "missing.crt"), files.key), CERT_VAR, "cannot read"),
        ((files.cert, str(tmp_path / "missing.key")), KEY_VAR, "cannot read"),
        ((str(garbage), files.key), CERT_VAR, "no valid PEM certificate"),
        ((files.cert, str(garbage)), KEY_VAR, "private key"),
        ((files.cert, str(other_key)), KEY_VAR, "not the key of the certificate"),
        ((files.cert, None), CERT_VAR, "no usable private key"),
    ]
    for (cert, key), variable, words in cases:
        with pytest.raises(ConfigError) as raised:
            build_context(cert, key)
        assert raised.value.source == variable, (cert, key, raised.value)
        assert words in raised.value.message, raised.value.message


def test_failed_reload_keeps_the_old_context_and_a_good_one_swaps_it(files: Files) -> None:
    certificates = Certificates(files.cert, files.key)
    first = certificates.context
    Path(files.cert).write_text("truncated by a half-finished deploy\n")
    assert certificates.reload() is False
    assert certificates.context is first
    assert certificates.generation == 0
    files.issue(files.ca)
    assert certificates.reload() is True
    assert certificates.context is not first
    assert certificates.generation == 1


# --- the listener in the real daemon ---------------------------------------


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
async def test_paho_publishes_and_receives_over_tls(
    start_daemon: StartDaemon, files: Files, version: int
) -> None:
    endpoints = await start_daemon(tls_config(files))
    assert endpoints.mqtt[0].startswith("mqtt://")  # the plain listener stays first
    port = tls_port(endpoints.mqtt)
    with trio.fail_after(20):
        sub = Paho(port, "tls-sub", version)
        pub = Paho(port, "tls-pub", version)
        for client in (sub, pub):
            client.client.tls_set_context(files.client_context())
            assert (await run(client.connect))[1] == 0
        assert await run(sub.subscribe, "tls/#", 1) == [1]
        await run(pub.publish, "tls/a", b"secret", 1)
        [message] = await run(sub.messages, 1)
        assert message[1:4] == ("tls/a", b"secret", 1)
        await run(sub.stop)
        await run(pub.stop)


async def test_plain_mqtt_on_the_tls_port_is_refused(start_daemon: StartDaemon, files: Files) -> None:
    port = tls_port((await start_daemon(tls_config(files))).mqtt)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(connect_packet(b"plain"))
        # Not a TLS ClientHello: the server drops the connection, no CONNACK.
        data = b""
        while chunk := await stream.receive_some(1024):
            data += chunk
        assert CONNACK_ACCEPTED not in data
        await stream.aclose()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_below_1_2_is_refused(start_daemon: StartDaemon, files: Files) -> None:
    port = tls_port((await start_daemon(tls_config(files))).mqtt)
    old = files.client_context()
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it at all
    except (ValueError, ssl.SSLError) as error:
        pytest.skip(f"this OpenSSL cannot make a TLS 1.1 client: {error}")
    with trio.fail_after(10):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=old)
        with pytest.raises(trio.BrokenResourceError) as raised:
            await stream.do_handshake()
        assert isinstance(raised.value.__cause__, ssl.SSLError)
        # Control: the same client allowed TLS 1.2 gets through.
        control = files.client_context()
        control.maximum_version = ssl.TLSVersion.TLSv1_2
        good = await mqtt_over_tls(port, control, b"tls12")
        assert good.version() == "TLSv1.2"
        await good.aclose()


async def test_silent_client_is_dropped_after_the_connect_timeout(
    start_daemon: StartDaemon, files: Files
) -> None:
    port = tls_port((await start_daemon(tls_config(files, connect_timeout=0.5))).mqtt)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        # Never send a ClientHello: the server must close (EOF), not wait forever.
        assert await stream.receive_some(1024) == b""
        assert trio.current_time() - start >= 0.4
        await stream.aclose()
        # The listener still serves others afterwards.
        good = await mqtt_over_tls(port, files.client_context(), b"after")
        await good.aclose()


async def test_a_pending_handshake_does_not_hold_up_shutdown(nursery: trio.Nursery, files: Files) -> None:
    config = tls_config(files, connect_timeout=30.0, shutdown_timeout=5.0)
    shutdown, stopped = trio.Event(), trio.Event()

    async def daemon(*, task_status: trio.TaskStatus[Endpoints]) -> None:
        await run_daemon(config, shutdown=shutdown, install_signal_handlers=False, task_status=task_status)
        stopped.set()

    endpoints: Endpoints = await nursery.start(daemon)
    silent = await trio.open_tcp_stream("127.0.0.1", tls_port(endpoints.mqtt))
    await trio.testing.wait_all_tasks_blocked(0.05)  # the broker has accepted it and waits for a ClientHello
    shutdown.set()
    with trio.fail_after(3):  # well inside connect_timeout and shutdown_timeout
        await stopped.wait()
    assert await silent.receive_some(1024) == b""
    await silent.aclose()


async def test_sighup_reload_in_process_keeps_connections_and_serves_the_new_certificate(
    start_daemon: StartDaemon, files: Files
) -> None:
    port = tls_port((await start_daemon(tls_config(files))).mqtt)
    with trio.fail_after(20):
        old_leaf = files.leaf
        before = await mqtt_over_tls(port, files.client_context(), b"before")
        assert before.getpeercert(binary_form=True) == files.der(old_leaf)
        paho = Paho(port, "paho-before", V5)
        paho.client.tls_set_context(files.client_context())
        assert (await run(paho.connect))[1] == 0
        assert await run(paho.subscribe, "after/#", 0) == [0]

        new_ca = trustme.CA()
        new_leaf = files.issue(new_ca)
        # The daemon runs in this process's main thread, so it receives our SIGHUP.
        os.kill(os.getpid(), signal.SIGHUP)
        both = files.client_context(files.ca, new_ca)
        while True:  # the watcher task reloads when trio next schedules it
            probe = await mqtt_over_tls(port, both, b"probe")
            served = probe.getpeercert(binary_form=True)
            await probe.aclose()
            if served == files.der(new_leaf):
                break
            await trio.sleep(0.01)
        # New connections now use the new certificate: a client trusting only the old CA fails.
        with pytest.raises(trio.BrokenResourceError):
            await mqtt_over_tls(port, files.client_context(files.ca), b"old-trust")
        # Connections made before the reload are still up and working.
        await ping(before)
        after = await mqtt_over_tls(port, files.client_context(new_ca), b"after")
        await after.send_all(b"\x30\x09\x00\x07after/x")  # v311 PUBLISH QoS 0 "after/x", empty payload
        [message] = await run(paho.messages, 1)
        assert message[1] == "after/x"
        await before.aclose()
        await after.aclose()
        await run(paho.stop)


# --- file watch: a renewed Secret arrives without a SIGHUP -----------------

#: tls_reload_interval of these tests, seconds.
WATCH = 0.2


def events(logged: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logged if entry["event"] == name]


def replace_file(pem: trustme.Blob, path: str) -> None:
    """Write beside the target and rename into place: the target changes atomically."""
    pem.write_to_path(path + ".new")
    os.replace(path + ".new", path)


def replace_pair(leaf: trustme.LeafCert, cert: str, key: str) -> None:
    # Two renames: a poll between them sees a new certificate and the old key.
    replace_file(leaf.cert_chain_pems[0], cert)
    replace_file(leaf.private_key_pem, key)


class SecretVolume:
    """A Secret volume as the kubelet writes it.

    ``tls.crt -> ..data/tls.crt`` and ``..data -> ..<version>/``; an update
    writes a new version directory, renames a new ``..data`` symlink over the
    old one (both files change at once) and removes the old directory.
    """

    def __init__(self, directory: Path, leaf: trustme.LeafCert) -> None:
        directory.mkdir()
        self.directory = directory
        self.cert = str(directory / "tls.crt")
        self.key = str(directory / "tls.key")
        self.version: Path | None = None
        self.update(leaf)
        for name in ("tls.crt", "tls.key"):
            os.symlink(f"..data/{name}", directory / name)

    def update(self, leaf: trustme.LeafCert) -> None:
        old = self.version
        self.version = self.directory / f"..{time.time_ns()}"
        self.version.mkdir()
        leaf.cert_chain_pems[0].write_to_path(str(self.version / "tls.crt"))
        leaf.private_key_pem.write_to_path(str(self.version / "tls.key"))
        os.symlink(self.version.name, self.directory / "..data_tmp")
        os.replace(self.directory / "..data_tmp", self.directory / "..data")
        if old is not None:
            shutil.rmtree(old)


async def served(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate (DER) a new TLS connection is given."""
    stream = await mqtt_over_tls(port, context, b"probe")
    der = stream.getpeercert(binary_form=True)
    await stream.aclose()
    assert der is not None
    return der


async def wait_until_served(port: int, context: ssl.SSLContext, der: bytes) -> None:
    # Polls the outcome (the caller sets the deadline); the watcher runs on its own clock.
    while True:
        if await served(port, context) == der:
            return
        await trio.sleep(0.05)


@pytest.mark.parametrize("renewal", ["rename", "symlink-swap"])
async def test_renewed_files_are_served_without_a_sighup(
    start_daemon: StartDaemon, files: Files, tmp_path: Path, renewal: str
) -> None:
    if renewal == "symlink-swap":
        volume = SecretVolume(tmp_path / "secret", files.leaf)
        cert, key = volume.cert, volume.key
    else:
        cert, key = files.cert, files.key
    config = make_config(
        mqtts_listen=Address("127.0.0.1", 0), tls_cert_file=cert, tls_key_file=key,
        tls_reload_interval=WATCH,
    )  # fmt: skip
    port = tls_port((await start_daemon(config)).mqtt)
    new_ca = trustme.CA()
    both = files.client_context(files.ca, new_ca)
    with trio.fail_after(10):
        before = await mqtt_over_tls(port, files.client_context(), b"before")
        assert await served(port, both) == files.der()
        new_leaf = new_ca.issue_cert(*IDENTITIES)
        if renewal == "symlink-swap":
            volume.update(new_leaf)
        else:
            replace_pair(new_leaf, cert, key)
        await wait_until_served(port, both, files.der(new_leaf))
        # Only the new certificate from now on; the connection from before is untouched.
        with pytest.raises(trio.BrokenResourceError):
            await mqtt_over_tls(port, files.client_context(files.ca), b"old-trust")
        await ping(before)
        await before.aclose()


async def test_a_half_renewed_pair_keeps_the_old_certificate_until_the_key_follows(
    logged: list[dict[str, Any]], start_daemon: StartDaemon, files: Files
) -> None:
    port = tls_port((await start_daemon(tls_config(files, tls_reload_interval=WATCH))).mqtt)
    new_ca = trustme.CA()
    new_leaf = new_ca.issue_cert(*IDENTITIES)
    both = files.client_context(files.ca, new_ca)
    with trio.fail_after(10):
        # The certificate is renewed, its key not written yet: the pair does not load.
        replace_file(new_leaf.cert_chain_pems[0], files.cert)
        while True:
            if events(logged, "tls_reload_failed"):
                break
            await trio.sleep(0.05)
        assert await served(port, both) == files.der()
        replace_file(new_leaf.private_key_pem, files.key)
        await wait_until_served(port, both, files.der(new_leaf))
    [failed, *_] = events(logged, "tls_reload_failed")
    assert failed["variable"] == KEY_VAR
    first, *_, last = events(logged, "tls_files_changed")
    assert first["files"] == [files.cert]
    # Compared with the pair last loaded, not the last poll: both files differ.
    assert last["files"] == [files.cert, files.key]
    assert [e["generation"] for e in events(logged, "tls_reloaded")] == [1]


async def test_interval_0_watches_nothing_and_sighup_still_reloads(
    logged: list[dict[str, Any]], start_daemon: StartDaemon, files: Files
) -> None:
    port = tls_port((await start_daemon(tls_config(files, tls_reload_interval=0.0))).mqtt)
    new_ca = trustme.CA()
    new_leaf = new_ca.issue_cert(*IDENTITIES)
    both = files.client_context(files.ca, new_ca)
    with trio.fail_after(10):
        replace_pair(new_leaf, files.cert, files.key)
        # 0 must not mean "poll without pause": a while later nothing has been reloaded.
        await trio.sleep(3 * WATCH)
        assert await served(port, both) == files.der()
        assert not events(logged, "tls_files_changed")
        os.kill(os.getpid(), signal.SIGHUP)  # the daemon runs in this main thread
        await wait_until_served(port, both, files.der(new_leaf))


async def test_the_watch_retries_what_failed_even_when_the_files_look_as_last_seen(
    logged: list[dict[str, Any]], files: Files, autojump_clock: trio.testing.MockClock
) -> None:
    """A key rewritten in place within one mtime tick leaves its stamp as the
    last poll saw it. The watch compares with the last *successful* load, so
    the failed certificate change is retried and the pair loads."""
    certificates = Certificates(files.cert, files.key)
    first = certificates.context
    old_key = os.stat(files.key)
    new_leaf = trustme.CA().issue_cert(*IDENTITIES)
    assert len(new_leaf.private_key_pem.bytes()) == old_key.st_size  # ECDSA P-256: fixed size
    async with trio.open_nursery() as nursery:
        await nursery.start(certificates.watch_files, WATCH)
        replace_file(new_leaf.cert_chain_pems[0], files.cert)
        await trio.sleep(1.5 * WATCH)  # one poll (virtual time)
        assert [e["event"] for e in logged] == ["tls_files_changed", "tls_reload_failed"]
        assert certificates.context is first
        new_leaf.private_key_pem.write_to_path(files.key)  # in place: same inode, same size...
        os.utime(files.key, ns=(old_key.st_atime_ns, old_key.st_mtime_ns))  # ...same mtime
        await trio.sleep(WATCH)
        assert certificates.generation == 1
        assert certificates.context is not first
        retry = events(logged, "tls_files_changed")[1]
        assert (retry["files"], retry["retry"]) == ([files.cert], True)
        await trio.sleep(5 * WATCH)  # loaded: nothing more to do
        assert len(events(logged, "tls_files_changed")) == 2
        nursery.cancel_scope.cancel()


async def test_a_missing_file_is_logged_once_and_the_loaded_certificate_stays(
    logged: list[dict[str, Any]], files: Files, autojump_clock: trio.testing.MockClock
) -> None:
    certificates = Certificates(files.cert, files.key)
    first = certificates.context
    os.remove(files.key)
    async with trio.open_nursery() as nursery:
        await nursery.start(certificates.watch_files, 1.0)
        # Virtual time, kept half an interval off the polls so that no wake-up ties with one.
        await trio.sleep(120.5)  # 120 polls
        [missing] = events(logged, "tls_file_missing")
        assert (missing["variable"], missing["file"]) == (KEY_VAR, files.key)
        assert missing["error"] == "No such file or directory"
        assert [e["event"] for e in logged] == ["tls_file_missing"]  # no reload attempted
        assert certificates.context is first
        await trio.sleep(600)  # a reminder every 10 minutes while it stays missing
        assert len(events(logged, "tls_file_missing")) == 2
        new_leaf = trustme.CA().issue_cert(*IDENTITIES)
        replace_pair(new_leaf, files.cert, files.key)
        await trio.sleep(1.0)
        assert certificates.generation == 1
        nursery.cancel_scope.cancel()


# --- the command as a user runs it -----------------------------------------


def serve_command(*extra: str) -> list[str]:
    return [
        *MQTTGATE, "serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--allow-anonymous", "true", "--forward", "off", "--shutdown-timeout", "5s", *extra,
    ]


def test_start_without_a_certificate_exits_2_naming_the_variable(files: Files) -> None:
    env = {**CLEAN_ENV, "MQTTGATE_MQTTS_LISTEN": "127.0.0.1:0"}
    for extra, words in [
        ((), "required"),
        (("--tls-cert-file", files.cert + ".missing", "--tls-key-file", files.key), "cannot read"),
    ]:
        result = subprocess.run(serve_command(*extra), capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("mqttgate: error: MQTTGATE_TLS_CERT_FILE: "), lines
        assert words in lines[0]


def _events(proc: subprocess.Popen[str], until: str, timeout: float = 20.0) -> list[dict[str, object]]:
    assert proc.stdout is not None
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        events.append(json.loads(line))
        if events[-1]["event"] == until:
            return events
    raise AssertionError(f"no {until!r} event; got {[e['event'] for e in events]}")


def _blocking_tls(port: int, context: ssl.SSLContext, client_id: bytes) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(connect_packet(client_id))
    assert sock.recv(4) == CONNACK_ACCEPTED
    return sock


@pytest.fixture
def daemon_with_tls(files: Files) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        serve_command("--mqtts-listen", "127.0.0.1:0", "--tls-cert-file", files.cert,
                      "--tls-key-file", files.key),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=CLEAN_ENV,
    )
    try:
        ready = _events(proc, "ready")[-1]
        yield proc, tls_port(list(ready["mqtt"]))  # type: ignore[call-overload]
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_sighup_reloads_the_certificate_of_the_running_daemon(
    files: Files, daemon_with_tls: tuple[subprocess.Popen[str], int]
) -> None:
    proc, port = daemon_with_tls
    old_der = files.der()
    before = _blocking_tls(port, files.client_context(), b"before")
    assert before.getpeercert(binary_form=True) == old_der

    # A broken file first: the reload fails, the daemon keeps serving the old certificate.
    Path(files.cert).write_text("half-written\n")
    proc.send_signal(signal.SIGHUP)
    failed = _events(proc, "tls_reload_failed", timeout=10)[-1]
    assert failed["variable"] == CERT_VAR
    probe = _blocking_tls(port, files.client_context(), b"probe")
    assert probe.getpeercert(binary_form=True) == old_der
    probe.close()

    new_ca = trustme.CA()
    files.issue(new_ca)
    proc.send_signal(signal.SIGHUP)
    reloaded = _events(proc, "tls_reloaded", timeout=10)[-1]
    assert reloaded["generation"] == 1
    after = _blocking_tls(port, files.client_context(new_ca), b"after")
    assert after.getpeercert(binary_form=True) == files.der()
    # The connection from before the reload is untouched.
    before.sendall(PINGREQ)
    assert before.recv(2) == PINGRESP
    assert proc.poll() is None
    for sock in (before, after):
        sock.close()


# --- the Kubernetes components ---------------------------------------------

DEPLOY = Path(__file__).parent.parent.parent / "deploy"


def _kustomize(tmp_path: Path, base: Path, component: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for kustomize) is not installed")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(base, overlay)}]\ncomponents: [{os.path.relpath(component, overlay)}]\n"
    )
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_tls_component_adds_port_8883_the_settings_and_the_secret(tmp_path: Path) -> None:
    docs = _kustomize(tmp_path, DEPLOY, DEPLOY / "components" / "mqtt-tls")
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    by_key = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    pod = by_key[("Deployment", "mqttgate")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"mqtt": 1883, "mqtts": 8883, "http": 9091}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MQTTGATE_MQTTS_LISTEN"] == "0.0.0.0:8883"
    assert "MQTTGATE_DATABASE_URL" in env  # merged into the base list, not replacing it
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "mqtt-tls"]
    assert env["MQTTGATE_TLS_CERT_FILE"] == mount["mountPath"] + "/tls.crt"
    assert env["MQTTGATE_TLS_KEY_FILE"] == mount["mountPath"] + "/tls.key"
    assert "subPath" not in mount  # subPath mounts never see a renewed Secret
    [volume] = [v for v in pod["volumes"] if v["name"] == "mqtt-tls"]
    assert volume["secret"]["secretName"] == "mqttgate-mqtt-tls"
    service = by_key[("Service", "mqttgate")]
    assert {p["port"] for p in service["spec"]["ports"]} == {1883, 8883, 9091}


def test_nginx_component_passes_8883_through(tmp_path: Path) -> None:
    [config_map] = _kustomize(tmp_path, DEPLOY / "ingress-nginx", DEPLOY / "components" / "ingress-nginx-tls")
    assert config_map["metadata"]["namespace"] == "ingress-nginx"
    assert config_map["data"] == {"1883": "scadable-io/mqttgate:1883", "8883": "scadable-io/mqttgate:8883"}
