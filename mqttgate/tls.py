"""The MQTT-over-TLS listener: certificate loading, reload (SIGHUP, file watch), handshakes.

Theory of operation
-------------------
``serve_tls`` is started by ``Broker.serve`` when ``mqtts_listen`` is set. It
loads the certificate (a bad or missing file is a :class:`ConfigError` naming
the variable, so start-up fails with exit status 2), binds the TCP listeners,
and accepts through :class:`TLSListener`. The listener wraps each accepted
socket in a ``trio.SSLStream`` made with *the current* ``SSLContext`` of
:class:`Certificates`.

Reload: SIGHUP (or :meth:`Certificates.reload`) builds a *new* context from the
files and swaps the reference. An ``ssl.SSLObject`` keeps the certificate and
key it was made with, so existing connections are untouched and the next
handshake uses the new certificate. A new context rather than
``load_cert_chain`` on the live one: a half-failed load (new certificate, key
that does not match) would otherwise leave the live context broken. A failed
reload logs ``tls_reload_failed`` and keeps the old certificate.

File watch: nobody sends SIGHUP when cert-manager renews a Kubernetes Secret
and the kubelet swaps the mounted files (a new directory, then a rename of the
``..data`` symlink). So :meth:`Certificates.watch_files` stats both files every
``tls_reload_interval`` (following symlinks) and reloads when either stamp
(mtime_ns, size, inode) differs from the stamp of the last *successful* load.
Not from the last one seen: a half-written pair (certificate renewed, key not
yet) fails to load and keeps the old certificate, and comparing against what
was seen would then never retry if the key's write left no visible trace (an
in-place write in the same mtime tick). Each load stats before it reads: files
that change in between are loaded once more, never missed. A file that cannot
be stat'ed skips the poll and is logged once (``tls_file_missing``, again at
most every ``_MISSING_LOG_EVERY_S`` while it stays away); the old certificate
keeps serving.

Handshakes: each accepted stream does its TLS handshake before it becomes a
:class:`~mqttgate.broker.connection.Connection`, under ``connect_timeout``, so a
client that opens TCP and never speaks TLS holds nothing for longer than that
(then it has another ``connect_timeout`` to send CONNECT). Pending handshakes
are cancelled when the listener stops (shutdown) and are capped at
``max_connections``. After the handshake the MQTT connection runs unchanged on
a :class:`TLSStream`, whose ``aclose`` sends close_notify under a short deadline,
because ``Connection`` closes shielded and a peer that stops reading must not
hold that close open.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from mqttgate.config import Config, ConfigError
from mqttgate.logs import get_logger

log = get_logger("tls")

CERT_VAR = "MQTTGATE_TLS_CERT_FILE"
KEY_VAR = "MQTTGATE_TLS_KEY_FILE"
LISTEN_VAR = "MQTTGATE_MQTTS_LISTEN"

#: close_notify is a courtesy; past this the TCP connection is just closed.
_CLOSE_NOTIFY_TIMEOUT = 2.0
#: A file still missing is logged again this often, so it neither floods the
#: log at a short reload interval nor goes unnoticed for days.
_MISSING_LOG_EVERY_S = 600.0

#: What the watcher compares: (st_mtime_ns, st_size, st_ino). A rename or a
#: kubelet ``..data`` swap changes the inode, an in-place write mtime or size.
Stamp = tuple[int, int, int]


def _stamp(path: str) -> Stamp:
    # os.stat follows symlinks: a Secret volume's tls.crt is ..data/tls.crt,
    # and renewal swaps ..data, so only the target's stamp changes.
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


def _read(path: str, variable: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise ConfigError(variable, f"cannot read {path!r}: {error.strerror or error}") from None


def build_context(cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A server context with the certificate chain and key; TLS 1.2 or newer.

    Raises :class:`ConfigError` naming the variable of the file at fault.
    """
    if not cert_file:
        raise ConfigError(CERT_VAR, f"required when {LISTEN_VAR} is set (PEM certificate chain)")
    _read(cert_file, CERT_VAR)
    if key_file:
        _read(key_file, KEY_VAR)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.0/1.1 are deprecated (RFC 8996); the issue asks for TLS 1.2+.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Client-initiated renegotiation costs the server a handshake per request.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_file, key_file or None, password=_no_password)
    except ssl.SSLError as error:
        raise _blame(cert_file, key_file, error) from None
    return context


