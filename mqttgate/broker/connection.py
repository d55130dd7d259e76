"""One client connection: the read loop, the outbox writer and teardown.

The client's own PUBLISHes (routing, forwarding, in-order acks) are handled
by the :class:`~mqttgate.broker.inbound.InboundPublishes` half, in ``inbound.py``.

Theory of operation
-------------------
One task per connection reads: up to 64 KiB per receive, feed the decoder,
then handle every complete packet before reading again. Plain TCP connections
are served on the bare socket (``sock``: non-blocking ``recv_into`` a buffer
shared by all connections, ``wait_readable`` only when there is nothing to
read); other streams (TLS, tests' memory streams) through ``receive_some``.
Every read has a deadline (CONNECT: ``connect_timeout``; then keep alive x
1.5, v5 [MQTT-3.1.2-22], v311 [MQTT-3.1.2-24]), moved forward as data
arrives: for plain TCP a number (``deadline``) the broker's housekeeping
checks twice a second (``expire``), for streams the deadline of the
connection's one cancel scope, which is also what ``kick`` cancels. An idle connection is one task, one cancel scope, a decoder and its
session: no nursery, no per-read objects.

Everything sent goes through :meth:`Connection.write`, which appends bytes to
an outbox list and puts the connection on the broker's dirty list once. The
read loop that caused the writes flushes the dirty list at the end of its
batch (``Broker.flush``): each connection's outbox is joined and sent with one
non-blocking ``send``; only when the socket cannot take it all does a writer
task start, wait until writable and send the rest. Writes outside a read
batch (timers, the ack task, closing) are flushed at once. So a read batch of many
PUBLISHes costs one send per receiving connection, and no task switch at all
when the sockets keep up. QoS 1/2 acknowledgements whose forward is still
pending go to an ack task (started on demand) that awaits the tickets in
order, so the read loop never waits for JetStream round trips one at a time.

Overload: before handling a PUBLISH the read loop waits while another session
is congested (``broker/delivery.py`` ``Overload``), so a publisher stops being
read instead of having its messages dropped.

The one place errors become bytes is :meth:`Connection._fail`: an
:class:`MQTTError` before CONNACK is answered with a CONNACK (v5 reason, or
the 3.1.1 return code where one exists), after it with a v5 DISCONNECT; 3.1.1
connections are just closed (v311 [MQTT-4.8.0-1]). A plain TCP connection
is closed by half-closing it and discarding input until the client's EOF
(``_linger``), so a client still writing does not get RST before our last bytes.
"""

from __future__ import annotations

import math
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import trio

from mqttgate.auth import ANONYMOUS, Acl, AuthDenied, Identity
from mqttgate.broker.delivery import SessionHandle
from mqttgate.broker.handlers import HANDLERS
from mqttgate.broker.inbound import InboundPublishes, check_response_topic
from mqttgate.logs import get_logger
from mqttgate.protocol.codec import Decoder, PacketTooLargeForPeer, encode
from mqttgate.protocol.packets import (
    NO_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    Properties,
    Publish,
    Will,
)
from mqttgate.protocol.reasons import (
    MQTTError,
    ProtocolVersion,
    ReasonCode,
    connack_return_code_v311,
)
from mqttgate.protocol.session import (
    Limits,
    Session,
    connack_for,
    negotiate,
)
from mqttgate.protocol.topics import validate_topic_name

if TYPE_CHECKING:
    from mqttgate.broker.server import Broker

log = get_logger("broker")

_V5 = ProtocolVersion.V5
_R = ReasonCode
_INF = math.inf
#: Longest wait for the peer's EOF after our half-close (Connection._linger).
_LINGER = 1.0
#: Longest wait to write the closing DISCONNECT and the rest of the outbox.
_CLOSE_WRITE_S = 2.0
#: Topic filters one SUBSCRIBE / UNSUBSCRIBE may carry, unless max_subscriptions is larger.
MAX_TOPIC_FILTERS_FLOOR = 10_000
_CONNACK_V311 = b"\x20\x02\x00\x00"  # CONNACK, length 2, session present 0, return code 0
_CONNACK_V311_PRESENT = b"\x20\x02\x01\x00"  # CONNACK, length 2, session present 1, return code 0
_checkpoint = trio.lowlevel.checkpoint
_wait_readable = trio.lowlevel.wait_readable
_current_time = trio.current_time


