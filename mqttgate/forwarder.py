"""The NATS JetStream forwarder: the broker's :class:`~mqttgate.forward.Forwarder`.

Theory of operation
-------------------
::

    connections --submit()/submit_nowait()--> [memory channel, nats_queue_size]
        --pump--> HPUB <subject> <inbox>.<key> (pre-encoded; written from trio, no asyncio hop)
        <--ack on <inbox>.<key>-- JetStream  -> ticket done, slot freed

* **Queue.** ``submit`` (QoS 1/2) waits for room in a bounded trio memory
  channel, which pauses the calling connection's reads; ``submit_nowait``
  (QoS 0) drops and counts when it is full.
* **Pending acks.** One pump task takes messages off the channel, each QoS
  1/2 one only with one of ``nats_max_pending`` slots (a semaphore), and
  publishes them in batches, written straight to the socket from trio
  (:meth:`mqttgate.nats_conn.FastClient.send_now`; asyncio only to wait
  while the socket buffer is full), as plain NATS
  publishes with a reply subject: that is an asynchronous JetStream publish,
  so up to ``nats_max_pending`` are in flight at once. One wildcard
  subscription on our inbox receives the acks (:meth:`_on_acks`, called
  with each run of acks read from the socket by
  :class:`mqttgate.nats_conn.AckParser`) and completes tickets.
* **Retry.** QoS 1/2 keep their slot until JetStream acked them. An entry
  without an ack after an attempt timeout, or sent before a reconnect, or
  refused by JetStream (no stream, storage full), is published again, with
  the same ``Nats-Msg-Id`` so JetStream stores it once (stack-notes 1.3: nats-py
  also replays its reconnect buffer, which would duplicate without the id).
* **Deadline.** Each QoS 1/2 message has ``forward_timeout`` from submission.
  ``Ticket.wait`` returns at the ack or raises :class:`ForwardFailed` once the
  expiry loop failed the message, within ``TICK_S`` after the deadline,
  whether it is still queued or in flight (no cancel scope per wait). A
  message that failed may still be stored later: at-least-once, the device
  retransmits with the same id.
* **QoS 0** is published without a reply subject (nats-server's own MQTT does
  the same: fire and forget) and never retried; it is dropped and counted when
  the queue is full or NATS is disconnected.
* **Memory bound.** At most ``nats_queue_size`` messages in the channel plus
  ``nats_max_pending`` in flight plus the one the pump holds while it waits
  for a slot (plus up to one BATCH of QoS 0 while the pump waits for the
  socket, and one per connection waiting in ``submit``), each at most
  ``max_packet_size`` bytes of payload plus headers
  (docs/nats.md); plus nats-py's outgoing buffer
  (:data:`mqttgate.nats_conn.PENDING_BYTES`). Nothing else grows with load or
  with NATS being slow or down.
* **Errors.** Every task catches the NATS errors it expects (stack-notes 1.3:
  one uncaught ``TimeoutError`` tears down the daemon); a stream mismatch is
  the only fatal one.

:func:`open_forwarder` is the async context manager the supervisor enters.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import trio
from trio_asyncio import aio_as_trio

from mqttgate import nats_conn
from mqttgate.config import Config, ConfigError
from mqttgate.forward import ForwardFailed, ForwardMessage, ForwardRefused, Ticket
from mqttgate.forwarder_stats import ForwarderStats, LatencyHistogram, RateLimited
from mqttgate.headers import ANONYMOUS_DEVICE, MSG_ID, message_headers, msg_id_value
from mqttgate.logs import get_logger
from mqttgate.protocol.packets import NO_PROPERTIES
from mqttgate.protocol.subjects import SubjectError, device_subject

log = get_logger("forwarder")

#: ``Nats-Msg-Id: `` and the size it adds to a header block with its value
#: and the block's final empty line.
MSG_ID_LINE = MSG_ID.encode() + b": "
MSG_ID_LINE_SIZE = len(MSG_ID_LINE) + 4

#: Most messages published in one socket write (a QoS 0 burst is
#: drained in as few hops as possible: that is what keeps up with it).
BATCH = 1024
#: How often the expiry and retry loops look at the in-flight table.
TICK_S = 0.1
#: ready() is false once the queue is this full (a fraction of nats_queue_size).
HIGH_WATER = 0.9
#: Encoded subject and header lines kept per (device, client, topic, qos,
#: retain) of messages without v5 properties: at most this many entries of at
#: most PREFIX_CACHE_BYTES each (about 2.5 MB), cleared when full.
PREFIX_CACHE_SIZE = 4096
PREFIX_CACHE_BYTES = 512


__all__ = [
    "ForwardRefused",
    "ForwarderStats",
    "JetStreamForwarder",
    "LatencyHistogram",
    "open_forwarder",
]


# ---------------------------------------------------------------- tickets


class _Entry:
    """One message on its way to JetStream; also its :class:`Ticket`."""

    __slots__ = (
        "command",
        "done",
        "failed",
        "finished",
        "has_slot",
        "key",
        "not_before",
        "qos",
        "sent_at",
        "sent_epoch",
        "submitted",
    )  # fmt: skip

    def __init__(self, key: int, qos: int, command: bytes, now: float) -> None:
        self.key = key
        self.qos = qos
        #: The encoded HPUB, built once and reused by every retry.
        self.command = command
        #: Its deadline is this plus forward_timeout (JetStreamForwarder._expiry_loop).
        self.submitted = now
        self.sent_at: float | None = None
        self.sent_epoch = -1
        self.not_before = 0.0
        self.has_slot = False
        self.finished = False
        self.failed = False
        #: Made by the first wait() that has to wait: most tickets are done
        #: before anyone waits (the connection waits for the oldest only).
        self.done: trio.Event | None = None

    async def wait(self) -> None:
        # No cancel scope per message (they are the costliest part of a wait):
        # the expiry loop fails every outstanding entry at its deadline.
        # An already-completed ticket returns without a checkpoint, so a
        # connection settles a whole burst of acks in one step (and writes
        # their PUBACKs in one send).
        if self.qos and not self.finished:
            if self.done is None:
                self.done = trio.Event()
            await self.done.wait()
        if self.failed:
            raise ForwardFailed("not stored in JetStream before the forward deadline (MQTTGATE_FORWARD_TIMEOUT)")

    @property
    def subject(self) -> str:
        """The NATS subject (for logs): the second word of the HPUB line."""
        return self.command.split(b" ", 2)[1].decode(errors="replace")


class _RefusedTicket:
    def __init__(self, error: SubjectError) -> None:
        self.error = error

    async def wait(self) -> None:
        raise ForwardRefused(str(self.error))


class _ClosedTicket:
    async def wait(self) -> None:
        raise ForwardFailed("the forwarder is shutting down")


# ---------------------------------------------------------------- forwarder


class JetStreamForwarder:
    """Forwards device messages to a JetStream stream; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        send, recv = trio.open_memory_channel[_Entry](config.nats_queue_size)
        self._send = send
        self._recv = recv
        #: Free pending-ack slots (nats_max_pending of them); a plain counter,
        #: only the pump waits for one (``_slot_freed``).
        self._free_slots = config.nats_max_pending
        self._slot_freed: trio.Event | None = None
        #: QoS 1/2 entries from submission to ack or failure, oldest first
        #: (deadlines are submission time + forward_timeout, so also by deadline).
        self._outstanding: dict[int, _Entry] = {}
        #: The outstanding entries that hold a pending slot (taken off the channel).
        self._inflight: dict[int, _Entry] = {}
        self._next_key = 0
        self._prefixes: dict[tuple[Any, ...], tuple[bytes, bytes, bytes]] = {}
        self._id_prefix = secrets.token_hex(6)
        self._nc: Any = None
        # Our ack subjects: <inbox>.<key>; fixed before the first connection
        # so messages submitted while NATS is still down carry the right reply.
        self._inbox = "_INBOX." + secrets.token_hex(11)
        self._inbox_bytes = self._inbox.encode()
        self._epoch = 0
        self._connected_flag = False
        self._closing = False
        self._idle = trio.Event()
        self._retry_now = trio.Event()
        # Work for the connection task, set from the asyncio callbacks:
        # after a reconnect, check the stream then mark us connected;
        # after "no responders", check (re-create) the stream.
        self._need_setup = False
        self._need_ensure = False
        self._connection_wakeup = trio.Event()
        self._setup_done = trio.Event()
        self._pump_done = trio.Event()
        self._starting = True
        self._setup_error: ConfigError | None = None
        self._limited = RateLimited()
        self._attempt_timeout = min(2.0, max(0.25, config.forward_timeout / 4))
        self.stats = ForwarderStats(
            queue_capacity=config.nats_queue_size,
            max_pending=config.nats_max_pending,
            queue_depth=lambda: self._send.statistics().current_buffer_used,
            pending_acks=lambda: len(self._inflight),
        )

    # ------------------------------------------------------------ broker side

    def _entry(self, message: ForwardMessage) -> _Entry:
        props = message.properties
        cached = None
        if props is NO_PROPERTIES:
            # Everything but the msg id and payload is the same for every
            # message of a (device, client, topic, qos, retain): encode that once.
            cache_key = (
                message.topic, message.client_id, message.device_id, message.device_type,
                message.mqtt_user, message.qos, message.retain,
            )  # fmt: skip
            cached = self._prefixes.get(cache_key)
        if cached is None:
            subject = device_subject(
                self.config.nats_subject_prefix, message.device_id or ANONYMOUS_DEVICE, message.topic
            ).encode()
            head = nats_conn.header_lines(message_headers(message, None))
            # HPUB <subject> <inbox>.<key> <header size> <total size>\r\n<headers>\r\n<payload>\r\n
            # (QoS 0 has no reply subject: nats-server's own MQTT does not wait either).
            cached = (b"HPUB %s %s." % (subject, self._inbox_bytes), b"HPUB %s " % subject, head)
            if props is NO_PROPERTIES and len(head) + len(subject) <= PREFIX_CACHE_BYTES:
                if len(self._prefixes) >= PREFIX_CACHE_SIZE:
                    self._prefixes.clear()  # bounded; rebuilt from the live topics
                self._prefixes[cache_key] = cached
        reply_line, plain_line, head = cached
        key = self._next_key
        self._next_key = key + 1
        payload = message.payload
        if message.qos:
            # The broker derives msg_id from the session and packet id so a
            # retransmitted PUBLISH dedups too; without one, dedup our own retries.
            # Nats-Msg-Id is the last header (headers.message_headers).
            msg_id = msg_id_value(message.msg_id or f"{self._id_prefix}-{key:x}").encode()
            size = len(head) + MSG_ID_LINE_SIZE + len(msg_id)
            command = b"%s%x %d %d\r\n%s%s%s\r\n\r\n%s\r\n" % (
                reply_line, key, size, size + len(payload), head, MSG_ID_LINE, msg_id, payload
            )
        else:
            size = len(head) + 2
            command = b"%s%d %d\r\n%s\r\n%s\r\n" % (plain_line, size, size + len(payload), head, payload)
        return _Entry(key, message.qos, command, trio.current_time())

    def _refused(self, message: ForwardMessage, error: SubjectError) -> None:
        self.stats.refused_total += 1
        suppressed = self._limited.allow("forward_refused")
        if suppressed is not None:
            log.warning(
                "forward_refused", client_id=message.client_id, device_id=message.device_id,
                reason=str(error), suppressed=suppressed,
            )  # fmt: skip

    async def submit(self, message: ForwardMessage) -> Ticket:
        """Queue a QoS 1/2 message, waiting for room (backpressure)."""
        try:
            entry = self._entry(message)
        except SubjectError as error:
            self._refused(message, error)
            return _RefusedTicket(error)
        if entry.qos:
            self._outstanding[entry.key] = entry
        try:
            try:
                # No checkpoint while there is room: a connection hands over a
                # whole read burst in one step (it checkpoints on its socket).
                self._send.send_nowait(entry)
            except trio.WouldBlock:
                await self._send.send(entry)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._outstanding.pop(entry.key, None)
            return _ClosedTicket()
        except trio.Cancelled:
            # The caller went away while waiting for room: never queued, so
            # neither kept until its deadline nor counted as failed then.
            self._outstanding.pop(entry.key, None)
            raise
        return entry

    def try_submit(self, message: ForwardMessage) -> Ticket | None:
        """Queue a message if there is room now; None when the queue is full
        (the caller then flushes its output and awaits :meth:`submit`). Never
        waits, so a connection need not flush before every message."""
        try:
            entry = self._entry(message)
        except SubjectError as error:
            self._refused(message, error)
            return _RefusedTicket(error)
        try:
            self._send.send_nowait(entry)
        except trio.WouldBlock:
            return None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            if not entry.qos:  # shutting down: nobody waits for a QoS 0 ticket
                self.stats.dropped_qos0_total += 1
            return _ClosedTicket()
        if entry.qos:
            self._outstanding[entry.key] = entry
        return entry

    def submit_nowait(self, message: ForwardMessage) -> bool:
        """Queue a QoS 0 message; False when dropped (queue full or closed)."""
        try:
            entry = self._entry(message)
        except SubjectError as error:
            self._refused(message, error)
            return False
        try:
            self._send.send_nowait(entry)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.stats.dropped_qos0_total += 1
            return False
        if entry.qos:  # e.g. a will message: retried like any QoS 1/2, nobody waits
            self._outstanding[entry.key] = entry
        return True

    def ready(self) -> bool:
        """For /readyz: connected, stream checked, and the queue below its high-water mark."""
        return (
            self._connected_flag
            and self.stats.queue_depth < HIGH_WATER * self.config.nats_queue_size
        )

    # ------------------------------------------------------------ completion

    def _release(self, entry: _Entry) -> None:
        entry.finished = True
        self._inflight.pop(entry.key, None)
        self._outstanding.pop(entry.key, None)
        if entry.has_slot:
            entry.has_slot = False
            self._free_slots += 1
            if self._slot_freed is not None:
                self._slot_freed.set()
        if entry.done is not None:
            entry.done.set()
        if self._closing and not self._inflight:
            self._idle.set()

    def _complete(self, entry: _Entry, duplicate: bool, now: float) -> None:
        if entry.finished:
            return
        self._release(entry)
        stats = self.stats
        stats.forwarded_total[entry.qos] += 1
        if duplicate:
            stats.duplicates_total += 1
        stats.ack_latency.observe(now - entry.submitted)

    def _fail(self, entry: _Entry, reason: str) -> None:
        if entry.finished:
            return
        entry.failed = True
        self._release(entry)
        self.stats.failed_total += 1
        suppressed = self._limited.allow("forward_failed")
        if suppressed is not None:
            log.warning(
                "forward_failed", reason=reason, subject=entry.subject, qos=entry.qos,
                connected=self._connected_flag, suppressed=suppressed,
            )  # fmt: skip

    def _drop_qos0(self, entry: _Entry) -> None:
        self._release(entry)
        self.stats.dropped_qos0_total += 1

    # ------------------------------------------------------------ publishing

    async def _pump(self) -> None:
        """Channel -> NATS, in batches, each message holding a pending slot."""
        try:
            await self._pump_batches()
        finally:
            self._pump_done.set()

    async def _pump_batches(self) -> None:
        """Take everything the channel holds (up to BATCH) per round: QoS 0
        needs no slot, QoS 1/2 each take one. When the slots run out, the
        entry in hand waits for one (so at most one entry beyond the bound)."""
        recv = self._recv
        held: _Entry | None = None
        while True:
            if held is None:
                try:
                    held = await recv.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if held.qos:
                while self._free_slots <= 0:
                    self._slot_freed = trio.Event()
                    await self._slot_freed.wait()
                self._slot_freed = None
                self._free_slots -= 1
                held.has_slot = True
            batch = [held]
            held = None
            while len(batch) < BATCH:
                try:
                    entry = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                if entry.qos:
                    if self._free_slots <= 0:
                        held = entry
                        break
                    self._free_slots -= 1
                    entry.has_slot = True
                batch.append(entry)
            await self._dispatch(batch)

    async def _dispatch(self, batch: list[_Entry]) -> None:
        live: list[_Entry] = []
        for entry in batch:
            if entry.finished:  # failed at its deadline while queued
                self._release(entry)
            elif entry.qos and not self._connected_flag:
                self._inflight[entry.key] = entry  # the retry loop sends it once connected
            elif not self._connected_flag:
                self._drop_qos0(entry)
            else:
                if entry.qos:
                    self._inflight[entry.key] = entry
                live.append(entry)
        if live:
            await self._publish(live)

    async def _publish(self, entries: list[_Entry]) -> None:
        """Publish ``entries`` (one socket write); settle QoS 0, stamp QoS 1/2."""
        nc = self._nc
        epoch = self._epoch
        now = trio.current_time()
        for entry in entries:
            # Stamped before the hop, so the retry loop does not send again
            # what this hop is still sending (a slow flush can take seconds).
            entry.sent_at = now
            entry.sent_epoch = epoch
        sent = 0
        commands = [entry.command for entry in entries]
        try:
            # Straight onto the socket from here: a hop into asyncio and back
            # costs scheduler rounds, i.e. latency on every QoS 1 message.
            written = nc.send_now(commands)
            if written is None:  # not a TCP transport: nats-py's own path
                sent = await aio_as_trio(nc.send_commands)(commands)
            else:
                sent = written
                if nc.needs_drain():  # the socket is behind: wait (backpressure)
                    await aio_as_trio(nc.drain_socket)()
        except nats_conn.TRANSIENT_ERRORS as error:
            # Usually OutboundBufferLimitError/ConnectionClosedError: the
            # connection dropped under us. QoS 1/2 are retried after the reconnect.
            self._rate_limited_error("publish", error)
        for index, entry in enumerate(entries):
            if entry.qos == 0:
                if index < sent:
                    self.stats.forwarded_total[0] += 1
                    self._release(entry)
                else:
                    self._drop_qos0(entry)
            elif index >= sent and not entry.finished:
                entry.sent_at = None  # not handed to NATS: the retry loop sends it

    def _on_acks(self, acks: nats_conn.Acks) -> None:
        """A run of acks (or errors) from JetStream on ``<inbox>.<key>``, as
        read from the socket; runs in the asyncio loop."""
        inflight = self._inflight
        skip = len(self._inbox_bytes) + 1
        now = trio.current_time()
        for subject, data in acks:
            try:
                entry = inflight.get(int(subject[skip:], 16))
            except ValueError:
                continue  # not one of our keys
            if entry is None:
                continue  # a late ack of a message already completed or failed
            if b'"error"' not in data:
                # {"stream":"MQTT", "seq":42} or {..., "duplicate": true}: only
                # a duplicate ack contains the key.
                self._complete(entry, b'"duplicate"' in data, now)
                continue
            try:
                reply = json.loads(data)["error"]
                error = f"{reply.get('description')} ({reply.get('err_code')})"
            except (ValueError, KeyError, TypeError, AttributeError):
                error = "unreadable ack"
            self._not_stored(entry, error)

    def _on_ack_status(self, subject: bytes, headers: bytes) -> None:
        """An ack with a status instead of a body (``NATS/1.0 503``)."""
        try:
            entry = self._inflight.get(int(subject[len(self._inbox_bytes) + 1 :], 16))
        except ValueError:
            return
        if entry is not None:
            status = headers.split(b"\r\n", 1)[0].decode(errors="replace")
            if status.startswith("NATS/1.0 503"):
                self._not_stored(entry, "no responders (is the stream missing?)")
            else:
                self._not_stored(entry, f"unexpected status {status!r}")

    def _not_stored(self, entry: _Entry, error: str) -> None:
        """JetStream did not store it: retry (same Nats-Msg-Id) after a pause,
        until the deadline."""
        self.stats.publish_errors_total += 1
        entry.sent_at = None
        entry.not_before = trio.current_time() + self._attempt_timeout
        suppressed = self._limited.allow("jetstream_error")
        if suppressed is not None:
            log.warning("jetstream_publish_error", error=error, subject=entry.subject, suppressed=suppressed)
            self._need_ensure = True
            self._connection_wakeup.set()

    async def _expiry_loop(self) -> None:
        """Fail QoS 1/2 messages past their deadline, queued or in flight; this
        ends their ``Ticket.wait`` (within TICK_S) and frees their slot."""
        while True:
            await trio.sleep(TICK_S)
            horizon = trio.current_time() - self.config.forward_timeout
            expired = []
            for entry in self._outstanding.values():  # oldest, i.e. earliest deadline, first
                if entry.submitted > horizon:
                    break
                expired.append(entry)
            for entry in expired:
                self._fail(entry, "deadline")

    async def _retry_loop(self) -> None:
        while True:
            with trio.move_on_after(TICK_S):
                await self._retry_now.wait()
            self._retry_now = trio.Event()
            if not self._connected_flag:
                continue
            now = trio.current_time()
            epoch = self._epoch
            horizon = now - self._attempt_timeout
            due = [
                entry
                for entry in self._inflight.values()
                if now >= entry.not_before
                and (entry.sent_at is None or entry.sent_epoch != epoch or entry.sent_at <= horizon)
            ]
            for start in range(0, len(due), BATCH):
                chunk = [entry for entry in due[start : start + BATCH] if not entry.finished]
                self.stats.retries_total += sum(1 for entry in chunk if entry.sent_epoch >= 0)
                await self._publish(chunk)

    def _rate_limited_error(self, where: str, error: BaseException) -> None:
        suppressed = self._limited.allow("nats_error:" + where)
        if suppressed is not None:
            log.warning("nats_error", where=where, error=repr(error), suppressed=suppressed)

    # ------------------------------------------------------------ connection

    def _set_connected(self, connected: bool) -> None:
        self._connected_flag = connected
        self.stats.connected = connected
        if connected:
            self._retry_now.set()  # send what waited for the connection now

    async def _aio_disconnected(self) -> None:
        if self._connected_flag and not self._closing:
            self.stats.disconnects_total += 1
            log.warning("nats_disconnected")
        self._epoch += 1
        self._set_connected(False)

    async def _aio_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        log.info("nats_reconnected", server=_server_name(url))
        # Re-check the stream first (a restarted memory-storage server lost
        # it); the connection task marks us connected after that.
        self._need_setup = True
        self._connection_wakeup.set()

    async def _aio_error(self, error: Exception) -> None:
        self._rate_limited_error("client", error)

    async def _aio_closed(self) -> None:
        self._set_connected(False)
        log.info("nats_closed")

    async def _ensure_stream(self) -> None:
        js = self._nc.jetstream()
        what, notes = await aio_as_trio(nats_conn.aio_ensure_stream)(js, self.config)
        if what == "created":
            log.info("stream_created", stream=self.config.nats_stream, subjects=f"{self.config.nats_subject_prefix}.>")
        else:
            log.info("stream_checked", stream=self.config.nats_stream)
        for note in notes:
            log.warning("stream_config_differs", stream=self.config.nats_stream, detail=note)

    async def _ensure_stream_until_done(self) -> None:
        """Ensure the stream, retrying transient errors; ConfigError propagates."""
        delay = 0.2
        while True:
            try:
                await self._ensure_stream()
                return
            except nats_conn.TRANSIENT_ERRORS as error:
                self._rate_limited_error("stream", error)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _connection(self, options: dict[str, Any]) -> None:
        """Connect (forever), set up, then follow reconnects."""
        nc = nats_conn.FastClient()
        nc.on_acks = self._on_acks
        nc.on_ack_status = self._on_ack_status
        self._nc = nc
        await aio_as_trio(nc.connect)(
            **options,
            disconnected_cb=self._aio_disconnected,
            reconnected_cb=self._aio_reconnected,
            error_cb=self._aio_error,
            closed_cb=self._aio_closed,
        )
        log.info("nats_connected", server=_server_name(nc.connected_url))
        # No callback: FastClient hands these messages to _on_acks directly.
        subscription = await aio_as_trio(nc.subscribe)(self._inbox + ".*")
        nc.ack_sid = subscription._id
        try:
            await self._ensure_stream_until_done()
            self._set_connected(nc.is_connected)
            self._setup_done.set()
            while True:
                await self._connection_wakeup.wait()
                self._connection_wakeup = trio.Event()
                if self._need_setup:
                    self._need_setup = self._need_ensure = False
                    await self._ensure_stream_until_done()
                    self._set_connected(nc.is_connected)
                elif self._need_ensure and self._connected_flag:
                    self._need_ensure = False
                    try:
                        await self._ensure_stream()
                    except nats_conn.TRANSIENT_ERRORS as error:
                        self._rate_limited_error("stream", error)
        except ConfigError as error:
            if self._starting:  # start() raises it, outside the nursery
                self._setup_error = error
                self._setup_done.set()
                return
            log.error("stream_mismatch", stream=self.config.nats_stream, error=str(error))
            raise

    async def start(self, nursery: trio.Nursery) -> ConfigError | None:
        """Start the tasks; wait up to ``nats_startup_timeout`` for NATS.

        Returns the ConfigError of a stream that does not fit (the caller
        raises it outside the nursery, so it is not wrapped in a group).
        """
        options = nats_conn.connect_options(self.config)  # may raise ConfigError (TLS files)
        nursery.start_soon(self._connection, options)
        nursery.start_soon(self._pump)
        nursery.start_soon(self._expiry_loop)
        nursery.start_soon(self._retry_loop)
        with trio.move_on_after(self.config.nats_startup_timeout):
            await self._setup_done.wait()
        self._starting = False
        if self._setup_error is not None:
            return self._setup_error
        if not self._setup_done.is_set():
            log.warning(
                "nats_unavailable", servers=[_server_name(url) for url in nats_conn.servers(self.config)],
                waited_s=self.config.nats_startup_timeout,
                detail="starting degraded (not ready); reconnecting in the background",
            )  # fmt: skip
        return None

    async def drain(self) -> None:
        """Stop taking messages, publish what is queued, wait for the acks
        (each message is bounded by its own deadline)."""
        self._closing = True
        self._send.close()
        await self._pump_done.wait()
        self._idle = trio.Event()
        if self._inflight:
            await self._idle.wait()

    async def close(self) -> None:
        """Flush and close the NATS connection (shielded, bounded).

        The flush and drain get what is left of the caller's deadline (the
        supervisor's shutdown deadline), at most 5 s: once it passed (we are
        being cancelled, the effective deadline is -inf) only the close runs,
        so a paused or unreachable NATS cannot hold the exit past
        ``shutdown_timeout``.
        """
        nc = self._nc
        if nc is None:
            return
        budget = min(5.0, trio.current_effective_deadline() - trio.current_time())
        with trio.move_on_after(max(budget, 0.0), shield=True):
            try:
                if nc.is_connected:
                    await aio_as_trio(nc.flush)(min(2.0, budget))
                await aio_as_trio(nc.drain)()
                return
            except Exception:  # drain raises while reconnecting (stack-notes 1.3)
                pass
        # Not drained (error, or out of time): close without waiting for NATS.
        with trio.move_on_after(1, shield=True):
            with contextlib.suppress(Exception):
                await aio_as_trio(nc.close)()