def _blame(cert_file: str, key_file: str | None, error: ssl.SSLError) -> ConfigError:
    """Which file made ``load_cert_chain`` fail: the certificate or the key."""
    if error.reason == "KEY_VALUES_MISMATCH":
        return ConfigError(KEY_VAR, f"{key_file or cert_file!r} is not the key of the certificate")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert_file)  # parses the PEM certificates only
    except ssl.SSLError:
        return ConfigError(CERT_VAR, f"{cert_file!r} holds no valid PEM certificate ({error.reason})")
    if key_file is None:
        return ConfigError(
            CERT_VAR, f"{cert_file!r} holds no usable private key and {KEY_VAR} is not set ({error.reason})"
        )
    return ConfigError(
        KEY_VAR, f"{key_file!r} is not a valid unencrypted PEM private key ({error.reason})"
    )


class Certificates:
    """The current server ``SSLContext``, rebuilt from the files on reload."""

    def __init__(self, cert_file: str | None, key_file: str | None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        #: Stamps of the files behind ``context``, taken before they were read
        #: (None: they could not be stat'ed; the watcher then reloads).
        self.loaded = self._stamps_or_none()
        self.context = build_context(cert_file, key_file)
        #: Successful reloads so far (tests and the log read it).
        self.generation = 0

    def files(self) -> list[tuple[str, str]]:
        """``(variable, path)`` of the files behind the context."""
        named = [(CERT_VAR, self.cert_file), (KEY_VAR, self.key_file)]
        return [(variable, path) for variable, path in named if path]

    def _stamps_or_none(self) -> tuple[Stamp, ...] | None:
        try:
            return tuple(_stamp(path) for _, path in self.files())
        except OSError:
            return None

    @classmethod
    def from_config(cls, config: Config) -> Certificates:
        return cls(config.tls_cert_file, config.tls_key_file)

    def reload(self) -> bool:
        """Load the files into a new context; on failure keep the old one."""
        # Stat before reading: a file replaced in between is then seen as
        # changed at the next poll and loaded again, rather than missed.
        stamps = self._stamps_or_none()
        try:
            context = build_context(self.cert_file, self.key_file)
        except ConfigError as error:
            log.error("tls_reload_failed", variable=error.source, error=error.message)
            return False
        self.context = context
        self.loaded = stamps
        self.generation += 1
        log.info("tls_reloaded", cert_file=self.cert_file, generation=self.generation)
        return True

    async def watch_sighup(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reload on every SIGHUP until cancelled."""
        if threading.current_thread() is not threading.main_thread():
            # Signals reach only the main thread (an embedding application): reload() still works.
            task_status.started()
            return
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                log.info("tls_reload_requested", signal="SIGHUP")
                self.reload()

    async def watch_files(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Every ``interval`` seconds, reload if the files differ from the loaded ones.

        Runs until cancelled. While the files on disk differ from the last
        successful load and do not load, every poll retries (and logs
        ``tls_reload_failed``).
        """
        task_status.started()
        failed: tuple[Stamp, ...] | None = None  # stamps of the last failed attempt
        missing: dict[str, float] = {}  # path -> when tls_file_missing was last logged
        while True:
            await trio.sleep(interval)
            stamps: list[Stamp] = []
            for variable, path in self.files():
                try:
                    stamps.append(_stamp(path))
                    missing.pop(path, None)
                except OSError as error:
                    # Serve on with the loaded certificate; a rename or symlink
                    # swap is atomic, so this is a deleted file or a broken mount.
                    now = trio.current_time()
                    if now - missing.get(path, -math.inf) >= _MISSING_LOG_EVERY_S:
                        missing[path] = now
                        log.warning(
                            "tls_file_missing", variable=variable, file=path,
                            error=error.strerror or str(error),
                        )  # fmt: skip
            if len(stamps) < len(self.files()):
                continue
            current = tuple(stamps)
            if current == self.loaded:
                failed = None
                continue
            before = self.loaded or ()
            changed = [
                path for index, (_, path) in enumerate(self.files())
                if index >= len(before) or before[index] != current[index]
            ]  # fmt: skip
            log.info("tls_files_changed", files=changed, retry=current == failed)
            failed = None if self.reload() else current


class TLSStream(trio.abc.Stream):
    """A handshaken ``trio.SSLStream`` as the plain stream a Connection expects."""

    __slots__ = ("socket", "ssl")

    def __init__(self, ssl_stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.ssl = ssl_stream
        self.socket = ssl_stream.transport_stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.ssl.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.ssl.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.ssl.receive_some(max_bytes)

    async def aclose(self) -> None:
        # Cancelling SSLStream.aclose closes the TCP stream without close_notify.
        with trio.move_on_after(_CLOSE_NOTIFY_TIMEOUT):
            await self.ssl.aclose()


class TLSListener(trio.abc.Listener[trio.SSLStream[trio.SocketStream]]):
    """Accepts TCP and wraps each stream with the context current at accept."""

    def __init__(self, transport: trio.SocketListener, certificates: Certificates) -> None:
        self.transport = transport
        self.certificates = certificates

    async def accept(self) -> trio.SSLStream[trio.SocketStream]:
        stream = await self.transport.accept()
        # https_compatible=False: MQTT has its own end of stream (DISCONNECT),
        # and we want close_notify sent and a truncated stream reported.
        return trio.SSLStream(stream, self.certificates.context, server_side=True, https_compatible=False)

    async def aclose(self) -> None:
        await self.transport.aclose()


def _peer(stream: trio.SSLStream[trio.SocketStream]) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Handshakes:
    """The accepted streams still in their TLS handshake."""

    def __init__(self, config: Config, serve_stream: Callable[[Any, str], Awaitable[None]]) -> None:
        self.timeout = config.connect_timeout
        self.limit = config.max_connections
        self.serve_stream = serve_stream
        self.pending: set[trio.CancelScope] = set()
        self.closing = False

    async def handle(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        peer = _peer(stream)
        if len(self.pending) >= self.limit:
            log.debug("tls_handshake_failed", peer=peer, error="too many pending handshakes")
            await trio.aclose_forcefully(stream)
            return
        error = "timeout"
        done = False
        with trio.CancelScope(deadline=trio.current_time() + self.timeout) as scope:
            self.pending.add(scope)
            try:
                await stream.do_handshake()
                done = True
            except trio.BrokenResourceError as broken:
                cause = broken.__cause__
                error = getattr(cause, "reason", None) or repr(cause)
            finally:
                self.pending.discard(scope)
        if not done:
            if not self.closing:  # cancelled by shutdown is no failure
                log.debug("tls_handshake_failed", peer=peer, error=error)
            await trio.aclose_forcefully(stream)
            return
        await self.serve_stream(TLSStream(stream), peer)

    def cancel_all(self) -> None:
        self.closing = True
        for scope in self.pending:
            scope.cancel()


async def serve_tls(
    config: Config,
    serve_stream: Callable[[Any, str], Awaitable[None]],
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept MQTT over TLS on ``config.mqtts_listen`` until cancelled.

    Each handshaken stream is handed to ``serve_stream(stream, peer)`` in
    ``handler_nursery`` (the broker's connection nursery). Reports
    ``["mqtts://host:port", ...]``.
    """
    listen = config.mqtts_listen
    assert listen is not None
    certificates = Certificates.from_config(config)
    transports = await trio.open_tcp_listeners(listen.port, host=listen.host, backlog=4096)
    listeners = [TLSListener(transport, certificates) for transport in transports]
    addresses = []
    for transport in transports:
        host, port = transport.socket.getsockname()[:2]
        addresses.append(f"mqtts://[{host}]:{port}" if ":" in host else f"mqtts://{host}:{port}")
    log.info("tls_listening", addresses=addresses, cert_file=config.tls_cert_file)
    handshakes = _Handshakes(config, serve_stream)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(certificates.watch_sighup)
            if config.tls_reload_interval > 0:  # 0: SIGHUP only
                await nursery.start(certificates.watch_files, config.tls_reload_interval)
            nursery.start_soon(
                functools.partial(trio.serve_listeners, handshakes.handle, listeners, handler_nursery=handler_nursery)
            )
            task_status.started(addresses)
    finally:
        handshakes.cancel_all()
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
