"""One client connection: the read loop, the outbox writer, acks and teardown.

Theory of operation
-------------------
One task per connection reads: ``receive_some(65536)``, feed the decoder, then
handle every complete packet before reading again. Every read has a deadline
(CONNECT: ``connect_timeout``; then keep alive x 1.5, v5 [MQTT-3.1.2-22],
v311 [MQTT-3.1.2-24]).

Everything sent goes through :meth:`Connection.write`, which appends bytes to
an outbox list. A writer task, started only while the outbox is non-empty,
joins the whole outbox into one ``send_all``; an idle connection therefore
has one task. QoS 1/2 acknowledgements whose forward is still pending go to an
ack task (also started on demand) that awaits the tickets in order, so the
read loop never waits for JetStream round trips one at a time.

The one place errors become bytes is :meth:`Connection._fail`: an
:class:`MQTTError` before CONNACK is answered with a CONNACK (v5 reason, or
the 3.1.1 return code where one exists), after it with a v5 DISCONNECT; 3.1.1
connections are just closed (v311 [MQTT-4.8.0-1]).
"""

from __future__ import annotations

import collections
import secrets
import time
from typing import TYPE_CHECKING, Any

import trio

from mqttgate.auth import ANONYMOUS, Acl, AuthDenied, Identity
from mqttgate.broker.delivery import SessionHandle
from mqttgate.forward import DONE, ForwardFailed, ForwardMessage
from mqttgate.logs import get_logger
from mqttgate.protocol.codec import Decoder, encode
from mqttgate.protocol.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    RetainHandling,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttgate.protocol.reasons import (
    GRANTED_QOS,
    MQTTError,
    ProtocolVersion,
    ReasonCode,
    connack_return_code_v311,
)
from mqttgate.protocol.session import (
    Limits,
    Message,
    Session,
    SubOptions,
    connack_for,
    message_from_publish,
    negotiate,
)
from mqttgate.protocol.topics import parse_shared, validate_topic_filter, validate_topic_name

if TYPE_CHECKING:
    from mqttgate.broker.server import Broker

log = get_logger("broker")

_V5 = ProtocolVersion.V5
_PINGRESP = b"\xd0\x00"
#: Longest a publisher is held back by one batch's congested subscribers (seconds).
_PRESSURE_WAIT = 2.0
_R = ReasonCode
#: The reasons a client's DISCONNECT may carry that keep the Will (v5 section 3.14.2.1).
_WILL_KEEPING = frozenset({_R.DISCONNECT_WITH_WILL_MESSAGE})


