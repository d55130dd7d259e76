"""NATS connection options and the JetStream stream check.

The only module besides :mod:`mqttgate.forwarder` that knows nats-py. The
functions prefixed ``aio_`` are asyncio coroutines: call them through
``trio_asyncio.aio_as_trio`` inside the process's one ``open_loop()``.

Stream policy (docs/nats.md, "The stream"): a missing stream is created with
subjects ``<prefix>.>`` and the ``nats_*`` storage settings. An existing stream
is used as it is (the operator may manage it): it must capture every subject
we publish on, otherwise start-up fails with a :class:`ConfigError` naming
``MQTTGATE_NATS_STREAM``; other differences (storage, replicas, limits, a
duplicate window shorter than ``forward_timeout``) are logged as
``stream_config_differs`` and tolerated.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.js.api import StorageType, StreamConfig
from nats.protocol.parser import AWAITING_MSG_PAYLOAD, CRLF_SIZE, Parser

from mqttgate.config import Config, ConfigError

#: nats-py waits this long between attempts on the same server (nats-py 2.16
#: has a fixed wait, no exponential backoff and no jitter option).
RECONNECT_WAIT_S = 1.0
#: A server that stops answering PINGs (paused, partitioned) is dropped after
#: about PING_INTERVAL_S * MAX_OUTSTANDING_PINGS, then reconnected.
PING_INTERVAL_S = 5.0
MAX_OUTSTANDING_PINGS = 3
CONNECT_TIMEOUT_S = 2.0
#: nats-py's outgoing buffer. While it is full, publishing waits (backpressure);
#: while disconnected, publishing into it raises and we retry later.
PENDING_BYTES = 8 * 1024 * 1024

FLUSH_TIMEOUT_S = 5.0

#: Errors a NATS call may raise that mean "not now": retry, never crash.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    OSError,
    TimeoutError,
)


#: ``(subject, payload)`` of each ack in one chunk read from the server.
Acks = list[tuple[bytes, bytes]]


def scan_acks(data: bytes, sid: bytes) -> tuple[Acks, int]:
    """The complete ``MSG`` frames for subscription ``sid`` at the start of
    ``data``, and the offset where something else (another operation, or a
    frame cut off by the end of the read) begins.

    JetStream acks are ``MSG <inbox>.<key> <sid>  <size>\\r\\n<json>\\r\\n``
    (no reply subject, hence nats-server's double space). One split of the
    whole read gives control line and body pairs; the size check stops at a
    body that itself held a CRLF, so framing never depends on the content.
    """
    acks: Acks = []
    parts = data.split(b"\r\n")
    pos = 0
    # The last part is what follows the last CRLF: never a complete frame.
    for index in range(0, len(parts) - 2, 2):
        line = parts[index]
        body = parts[index + 1]
        fields = line.split(b" ")  # MSG <subject> <sid> [<reply>] <size>
        if len(fields) < 4 or fields[0] != b"MSG" or fields[2] != sid or fields[-1] != b"%d" % len(body):
            break
        acks.append((fields[1], body))
        pos += len(line) + len(body) + 4
    return acks, pos


class AckParser(Parser):
    """nats-py's protocol parser with a fast path for runs of JetStream acks.

    Under load almost every byte the server sends is an ack on our inbox.
    nats-py parses each with several regexes and awaits a coroutine per
    message; :func:`scan_acks` reads a whole run with one regex per frame and
    hands the batch to ``nc.on_acks`` in one call. Anything else (PING, INFO,
    -ERR, an HMSG "no responders", a frame cut off at the end of a read) goes
    to nats-py's own parser, whose buffer and state this keeps consistent.
    """

    nc: FastClient

    async def parse(self, data: bytes = b"") -> None:
        if self.state == AWAITING_MSG_PAYLOAD:
            # nats-py is in the middle of a frame: let it finish that one.
            need = self.needed + CRLF_SIZE - len(self.buf)
            if len(data) <= need:
                await super().parse(data)
                return
            await super().parse(data[:need])
            data = data[need:]
        if self.buf:  # the start of a control line held from the last read
            data = bytes(self.buf) + data
            self.buf = bytearray()
        nc = self.nc
        acks, pos = scan_acks(data, nc.ack_sid_bytes)
        if acks and nc.on_acks is not None:
            nc.on_acks(acks)
        if pos < len(data):
            await super().parse(data[pos:])


class FastClient(Client):
    """nats-py's client with a fast path for the forwarder's hot loop.

    * :meth:`send_now` (from trio, no asyncio hop) and :meth:`send_commands`
      write pre-encoded ``HPUB`` commands (built once per message by
      ``JetStreamForwarder._entry``, reused for retries) to the socket instead of
      re-validating and re-encoding headers on every publish and waking the
      flusher task;
    * acks on the ack subscription (``ack_sid``) go straight to
      ``on_acks([(subject, data), ...])``, a run of them per call
      (:class:`AckParser`), without nats-py's per-message ``Msg`` object,
      queue and task.

    Both lean on nats-py 2.16 internals (``_send_command``, ``_pending``,
    ``_transport``, ``_ps``, ``_process_msg``); nats-py is pinned, and the
    forwarder tests cover them.
    """

    on_acks: Callable[[Acks], None] | None = None
    #: An ack with a status header instead (``NATS/1.0 503``: no responders).
    on_ack_status: Callable[[bytes, bytes], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._ps = AckParser(self)
        self.ack_sid = -1

    @property
    def ack_sid(self) -> int:
        return self._ack_sid

    @ack_sid.setter
    def ack_sid(self, sid: int) -> None:
        self._ack_sid = sid
        self.ack_sid_bytes = str(sid).encode()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        # The acks AckParser left to nats-py's parser (an HMSG, or a frame
        # split across two reads).
        if sid == self._ack_sid and self.on_acks is not None:
            # A status ("NATS/1.0 503": no responders) has no body; headers
            # without a status code ("NATS/1.0" alone) leave the body to decide.
            if headers and headers.startswith(b"NATS/1.0 ") and self.on_ack_status is not None:
                self.on_ack_status(subject, headers)
            else:
                self.on_acks([(subject, data)])
            return
        await super()._process_msg(sid, subject, reply, data, headers)

    def send_now(self, commands: list[bytes]) -> int | None:
        """Write ``commands`` to the socket synchronously: callable from trio
        with no hop into asyncio (the asyncio transport writes what the socket
        takes and buffers the rest; trio-asyncio runs in the same thread).

        Returns how many were written (0 while not connected), or None when
        the transport is not a plain TCP/TLS stream (then use
        :meth:`send_commands`). Anything nats-py itself has pending goes
        first, in order. The caller checks :meth:`needs_drain` afterwards.
        """
        transport = self._transport
        if type(transport) is not TcpTransport:
            return None
        if not self.is_connected:
            return 0
        pending = self._pending
        if pending:
            self._pending = []
            self._pending_data_size = 0
            pending.extend(commands)
            transport.writelines(pending)
        else:
            transport.writelines(commands)
        return len(commands)

    def needs_drain(self) -> bool:
        """Is the socket's write buffer above its high-water mark? Then await
        :meth:`drain_socket` (backpressure: bounds what waits in memory)."""
        writer = getattr(self._transport, "_io_writer", None)
        if writer is None:
            return False
        _low, high = writer.transport.get_write_buffer_limits()
        return bool(writer.transport.get_write_buffer_size() > high)

    async def drain_socket(self) -> None:
        if self._transport is not None:
            await self._transport.drain()

    async def send_commands(self, commands: list[bytes]) -> int:
        """Queue commands while connected and flush; returns how many were queued."""
        queued = 0
        for command in commands:
            if not self.is_connected:
                break
            await self._send_command(command)
            queued += 1
        if queued and self._pending_data_size and self._transport is not None:
            # Write now rather than kick nats-py's flusher task: one less
            # scheduling round per batch, which is latency on every QoS 1
            # message. drain() waits while the socket buffer is above its
            # high-water mark (the backpressure). The flusher finds nothing.
            pending = self._pending
            self._pending = []
            self._pending_data_size = 0
            self._transport.writelines(pending)
            await self._transport.drain()
        return queued


def header_lines(headers: dict[str, str]) -> bytes:
    """``NATS/1.0`` and one line per header: a header block without its final
    empty line (the forwarder caches these and appends ``Nats-Msg-Id``).

    Header names and values must already be safe (``mqttgate.headers`` makes
    them so): no CR/LF, no leading or trailing whitespace.
    """
    return ("NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()])).encode()


def servers(config: Config) -> list[str]:
    return [url.strip() for url in config.nats_url.split(",") if url.strip()]


def tls_context(config: Config) -> ssl.SSLContext | None:
    """A client TLS context when any TLS option is set (a ``tls://`` URL alone
    makes nats-py use the system CAs)."""
    if not (config.nats_tls_ca or config.nats_tls_cert or config.nats_tls_key):
        return None
    if bool(config.nats_tls_cert) != bool(config.nats_tls_key):
        raise ConfigError("MQTTGATE_NATS_TLS_CERT", "set both the certificate and the key, or neither")
    try:
        context = ssl.create_default_context(cafile=config.nats_tls_ca)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("MQTTGATE_NATS_TLS_CA", f"cannot load the CA bundle: {error}") from None
    if config.nats_tls_cert and config.nats_tls_key:
        try:
            context.load_cert_chain(config.nats_tls_cert, config.nats_tls_key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError("MQTTGATE_NATS_TLS_CERT", f"cannot load the client certificate: {error}") from None
    return context


def connect_options(config: Config) -> dict[str, Any]:
    """Keyword arguments of ``nats.aio.client.Client.connect`` (without callbacks).

    Reconnects forever (``max_reconnect_attempts=-1``), including the very
    first connection, which therefore only returns once a server answered.
    """
    options: dict[str, Any] = {
        "servers": servers(config),
        "name": "mqttgate",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
        "pending_size": PENDING_BYTES,
        # A full outgoing buffer makes a publish wait for the flusher; bound
        # that wait (nats-py's default waits forever, and a flusher cancelled
        # by a reconnect would never answer).
        "flush_timeout": FLUSH_TIMEOUT_S,
        "verbose": False,
    }
    if config.nats_user is not None:
        options["user"] = config.nats_user
        options["password"] = config.nats_password or ""
    if config.nats_token is not None:
        options["token"] = config.nats_token
    if config.nats_creds is not None:
        options["user_credentials"] = config.nats_creds
    if config.nats_nkey_seed is not None:
        options["nkeys_seed"] = config.nats_nkey_seed
    context = tls_context(config)
    if context is not None:
        options["tls"] = context
    return options


# ---------------------------------------------------------------- the stream


def wanted_stream(config: Config) -> StreamConfig:
    return StreamConfig(
        name=config.nats_stream,
        subjects=[f"{config.nats_subject_prefix}.>"],
        storage=StorageType.MEMORY if config.nats_storage == "memory" else StorageType.FILE,
        num_replicas=config.nats_replicas,
        # nats-py takes seconds and sends nanoseconds; 0 / -1 mean unlimited.
        max_age=config.nats_max_age,
        max_bytes=config.nats_max_bytes if config.nats_max_bytes > 0 else -1,
        duplicate_window=config.nats_duplicate_window,
    )


def filter_covers(subject_filter: str, prefix: str) -> bool:
    """Does a stream subject filter capture every ``<prefix>.<device>.<topic...>``?

    Our subjects have the prefix tokens, then the device token, then at least
    one topic token; a filter captures them all when it reaches a ``>`` no
    later than the first topic token, matching the prefix tokens (literally
    or by ``*``) and the device token by ``*`` on the way.
    """
    wanted = prefix.split(".")
    for index, token in enumerate(subject_filter.split(".")):
        if token == ">":
            return index <= len(wanted) + 1
        if index < len(wanted):
            if token not in ("*", wanted[index]):
                return False
        elif token != "*":
            return False
    return False


def stream_differences(existing: StreamConfig, config: Config) -> list[str]:
    """Tolerated differences of an existing stream (logged, not fatal)."""
    wanted = wanted_stream(config)
    notes: list[str] = []
    if existing.storage != wanted.storage:
        notes.append(f"storage is {existing.storage}, MQTTGATE_NATS_STORAGE asks {wanted.storage}")
    if (existing.num_replicas or 1) != wanted.num_replicas:
        notes.append(f"replicas {existing.num_replicas}, MQTTGATE_NATS_REPLICAS asks {wanted.num_replicas}")
    window = existing.duplicate_window or 0.0
    if window < config.forward_timeout:
        notes.append(
            f"duplicate window {window:g}s is shorter than MQTTGATE_FORWARD_TIMEOUT "
            f"{config.forward_timeout:g}s: a retried message may be stored twice"
        )
    return notes


def check_stream(existing: StreamConfig, config: Config) -> list[str]:
    """Raise ConfigError when the existing stream cannot hold our messages;
    return the tolerated differences."""
    subjects = list(existing.subjects or [])
    if not any(filter_covers(s, config.nats_subject_prefix) for s in subjects):
        raise ConfigError(
            "MQTTGATE_NATS_STREAM",
            f"stream {existing.name!r} exists with subjects {subjects}, which do not capture "
            f"{config.nats_subject_prefix}.> (MQTTGATE_NATS_SUBJECT_PREFIX); use another stream "
            f"name or prefix, or add the subject to the stream",
        )
    if existing.sealed:
        raise ConfigError("MQTTGATE_NATS_STREAM", f"stream {existing.name!r} is sealed")
    return stream_differences(existing, config)


async def aio_ensure_stream(js: Any, config: Config) -> tuple[str, list[str]]:
    """Create the stream or check it (asyncio). Returns ``("created"|"checked",
    notes)``; raises ConfigError on a mismatch, a TRANSIENT_ERRORS member when
    NATS or JetStream is not answering."""
    try:
        info = await js.stream_info(config.nats_stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(wanted_stream(config))
        except (nats.js.errors.BadRequestError, nats.js.errors.ServerError) as error:
            # e.g. 10065 "subjects overlap with an existing stream", 10074
            # "replicas > 1 not supported in non-clustered mode", 10047
            # "insufficient storage resources": retrying cannot help.
            raise ConfigError(
                "MQTTGATE_NATS_STREAM",
                f"cannot create stream {config.nats_stream!r}: {error.description} (code {error.err_code})",
            ) from None
        return "created", []
    return "checked", check_stream(info.config, config)