class Connection(InboundPublishes):
    """One client connection (see the module docstring)."""

    __slots__ = (
        "abnormal",
        "acl",
        "broker",
        "client_id",
        "close_reason",
        "closed",
        "conn_id",
        "connect_expiry",
        "connected",
        "connected_at",
        "deadline",
        "decoder",
        "flushed",
        "handle",
        "identity",
        "keepalive",
        "nursery",
        "out",
        "out_alias_max",
        "out_aliases",
        "out_bytes",
        "peer",
        "peer_max_packet_size",
        "queued",
        "scope",
        "sock",
        "stream",
        "taken_over",
        "timed_out",
        "version",
        "will",
        "writer_scope",
        "writing",
    )

    def __init__(
        self, broker: Broker, stream: Any, conn_id: int, peer: str, sock: socket.socket | None = None
    ) -> None:
        self.broker = broker
        #: The bare socket of a plain TCP connection, else None and ``stream`` is used.
        self.sock = sock
        self.stream = stream
        self.conn_id = conn_id
        self.peer = peer
        self.decoder = Decoder(
            max_packet_size=broker.config.max_packet_size,
            # docs/broker.md "Limits": filters per SUBSCRIBE / UNSUBSCRIBE.
            max_topic_filters=max(MAX_TOPIC_FILTERS_FLOOR, broker.config.max_subscriptions),
        )
        self.version: ProtocolVersion = ProtocolVersion.V311
        self.client_id = ""
        self.identity: Identity = ANONYMOUS
        self.acl: Acl | None = None
        self.handle: SessionHandle | None = None
        self.connected = False
        self.connected_at = 0.0
        self.keepalive = 0
        self.connect_expiry = 0
        self.will: Will | None = None
        self.peer_max_packet_size: int | None = None
        #: v5 outbound Topic Aliases (topic -> alias) when the client allows
        #: them (its Topic Alias Maximum), else None (delivery.encode_aliased).
        self.out_aliases: dict[str, int] | None = None
        self.out_alias_max = 0
        self.out: list[bytes] = []
        self.out_bytes = 0
        #: On the broker's dirty list.
        self.queued = False
        #: A writer task owns the outbox (the socket could not take it all).
        self.writing = False
        self.writer_scope: trio.CancelScope | None = None
        #: Created by whoever waits for the writer to finish.
        self.flushed: trio.Event | None = None
        self.closed = False
        #: Plain TCP: when the read deadline passes (the broker's housekeeping
        #: checks it twice a second and calls ``expire``); streams use the
        #: cancel scope's deadline instead.
        self.deadline = _INF
        self.timed_out = False
        self._init_inbound()
        self.close_reason: ReasonCode | None = None
        #: The connection ended without a normal DISCONNECT: the Will is published.
        self.abnormal = True
        self.taken_over = False
        self.scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.queued and not self.writing:
            self.queued = True
            broker = self.broker
            broker.dirty.append(self)
            if not broker.batching:
                self.flush()

    def flush(self) -> None:
        """Send the outbox now, as far as the socket takes it (``Broker.flush``)."""
        self.queued = False
        out = self.out
        if self.writing or self.closed:
            return
        sock = self.sock
        if sock is None:
            if out:
                self._start_writer()
            return
        while out:
            data = out[0] if len(out) == 1 else b"".join(out)
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._broken()
                return
            if sent < len(data):
                out[:] = [data[sent:]]
                self.out_bytes = len(data) - sent
                self._start_writer()
                return
            out.clear()
            self.out_bytes = 0
            # What _sent writes (queued QoS 1/2 messages) is appended and sent
            # by the next round of this loop, not by a nested flush.
            self.queued = True
            self._sent()
            self.queued = False

    def _sent(self) -> None:
        """The outbox drained: move queued QoS 1/2 messages, relieve publishers."""
        handle = self.handle
        if handle is not None:
            if handle.session.queue:
                handle.pump()
            elif handle.pressured or handle.slow:
                handle.relieved()

    def _broken(self) -> None:
        self.out.clear()
        self.out_bytes = 0
        if self.scope is not None:
            self.scope.cancel()

    def _start_writer(self) -> None:
        if self.nursery is None:
            return
        self.writing = True
        self.nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        out = self.out
        sock = self.sock
        try:
            with trio.CancelScope() as self.writer_scope:
                while out and not self.closed:
                    data = out[0] if len(out) == 1 else b"".join(out)
                    if sock is None:
                        out.clear()
                        self.out_bytes = 0
                        await self.stream.send_all(data)
                    else:
                        await trio.lowlevel.wait_writable(sock)
                        try:
                            sent = sock.send(data)
                        except BlockingIOError:
                            sent = 0
                        if sent < len(data):
                            out[:] = [data[sent:]]
                            self.out_bytes = len(data) - sent
                            continue
                        out.clear()
                        self.out_bytes = 0
                    self._sent()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken()
        finally:
            self.writer_scope = None
            self.writing = False
            if self.flushed is not None:
                self.flushed.set()
                self.flushed = None

    async def _drain(self) -> None:
        self.flush()
        while self.writing:
            if self.flushed is None:
                self.flushed = trio.Event()
            await self.flushed.wait()

    def expire(self) -> None:
        """The read deadline passed (plain TCP; called by the broker's housekeeping)."""
        self.deadline = _INF
        self.timed_out = True
        if self.scope is not None:
            self.scope.cancel()

    def kick(self, reason: ReasonCode | None) -> None:
        """End the connection from outside (takeover, admin, overflow, shutdown)."""
        if self.close_reason is None:
            self.close_reason = reason if reason is not None else _R.UNSPECIFIED_ERROR
        if self.scope is not None:
            self.scope.cancel()

    # ------------------------------------------------------------ lifecycle

    async def run(self, nursery: trio.Nursery) -> None:
        """Serve the connection; ``nursery`` hosts its writer and ack tasks.

        Everything is inline here and in ``_read_loop``: every coroutine frame
        is kept by every idle connection.
        """
        broker = self.broker
        self.nursery = nursery
        try:
            try:
                connect_deadline = _current_time() + broker.config.connect_timeout
                raw = self.sock is not None
                # Plain TCP connections keep their deadline in ``self.deadline``:
                # a trio deadline costs heap work at every change.
                with trio.CancelScope(deadline=_INF if raw else connect_deadline) as scope:
                    self.scope = scope
                    if raw:
                        self.deadline = connect_deadline
                    try:
                        connect = await self._receive_connect()
                        if connect is not None:
                            # No deadline while authenticating and taking over
                            # (the takeover has its own).
                            if raw:
                                self.deadline = _INF
                            else:
                                scope.deadline = _INF
                            if await self._establish(connect):
                                await self._read_loop()
                    except MQTTError as error:
                        self._fail(error)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                if self.timed_out or (
                    scope.cancelled_caught and self.close_reason is None and _current_time() >= scope.deadline
                ):
                    # Not kicked, not a failed write: the read deadline passed.
                    if self.connected:
                        broker.stats.keepalive_timeouts += 1
                        log.info(
                            "keepalive_timeout", conn_id=self.conn_id, client_id=self.client_id,
                            device_id=self.identity.device_id, keepalive=self.keepalive,
                        )
                        self.close_reason = _R.KEEP_ALIVE_TIMEOUT
                    elif self.handle is None:
                        log.info("connect_timeout", conn_id=self.conn_id, peer=self.peer)
            finally:
                await self._close()
        except Exception as error:  # a bug must end one connection, never the broker
            await broker.crashed(self, error)
        finally:
            broker.forget(self)

    async def _receive(self) -> bool:
        """Read once into the decoder; False at end of stream."""
        sock = self.sock
        if sock is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.decoder.feed(data)
            return True
        broker = self.broker
        while True:
            try:
                n = sock.recv_into(broker.rbuf)
            except BlockingIOError:
                # Waiting outside the except clause: an idle connection must
                # not keep the exception and its traceback alive.
                n = -1
            except OSError:  # reset by peer
                return False
            if n > 0:
                self.decoder.feed(broker.rview[:n])
                return True
            if not n:
                return False
            await _wait_readable(sock)

    async def _receive_connect(self) -> Connect | None:
        decoder = self.decoder
        while True:
            if not await self._receive():
                return None
            packet = decoder.next_packet()
            if packet is not None:
                assert isinstance(packet, Connect)  # the codec refuses anything else first
                return packet

    def _refuse(
        self,
        reason: ReasonCode,
        detail: str,
        *,
        mqtt_user: str | None = None,
        why: str | None = None,
        device_id: str | None = None,
    ) -> None:
        stats = self.broker.stats
        stats.connects_denied[reason.name] = stats.connects_denied.get(reason.name, 0) + 1
        log.info(
            "connect_denied",
            conn_id=self.conn_id,
            peer=self.peer,
            client_id=self.client_id,
            mqtt_user=mqtt_user,
            device_id=device_id,
            reason=reason.name,
            why=why or detail,
        )
        self._send_connack(Connack(reason, False, _reason_props(self.version, detail)))

    def _send_connack(self, connack: Connack) -> None:
        if self.version == _V5:
            try:
                # v5 [MQTT-3.2.2-19], [MQTT-3.2.2-20]: the Reason String and
                # User Properties go if the CONNACK would exceed the client's
                # Maximum Packet Size; if it still does, nothing is sent.
                self.write(encode(connack, _V5, max_packet_size=self.peer_max_packet_size))
            except PacketTooLargeForPeer:
                pass
            return
        if connack_return_code_v311(connack.reason_code) is not None:
            self.write(encode(Connack(connack.reason_code, connack.session_present), ProtocolVersion.V311))

    async def _establish(self, connect: Connect) -> bool:
        broker = self.broker
        config = broker.config
        limits = broker.limits
        self.version = connect.protocol_version
        self.client_id = connect.client_id
        if self.version == _V5:
            # Known from here on, so that refusing CONNACKs respect it too.
            self.peer_max_packet_size = connect.properties.maximum_packet_size
        if connect.protocol_version == ProtocolVersion.V31:
            self._refuse(_R.UNSUPPORTED_PROTOCOL_VERSION, "MQTT 3.1 is not supported")
            return False
        if connect.properties.authentication_method is not None:
            # v5 [MQTT-4.12.0-1]: enhanced authentication is not supported.
            self._refuse(_R.BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported")
            return False
        plan = negotiate(connect, limits, "" if connect.client_id else "auto-" + secrets.token_hex(10))
        if plan.reason != _R.SUCCESS:
            self._refuse(plan.reason, plan.detail)
            return False
        self.client_id = plan.client_id
        if connect.will is not None:
            # The Will is published like any PUBLISH, so the same topic limits
            # apply: v5 CONNACK 0x90 Topic Name invalid; 3.1.1 has no return
            # code for it, so the connection is just closed (_send_connack).
            try:
                validate_topic_name(
                    connect.will.topic, max_length=limits.max_topic_length, max_levels=limits.max_topic_levels
                )
                if connect.will.properties.response_topic is not None:
                    check_response_topic(connect.will.properties.response_topic)
            except MQTTError as error:
                self._refuse(error.reason, f"Will Topic: {error.message}")
                return False
        if broker.stats.connections_current >= config.max_connections:
            self._refuse(_R.SERVER_BUSY, "too many connections")
            return False
        refused = broker.session_limit_reached(self, plan.client_id)
        if refused is not None:
            # Before authentication: a refused client costs no argon2 verify.
            # Only max_sessions here: the device is not known yet.
            self._refuse(*_OPEN_REFUSAL[refused], why=refused)
            return False
        try:
            identity = await broker.authenticator.authenticate(
                connect.username, connect.password, client_id=plan.client_id, peer=self.peer
            )
        except AuthDenied as denied:
            self._refuse(
                denied.reason, denied.detail, mqtt_user=connect.username, why=denied.why,
                device_id=denied.device_id,
            )
            return False
        self.identity = identity
        self.acl = broker.authenticator.acl_for(identity)
        if broker.owned_by_other(plan.client_id, identity.device_id):
            # Before the takeover: another device's live connection stays up.
            self._refuse(
                *_OPEN_REFUSAL[OTHER_DEVICES_CLIENT_ID], mqtt_user=connect.username,
                why=OTHER_DEVICES_CLIENT_ID, device_id=identity.device_id,
            )
            return False
        refused = broker.device_limit_reached(self, plan.client_id, plan.session_expiry > 0)
        if refused is not None:
            # Before the takeover too: a refused CONNECT ends nothing.
            self._refuse(*_OPEN_REFUSAL[refused], why=refused, device_id=identity.device_id)
            return False
        await broker.take_over(self, plan.client_id)
        if self.close_reason is not None:
            return False
        broker.batching = True
        try:
            return self._open(connect, plan, identity)
        finally:
            broker.batching = False
            if broker.dirty:
                broker.flush()

    def _open(self, connect: Connect, plan: Any, identity: Identity) -> bool:
        broker = self.broker
        config = broker.config
        limits = broker.limits
        opened = broker.open_session(self, plan, clean=connect.clean_start)
        if isinstance(opened, str):
            # max_sessions filled up while this client was authenticated, its
            # device holds max_sessions_per_device (known only now), or another
            # device created the session while the takeover waited.
            self._refuse(*_OPEN_REFUSAL[opened], why=opened, device_id=identity.device_id)
            return False
        handle, present = opened
        self.handle = handle
        self.keepalive = plan.keepalive
        self.connect_expiry = plan.session_expiry
        self.will = connect.will
        self.peer_max_packet_size = plan.peer_max_packet_size
        if self.version == _V5 and connect.properties.topic_alias_maximum and limits.topic_alias_maximum:
            self.out_aliases = {}
            # Capped by our own maximum too: each alias keeps a topic per connection.
            self.out_alias_max = min(connect.properties.topic_alias_maximum, limits.topic_alias_maximum)
        handle.session.window = min(config.max_inflight, plan.peer_receive_maximum)
        if self.version == _V5:
            connack = connack_for(
                plan,
                self.version,
                limits,
                session_present=present,
                requested_expiry=connect.properties.session_expiry_interval,
            )
            self.write(encode(connack, self.version))
        else:
            # A 3.1.1 CONNACK accepting the connection has no variable part but
            # Session Present (v311 section 3.2): two constants.
            self.write(_CONNACK_V311_PRESENT if present else _CONNACK_V311)
        self.connected = True
        self.connected_at = time.time()
        broker.stats.connects_total += 1
        broker.log.info(
            "client_connected",
            conn_id=self.conn_id,
            client_id=plan.client_id,
            device_id=identity.device_id,
            peer=self.peer,
            protocol_version=int(self.version),
            session_present=present,
            keepalive=plan.keepalive,
        )
        if present:
            handle.resend()
        return True

    async def _read_loop(self) -> None:
        broker = self.broker
        decoder = self.decoder
        scope = self.scope
        assert scope is not None
        timeout = self.keepalive * 1.5 if self.keepalive else _INF
        # The deadline moves only when it is ``slack`` behind: at most one
        # deadline update per ``slack`` seconds, and the timeout fires at most
        # ``slack`` late.
        slack = min(1.0, timeout / 16)
        sock = self.sock
        if sock is None:
            scope.deadline = _current_time() + timeout + slack
        else:
            self.deadline = _current_time() + timeout
        on_publish = self._on_publish
        handlers = HANDLERS
        reply_limit = 2 * broker.config.max_outbox_bytes
        rbuf = broker.rbuf
        rview = broker.rview
        while True:
            broker.batching = True
            try:
                while (packet := decoder.next_packet()) is not None:
                    if type(packet) is Publish:
                        if self.waits_for is not None:
                            await self._wait_for_subscribers()
                        slow = on_publish(packet)
                        if slow is not None:
                            await slow
                    else:
                        handler = handlers.get(type(packet))
                        if handler is None:
                            raise MQTTError(_R.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")
                        if handler(self, packet) is False:
                            return
            finally:
                broker.batching = False
                if broker.dirty:
                    broker.flush()
            if self.out_bytes >= reply_limit and self.writing:
                # A client that sends requests (PINGREQ, QoS 1/2 PUBLISH,
                # SUBSCRIBE...) but does not read its replies: stop reading it
                # until they are sent, so its outbox cannot grow without bound.
                # Deliveries stop at max_outbox_bytes by themselves (delivery.py).
                await self._drain()
            if sock is None:
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                decoder.feed(data)
            else:
                # The bare socket, inline (see run): read what is there, wait
                # only when there is nothing, and let others run between two
                # batches that did not wait.
                waited = False
                while True:
                    try:
                        n = sock.recv_into(rbuf)
                    except BlockingIOError:
                        # Waiting outside the except clause: an idle connection
                        # must not keep the exception and its traceback alive.
                        n = -1
                    except OSError:  # reset by peer
                        return
                    if n >= 0:
                        break
                    waited = True
                    await _wait_readable(sock)
                if not n:
                    return
                decoder.feed(rview[:n])
                if not waited:
                    await _checkpoint()
            if timeout != _INF and decoder.has_packet():
                # Keep alive counts whole packets (v5 [MQTT-3.1.2-22], v311
                # [MQTT-3.1.2-24]): bytes of an unfinished one do not move the
                # deadline. One header peek per read, none per packet.
                deadline = _current_time() + timeout
                if sock is not None:
                    self.deadline = deadline
                elif scope.deadline < deadline:
                    scope.deadline = deadline + slack

    def _unbatch(self) -> None:
        """About to wait in the middle of a read batch: send what it produced."""
        broker = self.broker
        broker.batching = False
        if broker.dirty:
            broker.flush()

    def _hold_keepalive(self) -> None:
        """Our own backpressure (a full forward or ack queue, congested
        subscribers) stops reading this client: its keep alive must not run
        out meanwhile, since what it sent is waiting in our socket buffer
        (v5 [MQTT-3.1.2-22] is about packets the client did not send). The
        clock restarts when reading resumes (:meth:`_resume_keepalive`)."""
        if self.sock is not None:
            self.deadline = _INF
        elif self.scope is not None:
            self.scope.deadline = _INF

    def _resume_keepalive(self) -> None:
        if not self.keepalive:
            return
        timeout = self.keepalive * 1.5
        deadline = _current_time() + timeout
        if self.sock is not None:
            self.deadline = deadline
        elif self.scope is not None:
            self.scope.deadline = deadline + min(1.0, timeout / 16)  # the read loop's slack

    async def _wait_for_subscribers(self) -> None:
        """Overload control: hold this PUBLISH while the sessions fed are congested.

        Waits until none of them is, or until ``max_publisher_pause`` after
        they became congested; those are then marked slow and no longer hold
        publishers back (docs/broker.md "Slow subscribers and overload").
        """
        self._unbatch()
        overload = self.broker.overload
        own = self.handle
        while True:
            pending = [h for h in self.waits_for or () if h.pressured and h is not own]
            if not pending:
                break
            deadline = min(h.since for h in pending) + overload.max_pause
            if _current_time() >= deadline:
                for handle in pending:
                    if handle.since + overload.max_pause <= deadline:
                        handle.slow = True
                        overload.remove(handle)
                        log.info(
                            "subscriber_slow", client_id=handle.session.client_id,
                            device_id=handle.session.owner, conn_id=self.conn_id,
                        )
                continue
            self.waits_for = pending
            if overload.event is None:
                overload.event = trio.Event()
            self._hold_keepalive()
            with trio.move_on_at(deadline):
                await overload.event.wait()
            self._resume_keepalive()
        self.waits_for = None
        self.broker.batching = True

    def _fail(self, error: MQTTError) -> None:
        """The one place a protocol error becomes bytes (see module docstring)."""
        self.broker.stats.protocol_errors += 1
        log.info(
            "protocol_error",
            conn_id=self.conn_id,
            client_id=self.client_id,
            device_id=self.identity.device_id,
            peer=self.peer,
            reason=error.reason.name,
            detail=error.message,
        )
        version = self.decoder.version
        if self.connected:
            self.close_reason = error.reason
            return
        if version == _V5:
            data = encode(Connack(error.reason, False), _V5)
            peer_max = self.peer_max_packet_size
            if peer_max is None or len(data) <= peer_max:  # v5 [MQTT-3.1.2-24]
                self.write(data)
        elif error.reason == _R.UNSUPPORTED_PROTOCOL_VERSION:
            # v311 [MQTT-3.1.2-2]: return code 0x01, also for levels we do not know.
            self.write(encode(Connack(error.reason), ProtocolVersion.V311))

    async def _close(self) -> None:
        broker = self.broker
        with trio.CancelScope(shield=True):
            if self.acks and broker.shutting_down:
                # Let in-flight forwards finish so their acks can go out, but
                # stop early enough that the DISCONNECT below still goes out
                # before the daemon's shutdown deadline.
                with trio.move_on_at(broker.acks_deadline):
                    while self.acking and self.acks_done is not None:
                        await self.acks_done.wait()
            with trio.move_on_at(min(_current_time() + _CLOSE_WRITE_S, broker.shutdown_deadline)):
                reason = self.close_reason
                if reason is not None and self.connected and self.version == _V5:
                    props = _reason_props(self.version, _CLOSE_DETAIL.get(reason, ""))
                    try:
                        # v5 [MQTT-3.14.2-3], [MQTT-3.14.2-4]: the Reason
                        # String and User Properties go if the DISCONNECT
                        # would exceed the client's Maximum Packet Size.
                        self.write(encode(Disconnect(reason, props), _V5, max_packet_size=self.peer_max_packet_size))
                    except PacketTooLargeForPeer:
                        pass  # v5 [MQTT-3.1.2-24]: not even the reason code fits
                await self._drain()
            for task_scope in (self.writer_scope, self.acker_scope):
                if task_scope is not None:
                    task_scope.cancel()
            if self.acks:
                # Before the session can be resumed (connection_closed below).
                self._unconfirm_pending()
            self.nursery = None
            if self.sock is None:
                self.closed = True
                await self.stream.aclose()
                broker.connection_closed(self)
            else:
                self.closed = True
                broker.connection_closed(self)
                await self._linger()
                self.close_transport()

    async def _linger(self) -> None:
        """Half-close, then read and discard until the peer's EOF (at most _LINGER s).

        Closing a socket with unread input makes the kernel send RST instead
        of FIN, and a client still writing then loses what we sent last (the
        DISCONNECT with the reason, v5 section 4.13, or the refusing CONNACK).
        After shutdown(SHUT_WR) the client reads our bytes and then EOF.
        """
        sock = self.sock
        assert sock is not None
        if self.timed_out and self.handle is None:
            return  # CONNECT never came: nothing was sent that could be lost
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # already gone
            return
        rbuf = self.broker.rbuf
        with trio.move_on_at(min(_current_time() + _LINGER, self.broker.shutdown_deadline)):
            while True:
                try:
                    n = sock.recv_into(rbuf)
                except BlockingIOError:
                    n = -1
                except OSError:
                    return
                if not n:
                    return
                if n < 0:
                    await _wait_readable(sock)

    def close_transport(self) -> None:
        """Close the bare socket at once (a stream is closed by ``aclose``)."""
        self.closed = True
        self.out.clear()
        self.out_bytes = 0
        sock = self.sock
        if sock is not None:
            if sock.fileno() != -1:
                trio.lowlevel.notify_closing(sock)
            sock.close()


#: ``why`` of a CONNACK refused because the client id's session (or delayed
#: Will) belongs to another device (Broker.owned_by_other).
OTHER_DEVICES_CLIENT_ID = "client_id_of_other_device"

#: Reason code and v5 Reason String of a CONNACK refused by
#: ``Broker.open_session``. A session limit is 0x97 (3.1.1: return code 3);
#: the device may learn which: both are about itself or the broker. Another
#: device's client id is 0x85 (3.1.1: rc 2, identifier rejected): "a valid
#: string but not allowed by the Server" (v5 section 3.2.2.2).
_OPEN_REFUSAL = {
    "max_sessions": (_R.QUOTA_EXCEEDED, "quota exceeded: too many sessions"),
    "max_sessions_per_device": (_R.QUOTA_EXCEEDED, "quota exceeded: too many sessions for this device"),
    OTHER_DEVICES_CLIENT_ID: (_R.CLIENT_IDENTIFIER_NOT_VALID, "client identifier in use by another device"),
}

_CLOSE_DETAIL = {
    _R.SESSION_TAKEN_OVER: "another connection with this client id",
    _R.SERVER_SHUTTING_DOWN: "server shutting down",
    _R.KEEP_ALIVE_TIMEOUT: "no packet within keep alive x 1.5",
    # Also sent for a SUBSCRIBE / UNSUBSCRIBE over the topic filter limit (codec).
    _R.QUOTA_EXCEEDED: "quota exceeded: too many queued messages, or topic filters in one packet",
}


def _reason_props(version: ProtocolVersion, detail: str) -> Properties:
    if version == _V5 and detail:
        return Properties(reason_string=detail)
    return NO_PROPERTIES


__all__ = ["Connection", "Limits", "Session"]
