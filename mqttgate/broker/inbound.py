"""PUBLISH from a client: validate, route, forward, acknowledge in order.

The half of :class:`mqttgate.broker.connection.Connection` that handles the
client's own messages, kept apart from the connection's lifecycle, reading
and writing (``connection.py``). A mixin rather than a separate object
because this is the hot path: every call stays a method call on the
connection, with no extra attribute hop per message.

Theory of operation
-------------------
* ``_on_publish`` (called by the read loop for each PUBLISH) checks the
  topic, alias, Receive Maximum and ACL, then routes the message to the
  local subscribers and, when forwarding is on, hands it to the forwarder. It
  returns something to await only on the slow paths (the forward queue is
  full: backpressure; the connection's ack queue is full), so a read burst is
  handled in one scheduling step.
* QoS 1/2 acknowledgements wait for the forward ticket (the JetStream ack):
  they queue in ``acks`` in packet order, and an ack task (``_acker``,
  started on demand) sends them in that order as the tickets complete, the
  completed ones in one batch. A PUBACK therefore never precedes the
  storage of its message (docs/nats.md "Delivery guarantees").
* A ticket that failed (deadline) becomes v5 PUBACK/PUBREC 0x80, or a
  disconnect of a 3.1.1 client, which retransmits after reconnecting; a topic
  that can never be a NATS subject becomes 0x90 (v5) or an
  acknowledge-and-drop (3.1.1), counted.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import trio

from mqttgate.forward import DONE, ForwardFailed, ForwardMessage, ForwardRefused
from mqttgate.logs import get_logger
from mqttgate.protocol.codec import encode
from mqttgate.protocol.packets import NO_PROPERTIES, Puback, Publish, Pubrec
from mqttgate.protocol.reasons import MQTTError, ProtocolVersion, ReasonCode
from mqttgate.protocol.session import Message, message_from_publish
from mqttgate.protocol.topics import validate_topic_name

if TYPE_CHECKING:
    from mqttgate.auth import Acl, Identity
    from mqttgate.broker.delivery import SessionHandle
    from mqttgate.broker.server import Broker

log = get_logger("broker")

_V5 = ProtocolVersion.V5
_R = ReasonCode
#: Longest wait of a QoS 0 message for room in the forward queue before it is
#: dropped (docs/nats.md "Delivery guarantees and backpressure").
QOS0_PATIENCE_S = 0.02


class InboundPublishes:
    """Mixin of :class:`~mqttgate.broker.connection.Connection`: its inbound
    PUBLISH handling and the state that belongs to it."""

    __slots__ = ("acker_scope", "acking", "acks", "acks_done", "aliases", "qos0_stuck", "waits_for")

    if TYPE_CHECKING:  # provided by Connection
        broker: Broker
        handle: SessionHandle | None
        version: ProtocolVersion
        client_id: str
        conn_id: int
        identity: Identity
        acl: Acl | None
        nursery: trio.Nursery | None

        def write(self, data: bytes) -> None: ...
        def kick(self, reason: ReasonCode | None) -> None: ...
        def _unbatch(self) -> None: ...
        def _hold_keepalive(self) -> None: ...
        def _resume_keepalive(self) -> None: ...

    def _init_inbound(self) -> None:
        #: v5 inbound Topic Aliases (alias -> topic), created on first use.
        self.aliases: dict[int, str] | None = None
        #: Congested sessions this connection's last PUBLISHes went to
        #: (overload control: Connection._wait_for_subscribers).
        self.waits_for: list[SessionHandle] | None = None
        #: Pending acknowledgements in packet order: (packet id, QoS, ticket).
        #: Created on first use: an idle connection should not carry an empty deque (~600 B).
        self.acks: Any = ()
        self.acking = False
        self.acks_done: trio.Event | None = None
        self.acker_scope: trio.CancelScope | None = None
        #: A QoS 0 message waited QOS0_PATIENCE_S in vain: drop the next ones
        #: at once while the forward queue stays full.
        self.qos0_stuck = False

    def _on_publish(self, publish: Publish) -> Awaitable[None] | None:
        """Handle a PUBLISH; returns what to await only on the slow paths
        (forwarding, or acknowledgements queued behind pending forwards)."""
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
        if props is not NO_PROPERTIES and props.response_topic is not None:
            check_response_topic(props.response_topic)
        handle = self.handle
        assert handle is not None
        session = handle.session
        pid = publish.packet_id
        if qos:
            assert pid is not None
            if qos == 2 and pid in session.awaiting_release:
                # A retransmission of a QoS 2 message already routed: acknowledge
                # again, do not route again (v5 [MQTT-4.3.3-10] method B).
                if any(entry[0] == pid for entry in self.acks):
                    return None  # its PUBREC waits for its forward ticket
                if broker.forwarding and session.reforward(pid):
                    # Its PUBREC never went out: the forward was not confirmed
                    # when the last connection ended (Session.unconfirm). Forward
                    # it again (same Nats-Msg-Id: stored once) and PUBREC after.
                    message = message_from_publish(publish, topic, self.client_id, trio.current_time())
                    return self._forward(message, pid, qos)
                self.write(encode(Pubrec(pid), self.version))
                return None
            if (
                self.version == _V5
                and len(self.acks) + len(session.awaiting_release) >= limits.receive_maximum
                and self._inbound_in_flight() >= limits.receive_maximum
            ):
                # v5 [MQTT-3.3.4-7]. The cheap sum above counts a QoS 2 message
                # whose PUBREC still waits for its forward ticket twice (in
                # ``acks`` and in ``awaiting_release``); only when it reaches
                # the limit is the exact count taken.
                raise MQTTError(_R.RECEIVE_MAXIMUM_EXCEEDED, "more QoS 1/2 PUBLISHes than Receive Maximum")
        acl = self.acl
        if acl is not None and not acl.may_publish(topic):
            stats.publish_denied += 1
            log.debug(
                "publish_denied", conn_id=self.conn_id, client_id=self.client_id,
                device_id=self.identity.device_id, topic=topic,
            )
            if qos:
                code = _R.NOT_AUTHORIZED if self.version == _V5 else _R.SUCCESS
                if qos == 2 and self.version != _V5:
                    session.await_release(pid)  # type: ignore[arg-type]
                if self.acks:
                    # Acknowledgements go out in the order of the PUBLISHes
                    # (v5 [MQTT-4.6.0-2], [MQTT-4.6.0-3]): behind the ones
                    # still waiting for JetStream.
                    return self._queue_ack(pid, qos, _Answered(code))  # type: ignore[arg-type]
                packet = Puback(pid, code) if qos == 1 else Pubrec(pid, code)  # type: ignore[arg-type]
                self.write(encode(packet, self.version))
            return None
        message = message_from_publish(publish, topic, self.client_id, trio.current_time())
        if publish.retain:
            broker.router.retain(message)
        hit = broker.overload.hit
        if hit:
            hit.clear()
        broker.router.publish(message)
        if hit:
            # Some receivers are congested: hold the next PUBLISH for them.
            waits_for = self.waits_for
            if waits_for is None:
                self.waits_for = waits_for = []
            for handle in hit:
                if handle not in waits_for:
                    waits_for.append(handle)
            hit.clear()
        if qos == 0:
            if broker.forwarding:
                forwarded = self._forward_message(message, None)
                if self.qos0_stuck:
                    # The last wait found the pump stuck: no waiting, drop
                    # until the queue takes a message again.
                    if broker.forwarder.submit_nowait(forwarded):
                        self.qos0_stuck = False
                    else:
                        stats.forward_dropped += 1
                elif broker.forwarder.try_submit(forwarded) is None:
                    return self._forward_qos0_later(forwarded)
            return None
        assert pid is not None
        if qos == 2:
            session.await_release(pid)
        if broker.forwarding:
            return self._forward(message, pid, qos)
        if not self.acks:
            self._ack(pid, qos, _R.SUCCESS)
            return None
        return self._queue_ack(pid, qos, DONE)

    def _inbound_in_flight(self) -> int:
        """The client's QoS 1/2 PUBLISHes not yet acknowledged (v5 section 4.9):
        QoS 2 ones are in ``awaiting_release`` from routing until PUBREL (also
        while their PUBREC waits in ``acks``), QoS 1 ones in ``acks`` until
        their PUBACK is sent."""
        waiting_qos1 = sum(1 for entry in self.acks if entry[1] == 1)
        return len(self.handle.session.awaiting_release) + waiting_qos1  # type: ignore[union-attr]

    def _forward(self, message: Message, pid: int, qos: int) -> Awaitable[None] | None:
        """Hand a QoS 1/2 message to the forwarder; its ack waits for the
        ticket. Returns what to await only when this must wait (no room in
        the forward queue or in the ack queue): the common case costs no
        coroutine."""
        forwarded = self._forward_message(message, self.handle.session.inbound_msg_id(pid))  # type: ignore[union-attr]
        # Queue without waiting when there is room: flushing this batch's
        # output before every forwarded message cost ~11% of the process.
        ticket = self.broker.forwarder.try_submit(forwarded)
        if ticket is None:
            return self._forward_waiting(forwarded, pid, qos)
        if ticket is DONE and not self.acks:
            self._ack(pid, qos, _R.SUCCESS)
            return None
        return self._queue_ack(pid, qos, ticket)

    async def _forward_qos0_later(self, forwarded: ForwardMessage) -> None:
        """The forward queue is full for a QoS 0 message: wait up to
        QOS0_PATIENCE_S for room (the pump usually makes some in its next
        turn), then drop it, counted.

        QoS 0 never waits for JetStream, but dropping at the first full queue
        lost most of a burst to a pump that simply had not run yet; when the
        pump is really stuck (NATS slow to ack or to read), this bounds what
        each message costs its publisher.
        """
        broker = self.broker
        self._unbatch()
        with trio.move_on_after(QOS0_PATIENCE_S):
            await broker.forwarder.submit(forwarded)
            broker.batching = True
            return
        broker.batching = True
        # Stuck, not just behind: the next QoS 0 messages are dropped without
        # waiting until the queue takes one again (one wait per episode, not
        # one per message).
        self.qos0_stuck = True
        if not broker.forwarder.submit_nowait(forwarded):  # counts its own drop
            broker.stats.forward_dropped += 1

    async def _forward_waiting(self, forwarded: ForwardMessage, pid: int, qos: int) -> None:
        # The forward queue is full: this wait is the backpressure that
        # stops reading the device; send what the batch produced first.
        broker = self.broker
        self._unbatch()
        self._hold_keepalive()
        ticket = await broker.forwarder.submit(forwarded)
        self._resume_keepalive()
        broker.batching = True
        if ticket is DONE and not self.acks:
            self._ack(pid, qos, _R.SUCCESS)
            return
        waiting = self._queue_ack(pid, qos, ticket)
        if waiting is not None:
            await waiting

    def _queue_ack(self, pid: int, qos: int, ticket: Any) -> Awaitable[None] | None:
        """Queue the ack of ``pid`` behind ``ticket`` (acks go out in order);
        returns what to await when the queue is full."""
        if self.acks and len(self.acks) >= self.broker.limits.receive_maximum and self.acking:
            return self._queue_ack_waiting(pid, qos, ticket)
        self._append_ack(pid, qos, ticket)
        return None

    async def _queue_ack_waiting(self, pid: int, qos: int, ticket: Any) -> None:
        broker = self.broker
        limits = broker.limits
        while len(self.acks) >= limits.receive_maximum and self.acking and self.acks_done is not None:
            # 3.1.1 has no Receive Maximum: stop reading instead.
            self._unbatch()
            self._hold_keepalive()
            await self.acks_done.wait()
            self._resume_keepalive()
            broker.batching = True
        self._append_ack(pid, qos, ticket)

    def _append_ack(self, pid: int, qos: int, ticket: Any) -> None:
        if not self.acks:
            self.acks = collections.deque()
        self.acks.append((pid, qos, ticket))
        if not self.acking and self.nursery is not None:
            self.acking = True
            self.acks_done = trio.Event()
            self.nursery.start_soon(self._acker)

    def _unconfirm_pending(self) -> None:
        """The connection ends with acknowledgements not sent: mark the QoS 2
        ones, so that their retransmission is forwarded again instead of
        being acknowledged as stored (Session.unconfirm)."""
        handle = self.handle
        if handle is not None:
            for pid, qos, _ticket in self.acks:
                if qos == 2:
                    handle.session.unconfirm(pid)

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
            session.released(pid)
            session.inbound_done(pid)
        self.write(encode(Pubrec(pid, reason), self.version))

    async def _acker(self) -> None:
        try:
            with trio.CancelScope() as self.acker_scope:
                await self._ack_in_order()
        finally:
            self.acker_scope = None
            self.acking = False
            if self.acks_done is not None:
                self.acks_done.set()

    async def _ack_in_order(self) -> None:
        # Acks of tickets that are already complete are written in one batch
        # (one send for a burst of PUBACKs); before actually waiting, the
        # batch is flushed, because other tasks run while this one waits.
        # A completed ticket's wait() does not checkpoint (forward.Ticket).
        try:
            await self._ack_batches()
        finally:
            self._unbatch()

    async def _ack_batches(self) -> None:
        acks = self.acks
        broker = self.broker
        stats = broker.stats
        while acks:
            pid, qos, ticket = acks[0]
            reason = _R.SUCCESS
            # A completed JetStream ticket is settled here without a call;
            # other tickets (None: DONE, refused, closed) answer at once.
            finished = getattr(ticket, "finished", None)
            if finished is False:
                self._unbatch()
            try:
                if finished is not True or ticket.failed:
                    await ticket.wait()
                broker.batching = True
                if finished is None:
                    reason = getattr(ticket, "reason", _R.SUCCESS)  # _Answered
            except ForwardRefused:
                # The topic can never become a NATS subject: retrying (the
                # 3.1.1 disconnect below) would loop forever. v5: "Topic Name
                # not accepted" (v5 section 3.4.2.1); 3.1.1 has no negative
                # ack, so acknowledge and drop, counted.
                stats.forward_refused += 1
                if self.version == _V5:
                    reason = _R.TOPIC_NAME_INVALID
            except ForwardFailed as failure:
                stats.forward_failed += 1
                log.warning(
                    "forward_failed", conn_id=self.conn_id, client_id=self.client_id,
                    device_id=self.identity.device_id, detail=str(failure),
                )
                if self.version != _V5:
                    # 3.1.1 has no negative ack: disconnect so it retransmits.
                    self._unconfirm_pending()
                    self.acks = ()
                    self.kick(_R.UNSPECIFIED_ERROR)
                    return
                reason = _R.UNSPECIFIED_ERROR
            acks.popleft()
            self._ack(pid, qos, reason)


class _Answered:
    """An acknowledgement decided without the forwarder (a PUBLISH the ACL
    denied) that waits its turn behind earlier ones still being forwarded."""

    __slots__ = ("reason",)

    def __init__(self, reason: ReasonCode) -> None:
        self.reason = reason

    async def wait(self) -> None:
        return None


def check_response_topic(topic: str) -> None:
    """v5 [MQTT-3.3.2-14]: a Response Topic is a Topic Name, without wildcards."""
    if not topic or "+" in topic or "#" in topic:
        raise MQTTError(_R.PROTOCOL_ERROR, f"Response Topic {topic!r} is not a topic name (v5 [MQTT-3.3.2-14])")