def _server_name(url: Any) -> str | None:
    """``host:port`` of a server URL, without any credentials in it."""
    if url is None:
        return None
    if isinstance(url, str):
        from urllib.parse import urlsplit

        url = urlsplit(url if "://" in url else "nats://" + url)
    return f"{url.hostname}:{url.port}" if url.port else str(url.hostname)


@contextlib.asynccontextmanager
async def open_forwarder(config: Config) -> AsyncIterator[JetStreamForwarder]:
    """Connect, create or check the stream, run the forwarder; on exit publish
    what is queued, wait for its acks and close the connection.

    Raises :class:`ConfigError` when the stream exists but does not fit.
    """
    forwarder = JetStreamForwarder(config)
    error: ConfigError | None = None
    try:
        async with trio.open_nursery() as nursery:
            error = await forwarder.start(nursery)
            if error is None:
                try:
                    yield forwarder
                finally:
                    # Bounded: every message has a deadline, and the
                    # supervisor's shutdown deadline cancels us from outside.
                    with trio.move_on_after(config.forward_timeout + 1):
                        await forwarder.drain()
                    stats = forwarder.stats
                    log.info(
                        "forwarder_drained", forwarded=dict(stats.forwarded_total),
                        failed=stats.failed_total, dropped_qos0=stats.dropped_qos0_total,
                        pending=len(forwarder._inflight),
                    )  # fmt: skip
            nursery.cancel_scope.cancel()
    finally:
        await forwarder.close()
    if error is not None:
        raise error