class Connection:
    """One client connection (see the module docstring)."""

    __slots__ = (
        "abnormal",
        "acking",
        "acks",
        "acks_done",
        "acl",
        "aliases",
        "broker",
        "client_id",
        "close_reason",
        "conn_id",
        "connect_expiry",
        "connected",
        "connected_at",
        "decoder",
        "flushed",
        "handle",
        "identity",
        "keepalive",
        "nursery",
        "out",
        "out_bytes",
        "peer",
        "peer_max_packet_size",
        "scope",
        "stream",
        "taken_over",
        "version",
        "will",
        "writing",
    )

    def __init__(self, broker: Broker, stream: trio.SocketStream, conn_id: int, peer: str) -> None:
        self.broker = broker
        self.stream = stream
        self.conn_id = conn_id
        self.peer = peer
        self.decoder = Decoder(max_packet_size=broker.config.max_packet_size)
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
        self.aliases: dict[int, str] | None = None
        self.peer_max_packet_size: int | None = None
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.writing = False
        self.flushed: trio.Event | None = None
        # Created on first use: an idle connection should not carry an empty deque (~600 B).
        self.acks: Any = ()
        self.acking = False
        self.acks_done: trio.Event | None = None
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
        if not self.writing and self.nursery is not None:
            self.writing = True
            self.flushed = trio.Event()
            self.nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        out = self.out
        try:
            while out:
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                self.out_bytes = 0
                await self.stream.send_all(data)
                handle = self.handle
                if handle is not None:
                    if handle.session.queue:
                        handle.pump()
                    elif handle.drained is not None or handle.slow:
                        handle.relieved()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            out.clear()
            self.out_bytes = 0
            if self.scope is not None:
                self.scope.cancel()
        finally:
            self.writing = False
            if self.flushed is not None:
                self.flushed.set()

    async def _drain(self) -> None:
        while self.writing and self.flushed is not None:
            await self.flushed.wait()

    def kick(self, reason: ReasonCode | None) -> None:
        """End the connection from outside (takeover, admin, overflow, shutdown)."""
        if self.close_reason is None:
            self.close_reason = reason if reason is not None else _R.UNSPECIFIED_ERROR
        if self.scope is not None:
            self.scope.cancel()

    # ------------------------------------------------------------ lifecycle

    async def run(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                try:
                    await self._serve()
                except MQTTError as error:
                    self._fail(error)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            await self._close()

    async def _serve(self) -> None:
        connect = await self._receive_connect()
        if connect is None:
            return
        if not await self._establish(connect):
            return
        await self._read_loop()

    async def _receive_connect(self) -> Connect | None:
        decoder = self.decoder
        with trio.move_on_after(self.broker.config.connect_timeout):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                decoder.feed(data)
                packet = decoder.next_packet()
                if packet is not None:
                    assert isinstance(packet, Connect)  # the codec refuses anything else first
                    return packet
        log.info("connect_timeout", conn_id=self.conn_id, peer=self.peer)
        return None

    def _refuse(self, reason: ReasonCode, detail: str) -> None:
        stats = self.broker.stats
        stats.connects_denied[reason.name] = stats.connects_denied.get(reason.name, 0) + 1
        log.info(
            "connect_denied",
            conn_id=self.conn_id,
            peer=self.peer,
            client_id=self.client_id,
            reason=reason.name,
            detail=detail,
        )
        self._send_connack(Connack(reason, False, _reason_props(self.version, detail)))

    def _send_connack(self, connack: Connack) -> None:
        if self.version == _V5:
            self.write(encode(connack, _V5))
            return
        if connack_return_code_v311(connack.reason_code) is not None:
            self.write(encode(Connack(connack.reason_code, connack.session_present), ProtocolVersion.V311))

    async def _establish(self, connect: Connect) -> bool:
        broker = self.broker
        config = broker.config
        limits = broker.limits
        self.version = connect.protocol_version
        self.client_id = connect.client_id
        if connect.protocol_version == ProtocolVersion.V31:
            self._refuse(_R.UNSUPPORTED_PROTOCOL_VERSION, "MQTT 3.1 is not supported")
            return False
        if connect.properties.authentication_method is not None:
            # v5 [MQTT-4.12.0-1]: enhanced authentication is not supported.
            self._refuse(_R.BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported")
            return False
        plan = negotiate(connect, limits, "auto-" + secrets.token_hex(10))
        if plan.reason != _R.SUCCESS:
            self._refuse(plan.reason, plan.detail)
            return False
        self.client_id = plan.client_id
        if broker.stats.connections_current >= config.max_connections:
            self._refuse(_R.SERVER_BUSY, "too many connections")
            return False
        try:
            identity = await broker.authenticator.authenticate(
                connect.username, connect.password, client_id=plan.client_id, peer=self.peer
            )
        except AuthDenied as denied:
            self._refuse(denied.reason, denied.detail)
            return False
        self.identity = identity
        self.acl = broker.authenticator.acl_for(identity)
        await broker.take_over(self, plan.client_id)
        if self.close_reason is not None:
            return False
        handle, present = broker.open_session(self, plan, clean=connect.clean_start)
        self.handle = handle
        self.keepalive = plan.keepalive
        self.connect_expiry = plan.session_expiry
        self.will = connect.will
        self.peer_max_packet_size = plan.peer_max_packet_size
        handle.session.window = min(config.max_inflight, plan.peer_receive_maximum)
        connack = connack_for(
            plan,
            self.version,
            limits,
            session_present=present,
            requested_expiry=connect.properties.session_expiry_interval if self.version == _V5 else None,
        )
        self.write(encode(connack, self.version))
        self.connected = True
        self.connected_at = time.time()
        broker.stats.connects_total += 1
        log.info(
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
            for packet in handle.session.resend():
                self.write(encode(packet, self.version))
            handle.pump()
        return True

    async def _read_loop(self) -> None:
        stream = self.stream
        decoder = self.decoder
        timeout = self.keepalive * 1.5 if self.keepalive else float("inf")
        on_publish = self._on_publish
        while True:
            while (packet := decoder.next_packet()) is not None:
                if type(packet) is Publish:
                    await on_publish(packet)
                else:
                    handler = _HANDLERS.get(type(packet))
                    if handler is None:
                        raise MQTTError(_R.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")
                    if handler(self, packet) is False:
                        return
            if self.broker.pressure:
                await self._wait_for_subscribers()
            with trio.move_on_after(timeout) as deadline:
                data = await stream.receive_some(65536)
            if deadline.cancelled_caught:
                self.broker.stats.keepalive_timeouts += 1
                log.info("keepalive_timeout", conn_id=self.conn_id, client_id=self.client_id, keepalive=self.keepalive)
                self.close_reason = _R.KEEP_ALIVE_TIMEOUT
                return
            if not data:
                return
            decoder.feed(data)

    async def _wait_for_subscribers(self) -> None:
        """Overload control: stop reading while the subscribers we fed are congested.

        Waits at most ``_PRESSURE_WAIT`` seconds; a subscriber still congested
        then is marked slow and no longer holds publishers back (its QoS 0
        messages are dropped, its QoS 1/2 queue may overflow).
        """
        pressure = self.broker.pressure
        handles = pressure[:]
        pressure.clear()
        for handle in handles:
            handle.pressured = False
        with trio.move_on_after(_PRESSURE_WAIT):
            for handle in handles:
                while handle.congested() and not handle.slow:
                    if handle.drained is None:
                        handle.drained = trio.Event()
                    await handle.drained.wait()
            return
        for handle in handles:
            if handle.congested() and not handle.slow:
                handle.slow = True
                log.info("subscriber_slow", client_id=handle.session.client_id, conn_id=self.conn_id)

    def _fail(self, error: MQTTError) -> None:
        """The one place a protocol error becomes bytes (see module docstring)."""
        self.broker.stats.protocol_errors += 1
        log.info(
            "protocol_error",
            conn_id=self.conn_id,
            client_id=self.client_id,
            peer=self.peer,
            reason=error.reason.name,
            detail=error.message,
        )
        version = self.decoder.version
        if self.connected:
            self.close_reason = error.reason
            return
        if version == _V5:
            self.write(encode(Connack(error.reason, False), _V5))
        elif error.reason == _R.UNSUPPORTED_PROTOCOL_VERSION:
            # v311 [MQTT-3.1.2-2]: return code 0x01, also for levels we do not know.
            self.write(encode(Connack(error.reason), ProtocolVersion.V311))

    async def _close(self) -> None:
        broker = self.broker
        with trio.CancelScope(shield=True):
            with trio.move_on_after(broker.config.shutdown_timeout if broker.shutting_down else 2.0):
                if self.acks and broker.shutting_down:
                    # Let in-flight forwards finish so their acks can go out.
                    while self.acking and self.acks_done is not None:
                        await self.acks_done.wait()
                reason = self.close_reason
                if reason is not None and self.connected and self.version == _V5:
                    props = _reason_props(self.version, _CLOSE_DETAIL.get(reason, ""))
                    self.write(encode(Disconnect(reason, props), _V5))
                await self._drain()
            if self.nursery is not None:
                self.nursery.cancel_scope.cancel()
            self.nursery = None
            await self.stream.aclose()
            broker.connection_closed(self)

    # ------------------------------------------------------------ PUBLISH

    async def _on_publish(self, publish: Publish) -> None:
        broker = self.broker
        stats = broker.stats
        qos = publish.qos
        stats.messages_in[qos] += 1
        topic = publish.topic
        props = publish.properties
        if props.topic_alias is not None:
            topic = self._resolve_alias(topic, props.topic_alias)
        limits = broker.limits
        if len(topic) * 4 > limits.max_topic_length or topic.count("/") >= limits.max_topic_levels:
            validate_topic_name(topic, max_length=limits.max_topic_length, max_levels=limits.max_topic_levels)
        handle = self.handle
        assert handle is not None
        session = handle.session
        pid = publish.packet_id
        if qos:
            assert pid is not None
            if qos == 2 and pid in session.awaiting_release:
                # A retransmission of a QoS 2 message already routed: acknowledge
                # again, do not route again (v5 [MQTT-4.3.3-10] method B).
                if not any(entry[0] == pid for entry in self.acks):
                    self.write(encode(Pubrec(pid), self.version))
                return
            if (
                self.version == _V5
                and len(self.acks) + len(session.awaiting_release) >= limits.receive_maximum
            ):
                # v5 [MQTT-3.3.4-9]
                raise MQTTError(_R.RECEIVE_MAXIMUM_EXCEEDED, "more QoS 1/2 PUBLISHes than Receive Maximum")
        acl = self.acl
        if acl is not None and not acl.may_publish(topic):
            stats.publish_denied += 1
            log.debug("publish_denied", conn_id=self.conn_id, client_id=self.client_id, topic=topic)
            if qos:
                code = _R.NOT_AUTHORIZED if self.version == _V5 else _R.SUCCESS
                packet = Puback(pid, code) if qos == 1 else Pubrec(pid, code)  # type: ignore[arg-type]
                if qos == 2 and self.version != _V5:
                    session.awaiting_release.add(pid)  # type: ignore[arg-type]
                self.write(encode(packet, self.version))
            return
        message = message_from_publish(publish, topic, self.client_id, trio.current_time())
        if publish.retain:
            broker.router.retain(message)
        broker.router.publish(message)
        if qos == 0:
            if broker.forwarding and not broker.forwarder.submit_nowait(self._forward_message(message, None)):
                stats.forward_dropped += 1
            return
        assert pid is not None
        if qos == 2:
            session.awaiting_release.add(pid)
        if broker.forwarding:
            ticket = await broker.forwarder.submit(
                self._forward_message(message, session.inbound_msg_id(pid))
            )
        else:
            ticket = DONE
        if ticket is DONE and not self.acks:
            self._ack(pid, qos, _R.SUCCESS)
            return
        while len(self.acks) >= limits.receive_maximum and self.acking and self.acks_done is not None:
            # 3.1.1 has no Receive Maximum: stop reading instead.
            await self.acks_done.wait()
        if not self.acks:
            self.acks = collections.deque()
        self.acks.append((pid, qos, ticket))
        if not self.acking and self.nursery is not None:
            self.acking = True
            self.acks_done = trio.Event()
            self.nursery.start_soon(self._acker)

    def _forward_message(self, message: Message, msg_id: str | None) -> ForwardMessage:
        identity = self.identity
        return ForwardMessage(
            topic=message.topic,
            payload=message.payload,
            qos=message.qos,
            retain=message.retain,
            client_id=self.client_id,
            device_id=identity.device_id,
            device_type=identity.device_type,
            mqtt_user=identity.mqtt_user,
            properties=message.properties,
            msg_id=msg_id,
        )

    def _resolve_alias(self, topic: str, alias: int) -> str:
        # v5 section 3.3.2.3.4
        if alias > self.broker.limits.topic_alias_maximum:
            raise MQTTError(_R.TOPIC_ALIAS_INVALID, f"topic alias {alias} above our maximum (v5 [MQTT-3.3.2-9])")
        if self.aliases is None:
            self.aliases = {}
        if topic:
            self.aliases[alias] = topic
            return topic
        known = self.aliases.get(alias)
        if known is None:
            raise MQTTError(_R.PROTOCOL_ERROR, f"unknown topic alias {alias} with an empty topic")
        return known

    def _ack(self, pid: int, qos: int, reason: ReasonCode) -> None:
        session = self.handle.session  # type: ignore[union-attr]
        if qos == 1:
            session.inbound_done(pid)
            if reason == _R.SUCCESS:
                self.write(b"\x40\x02" + pid.to_bytes(2, "big"))
            else:
                self.write(encode(Puback(pid, reason), self.version))
            return
        if reason.is_error:
            # v5 section 4.3.3: a failing PUBREC ends the flow.
            session.awaiting_release.discard(pid)
            session.inbound_done(pid)
        self.write(encode(Pubrec(pid, reason), self.version))

    async def _acker(self) -> None:
        acks = self.acks
        stats = self.broker.stats
        try:
            while acks:
                pid, qos, ticket = acks[0]
                reason = _R.SUCCESS
                try:
                    await ticket.wait()
                except ForwardFailed as failure:
                    stats.forward_failed += 1
                    log.warning("forward_failed", conn_id=self.conn_id, client_id=self.client_id, detail=str(failure))
                    if self.version != _V5:
                        # 3.1.1 has no negative ack: disconnect so it retransmits.
                        self.acks = ()
                        self.kick(_R.UNSPECIFIED_ERROR)
                        return
                    reason = _R.UNSPECIFIED_ERROR
                acks.popleft()
                self._ack(pid, qos, reason)
        finally:
            self.acking = False
            if self.acks_done is not None:
                self.acks_done.set()

    # ------------------------------------------------------------ other packets

    def _on_puback(self, packet: Puback) -> None:
        handle = self.handle
        assert handle is not None
        if handle.session.on_puback(packet.packet_id) and handle.session.queue:
            handle.pump()

    def _on_pubrec(self, packet: Pubrec) -> None:
        handle = self.handle
        assert handle is not None
        pubrel = handle.session.on_pubrec(packet.packet_id, packet.reason_code)
        if pubrel is not None:
            self.write(encode(pubrel, self.version))
        elif handle.session.queue:
            handle.pump()

    def _on_pubrel(self, packet: Pubrel) -> None:
        session = self.handle.session  # type: ignore[union-attr]
        pid = packet.packet_id
        if pid in session.awaiting_release:
            session.awaiting_release.discard(pid)
            session.inbound_done(pid)
            self.write(b"\x70\x02" + pid.to_bytes(2, "big"))
        else:
            # v5 [MQTT-4.3.3-?]: PUBCOMP 0x92 for an unknown id; 3.1.1 plain PUBCOMP.
            self.write(encode(Pubcomp(pid, _R.PACKET_IDENTIFIER_NOT_FOUND), self.version))

    def _on_pubcomp(self, packet: Pubcomp) -> None:
        handle = self.handle
        assert handle is not None
        if handle.session.on_pubcomp(packet.packet_id) and handle.session.queue:
            handle.pump()

    def _on_subscribe(self, packet: Subscribe) -> None:
        broker = self.broker
        limits = broker.limits
        handle = self.handle
        assert handle is not None
        session = handle.session
        v5 = self.version == _V5
        ids = packet.properties.subscription_identifiers
        sub_id = ids[0] if ids else None
        codes: list[ReasonCode] = []
        retained: list[tuple[Message, int, tuple[int, ...]]] = []
        now = trio.current_time()
        for sub in packet.subscriptions:
            topic_filter = sub.topic_filter
            try:
                validate_topic_filter(
                    topic_filter, max_length=limits.max_topic_length, max_levels=limits.max_topic_levels
                )
                shared = parse_shared(topic_filter)
            except MQTTError:
                codes.append(_R.TOPIC_FILTER_INVALID)
                continue
            if shared is not None and sub.no_local:
                # v5 [MQTT-3.8.3-4]
                raise MQTTError(_R.PROTOCOL_ERROR, "No Local on a shared subscription")
            if self.acl is not None and not self.acl.may_subscribe(topic_filter):
                broker.stats.subscribe_denied += 1
                log.info("subscribe_denied", conn_id=self.conn_id, client_id=self.client_id, topic_filter=topic_filter)
                codes.append(_R.NOT_AUTHORIZED)
                continue
            existed = topic_filter in session.subscriptions
            if not existed and len(session.subscriptions) >= limits.max_subscriptions:
                codes.append(_R.QUOTA_EXCEEDED)
                continue
            opts = SubOptions(sub.qos, sub.no_local, sub.retain_as_published, sub_id)
            broker.router.subscribe(self.client_id, topic_filter, opts)
            session.subscriptions[topic_filter] = opts
            codes.append(GRANTED_QOS[sub.qos])
            # v5 section 3.3.1.3: retained messages are not sent for shared subscriptions.
            if shared is None and (
                sub.retain_handling == RetainHandling.SEND
                or (sub.retain_handling == RetainHandling.SEND_IF_NEW and not existed)
            ):
                for message in broker.router.retained_for(topic_filter, now):
                    qos = sub.qos if sub.qos < message.qos else message.qos
                    retained.append((message, qos, () if sub_id is None else (sub_id,)))
        if not v5:
            codes = [c if c <= _R.GRANTED_QOS_2 else _R.UNSPECIFIED_ERROR for c in codes]
        self.write(encode(Suback(packet.packet_id, tuple(codes)), self.version))
        for message, qos, sub_ids in retained:
            # v5 [MQTT-3.3.1-8], v311 [MQTT-3.3.1-8]: retained on subscription keeps RETAIN=1.
            handle.deliver(message, qos, True, sub_ids)

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        broker = self.broker
        session = self.handle.session  # type: ignore[union-attr]
        codes = []
        for topic_filter in packet.topic_filters:
            removed = broker.router.unsubscribe(self.client_id, topic_filter)
            session.subscriptions.pop(topic_filter, None)
            codes.append(_R.SUCCESS if removed else _R.NO_SUBSCRIPTION_EXISTED)
        self.write(encode(Unsuback(packet.packet_id, tuple(codes)), self.version))

    def _on_pingreq(self, packet: Pingreq) -> None:
        self.write(_PINGRESP)

    def _on_disconnect(self, packet: Disconnect) -> bool:
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if self.connect_expiry == 0 and expiry != 0:
                # v5 [MQTT-3.14.2-2]
                raise MQTTError(_R.PROTOCOL_ERROR, "Session Expiry set on DISCONNECT after 0 on CONNECT")
            handle = self.handle
            assert handle is not None
            handle.session.expiry = min(expiry, self.broker.limits.max_session_expiry)
        self.abnormal = packet.reason_code in _WILL_KEEPING
        return False

    def _on_auth(self, packet: Auth) -> None:
        raise MQTTError(_R.PROTOCOL_ERROR, "AUTH without enhanced authentication")


_HANDLERS: dict[type, Any] = {
    Puback: Connection._on_puback,
    Pubrec: Connection._on_pubrec,
    Pubrel: Connection._on_pubrel,
    Pubcomp: Connection._on_pubcomp,
    Subscribe: Connection._on_subscribe,
    Unsubscribe: Connection._on_unsubscribe,
    Pingreq: Connection._on_pingreq,
    Disconnect: Connection._on_disconnect,
    Auth: Connection._on_auth,
}

_CLOSE_DETAIL = {
    _R.SESSION_TAKEN_OVER: "another connection with this client id",
    _R.SERVER_SHUTTING_DOWN: "server shutting down",
    _R.KEEP_ALIVE_TIMEOUT: "no packet within keep alive x 1.5",
    _R.QUOTA_EXCEEDED: "too many messages queued for this client",
}


def _reason_props(version: ProtocolVersion, detail: str) -> Properties:
    if version == _V5 and detail:
        return Properties(reason_string=detail)
    return NO_PROPERTIES


__all__ = ["Connection", "Limits", "Session"]
