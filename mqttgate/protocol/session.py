"""One client's MQTT session, and the decisions taken when it connects.

Theory of operation
-------------------
This module decides; :mod:`mqttgate.broker` waits. Nothing here reads a clock,
a socket or a logger: times come in as ``now`` (monotonic seconds) arguments.

* :func:`negotiate` turns a CONNECT and the broker's :class:`Limits` into a
  :class:`ConnectPlan` (client id, keep alive, session expiry, the peer's
  receive maximum and packet size) or an error reason for the CONNACK.
* :class:`Message` is one application message on its way through the broker:
  what a client published, stamped with its sender and expiry deadline.
* :class:`Session` is the state that outlives a connection (v5 section 4.1,
  v311 section 4.1): the outbound in-flight window and queue of QoS 1/2
  messages, the inbound QoS 2 packet ids waiting for PUBREL, the subscription
  mirror and the de-duplication ids handed to the forwarder. Its methods take
  packets and return the packets to send; the connection encodes them.
* :class:`QueueBudget` is the one byte budget all sessions' queues share
  (``max_queued_bytes``): every queued entry adds its message's
  :func:`queued_size` on :meth:`Session.enqueue` and gives it back when it
  leaves the queue (:meth:`Session.dequeue`, :meth:`Session.end`,
  :meth:`Session.reset_connection_state`), so the number of persistent
  sessions cannot multiply ``max_queued_messages`` into unbounded memory.
* :class:`DeviceQuotas` keeps one device from taking what all devices share:
  the sessions held under each device id (``max_sessions_per_device``) and a
  per-device :class:`QueueBudget` (``max_queued_bytes_per_device``) whose
  parent is the broker-wide one, so a queued entry counts against both.

Outbound QoS 1/2 flow (server -> client), per packet id::

    queued --(window has room)--> SENT --PUBACK--> done            (QoS 1)
                                  SENT --PUBREC--> RELEASED --PUBCOMP--> done (QoS 2)

The window is the client's Receive Maximum (capped by ``max_inflight``): every
entry of ``inflight``, SENT or RELEASED, counts against it until its PUBACK,
PUBCOMP or error PUBREC (v5 [MQTT-3.3.4-9]). On a resumed session the window
is the new connection's; :meth:`Session.resend` retransmits what fits and
*holds* the rest of the SENT entries (still in ``inflight``, in order), which
:meth:`Session.next_held` releases one per free slot, before anything queued.
Every in-flight PUBLISH keeps its message's expiry deadline, so a
retransmission carries the Message Expiry Interval left *now*, not the one of
its first send (v5 [MQTT-3.3.2-6]); see :func:`remaining_expiry`.

Inbound QoS 2 flow (client -> server): PUBLISH -> (routed once) -> PUBREC ->
PUBREL -> PUBCOMP; the packet id stays in ``awaiting_release`` until PUBREL, so
a retransmitted PUBLISH is acknowledged again but not routed twice
(v5 [MQTT-4.3.3-10], v311 [MQTT-4.3.3-2] method B). One whose PUBREC never
went out (its forward unconfirmed when the connection ended) is forwarded
again first (:meth:`Session.unconfirm`).
"""

from __future__ import annotations

import collections
import enum
import math
from typing import Any

import attrs

from mqttgate.protocol._encode import PacketTooLargeForPeer, encode
from mqttgate.protocol.packets import (
    NO_PROPERTIES,
    Connack,
    Connect,
    Properties,
    Publish,
    Pubrel,
)
from mqttgate.protocol.reasons import ProtocolVersion, ReasonCode

_NO_IDS: frozenset[int] = frozenset()

#: Session Expiry Interval meaning "never expires" (v5 section 3.1.2.11.2).
NEVER_EXPIRES = 0xFFFFFFFF


@attrs.frozen
class Limits:
    """The broker limits a session needs (made from ``Config``)."""

    max_packet_size: int = 1024 * 1024
    receive_maximum: int = 64
    max_inflight: int = 64
    max_queued_messages: int = 1000
    max_topic_length: int = 1024
    max_topic_levels: int = 32
    max_subscriptions: int = 100
    max_client_id_length: int = 128
    #: Seconds; caps v5 Session Expiry Interval and is the 3.1.1 persistent lifetime.
    max_session_expiry: int = 86400
    max_keepalive: int = 3600
    topic_alias_maximum: int = 32


@attrs.frozen
class ConnectPlan:
    """What :func:`negotiate` decided for a CONNECT."""

    #: SUCCESS, or the reason for the refusing CONNACK.
    reason: ReasonCode
    detail: str = ""
    client_id: str = ""
    #: The server assigned the client id (v5: returned as Assigned Client Identifier).
    assigned: bool = False
    #: Keep alive in force, seconds (0: none).
    keepalive: int = 0
    #: v5 Server Keep Alive to return, when it differs from what the client asked.
    server_keepalive: int | None = None
    #: Seconds the session outlives the connection (0: ends with it).
    session_expiry: int = 0
    #: Messages we may have in flight towards the client (its Receive Maximum).
    peer_receive_maximum: int = 65535
    #: Largest packet the client accepts (v5 Maximum Packet Size), None: no limit.
    peer_max_packet_size: int | None = None


def _client_id_problem(client_id: str, limits: Limits) -> str | None:
    if len(client_id.encode("utf-8")) > limits.max_client_id_length:
        return f"client identifier longer than {limits.max_client_id_length} bytes"
    for ch in client_id:
        if ch < " " or ch == "\x7f":
            return "client identifier contains a control character"
    return None


def negotiate(connect: Connect, limits: Limits, assign_id: str) -> ConnectPlan:
    """Decide a CONNECT. ``assign_id`` is used if the client sent an empty id."""
    v5 = connect.protocol_version == ProtocolVersion.V5
    if connect.protocol_version == ProtocolVersion.V31:
        # MQTT 3.1 is answered with return code 0x01 (docs/broker.md).
        return ConnectPlan(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, "MQTT 3.1 is not supported")
    client_id = connect.client_id
    assigned = False
    if not client_id:
        if not v5 and not connect.clean_start:
            # v311 [MQTT-3.1.3-8]: empty id with Clean Session 0 gets return code 2.
            return ConnectPlan(
                ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
                "empty client identifier needs clean session (v311 [MQTT-3.1.3-8])",
            )
        # v5 [MQTT-3.1.3-6], v311 [MQTT-3.1.3-6]: the server assigns a unique id.
        client_id, assigned = assign_id, True
    problem = _client_id_problem(client_id, limits)
    if problem is not None:
        return ConnectPlan(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, problem)
    props = connect.properties
    keepalive = connect.keepalive
    server_keepalive = None
    if v5 and (keepalive == 0 or keepalive > limits.max_keepalive):
        # v5 section 3.2.2.3.14: the client MUST use the Server Keep Alive.
        keepalive = server_keepalive = limits.max_keepalive
    if v5:
        expiry = props.session_expiry_interval or 0
        if expiry == NEVER_EXPIRES or expiry > limits.max_session_expiry:
            expiry = limits.max_session_expiry
    else:
        expiry = 0 if connect.clean_start else limits.max_session_expiry
    plan = ConnectPlan(
        ReasonCode.SUCCESS,
        client_id=client_id,
        assigned=assigned,
        keepalive=keepalive,
        server_keepalive=server_keepalive,
        session_expiry=expiry,
        peer_receive_maximum=(props.receive_maximum or 65535) if v5 else 65535,
        peer_max_packet_size=props.maximum_packet_size if v5 else None,
    )
    if plan.peer_max_packet_size is not None:
        connack = connack_for(
            plan, connect.protocol_version, limits, session_present=False,
            requested_expiry=props.session_expiry_interval,
        )
        try:
            encode(connack, connect.protocol_version, max_packet_size=plan.peer_max_packet_size)
        except PacketTooLargeForPeer as error:
            # v5 [MQTT-3.1.2-24]: the CONNACK may not exceed the client's
            # Maximum Packet Size, and none of its properties may be left out:
            # Assigned Client Identifier ([MQTT-3.2.2-16]), Server Keep Alive
            # ([MQTT-3.2.2-22]: else we would have to use the client's),
            # Session Expiry, Receive Maximum, Maximum Packet Size and Topic
            # Alias Maximum all change what the client may do. So refuse with
            # 0x95, whose CONNACK has no property left after the Reason String
            # is dropped ([MQTT-3.2.2-19]).
            return ConnectPlan(
                ReasonCode.PACKET_TOO_LARGE,
                f"the CONNACK ({error.size} bytes) exceeds the client's Maximum "
                f"Packet Size of {error.limit} bytes (v5 [MQTT-3.1.2-24])",
            )
    return plan


def connack_for(
    plan: ConnectPlan, version: ProtocolVersion, limits: Limits, *, session_present: bool,
    requested_expiry: int | None = None,
) -> Connack:
    """The CONNACK for a plan (success or refusal)."""
    if plan.reason != ReasonCode.SUCCESS:
        props = NO_PROPERTIES
        if version == ProtocolVersion.V5 and plan.detail:
            props = Properties(reason_string=plan.detail)
        # v5 [MQTT-3.2.2-6], v311 [MQTT-3.2.2-4]: session present is 0 on refusal.
        return Connack(plan.reason, False, props)
    if version != ProtocolVersion.V5:
        return Connack(ReasonCode.SUCCESS, session_present)
    props = Properties(
        receive_maximum=limits.receive_maximum,
        maximum_packet_size=limits.max_packet_size,
        topic_alias_maximum=limits.topic_alias_maximum,
        assigned_client_identifier=plan.client_id if plan.assigned else None,
        server_keep_alive=plan.server_keepalive,
        # v5 section 3.2.2.3.2: tell the client when we shortened its request.
        session_expiry_interval=(
            plan.session_expiry
            if requested_expiry is not None and requested_expiry != plan.session_expiry
            else None
        ),
    )
    return Connack(ReasonCode.SUCCESS, session_present, props)


class Message:
    """An application message being routed: what a client (or a will) published."""

    __slots__ = ("cache", "expires_at", "payload", "properties", "qos", "retain", "sender", "size", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties,
        sender: str | None,
        expires_at: float | None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        #: v5 properties passed through (topic alias removed), in order.
        self.properties = properties
        #: Client id of the publisher (for No Local), None for server messages.
        self.sender = sender
        #: Monotonic deadline from the Message Expiry Interval, None: no expiry.
        self.expires_at = expires_at
        #: Encoded QoS 0 PUBLISH bytes shared by subscribers with equal options.
        self.cache: dict[tuple[int, bool, tuple[int, ...]], bytes] | None = None
        #: :func:`queued_size`, measured when the message is first queued (-1: not yet).
        self.size = -1


def message_from_publish(publish: Publish, topic: str, sender: str | None, now: float) -> Message:
    """A :class:`Message` for a received PUBLISH whose topic alias is resolved."""
    props = publish.properties
    expires_at = None
    if props is not NO_PROPERTIES:
        if props.topic_alias is not None:
            # v5 section 3.3.2.3.4: the alias is per connection, never forwarded.
            props = attrs.evolve(props, topic_alias=None)
        interval = props.message_expiry_interval
        if interval:
            expires_at = now + interval
        elif interval == 0:
            # A lifetime of 0 seconds: taken as no expiry and not passed on,
            # as Mosquitto does; read literally it would reach no subscriber
            # at all (docs/broker.md "Message expiry").
            props = attrs.evolve(props, message_expiry_interval=None)
    return Message(topic, publish.payload, publish.qos, publish.retain, props, sender, expires_at)


def _properties_size(props: Properties) -> int:
    """The client-controlled variable-length part of a PUBLISH's properties.

    The fixed-size properties (a few bytes each, at most once) are left out.
    Strings count in characters, like the topic: close enough for a budget,
    and no encoding on the delivery path.
    """
    size = 0
    for text in (props.content_type, props.response_topic):
        if text is not None:
            size += len(text)
    if props.correlation_data is not None:
        size += len(props.correlation_data)
    for key, value in props.user_properties:
        size += len(key) + len(value)
    return size


def queued_size(message: Message) -> int:
    """What one queued entry of ``message`` counts against :class:`QueueBudget`.

    Payload + topic length + the variable-length properties (User Properties
    can make up most of a 1 MiB PUBLISH). Measured once per message and kept
    in ``Message.size``: a message fanned out to many queues is not measured
    again for each (the properties part is linear in the User Properties).
    A message queued by N sessions counts N times: the budget bounds the
    worst case, where every queue holds different messages.
    """
    size = message.size
    if size < 0:
        size = len(message.payload) + len(message.topic)
        if message.properties is not NO_PROPERTIES:
            size += _properties_size(message.properties)
        message.size = size
    return size


class QueueBudget:
    """Bytes (:func:`queued_size`) queued across all sessions, and their limit.

    One instance per broker (``parent`` None), shared by every :class:`Session`;
    its ``used`` is the gauge the metrics read. With per-device shares
    (:class:`DeviceQuotas`) a device's sessions use one whose ``parent`` is the
    broker's: bytes are counted in both, and an entry is refused when either
    would pass its limit. Plain ints: a few adds per enqueue and per dequeue.
    """

    __slots__ = ("limit", "parent", "used")

    def __init__(self, limit: int, parent: QueueBudget | None = None) -> None:
        self.limit = limit
        self.parent = parent
        self.used = 0

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes if this budget and its parent both have
        room for them; False, and nothing counted, if either has not."""
        parent = self.parent
        if self.used + size > self.limit or (parent is not None and parent.used + size > parent.limit):
            return False
        self.used += size
        if parent is not None:
            parent.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size
        if self.parent is not None:
            self.parent.used -= size


class _Device:
    """One device's sessions and its share of the queue budget."""

    __slots__ = ("budget", "persistent", "sessions")

    def __init__(self, budget: QueueBudget) -> None:
        self.budget = budget
        #: All its sessions, connected or not: the entry lives while any does.
        self.sessions = 0
        #: Those that outlive their connection: what ``max_sessions`` caps.
        self.persistent = 0


class DeviceQuotas:
    """Sessions held and queued bytes per device, so that one buggy or
    hostile device cannot take what all share (``max_sessions``,
    ``max_queued_bytes``).

    Pure bookkeeping the broker drives: :meth:`attach` when it creates a
    session, :meth:`make_persistent` when a resume gives a session an expiry
    it did not have, :meth:`detach` when it discards one (after
    ``Session.end``). A session stays with the device that created it
    (``Session.owner``: no other device may resume it, Broker.owned_by_other).

    The session cap counts *persistent* sessions only (Session Expiry > 0,
    3.1.1 clean session 0): those are what outlives a connection and piles
    up. Sessions that end with their connection are bounded by
    ``max_connections`` like every connection, so fleets or load tests that
    share one credential over many clean connections are not refused.
    Anonymous clients (device id None) are not tracked: they have no identity
    to tell them apart, and anonymous mode is for development and conformance
    tests, where the broker-wide limits suffice. A limit of 0 is no limit;
    sessions are counted even with both at 0 (a deleted device's sessions are
    found here).
    """

    __slots__ = ("_devices", "_owners", "_persistent", "budget", "max_bytes", "max_sessions")

    def __init__(self, budget: QueueBudget, *, max_sessions: int, max_bytes: int) -> None:
        #: The broker-wide budget: the parent of every device's share.
        self.budget = budget
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        #: Only devices holding a session: an entry goes with its last session.
        self._devices: dict[str, _Device] = {}
        #: client id -> device id of every tracked session.
        self._owners: dict[str, str] = {}
        #: The client ids of ``_owners`` counted as persistent.
        self._persistent: set[str] = set()

    def _device(self, device_id: str | None) -> _Device | None:
        return self._devices.get(device_id) if device_id is not None else None

    def sessions(self, device_id: str | None) -> int:
        """Sessions held under ``device_id`` (0 for anonymous clients)."""
        device = self._device(device_id)
        return device.sessions if device is not None else 0

    def persistent(self, device_id: str | None) -> int:
        """Persistent sessions held under ``device_id`` (what the cap counts)."""
        device = self._device(device_id)
        return device.persistent if device is not None else 0

    def is_persistent(self, client_id: str) -> bool:
        return client_id in self._persistent

    def full(self, device_id: str | None) -> bool:
        """True if ``device_id`` holds ``max_sessions`` persistent sessions:
        another one is refused."""
        return (
            device_id is not None and self.max_sessions > 0 and self.persistent(device_id) >= self.max_sessions
        )

    def client_ids(self, device_id: str | None) -> list[str]:
        """The client ids of ``device_id``'s sessions (None: of every device).
        A scan: only for the rare device deletion."""
        return [c for c, d in self._owners.items() if device_id is None or d == device_id]

    def attach(self, client_id: str, device_id: str | None, *, persistent: bool) -> QueueBudget:
        """A new session of ``device_id``: counted; returns the budget it queues against."""
        if device_id is None:
            return self.budget
        if client_id in self._owners:  # not discarded through detach: count it once
            self.detach(client_id)
        device = self._devices.get(device_id)
        if device is None:
            share = QueueBudget(self.max_bytes, self.budget) if self.max_bytes > 0 else self.budget
            device = self._devices[device_id] = _Device(share)
        device.sessions += 1
        self._owners[client_id] = device_id
        if persistent:
            device.persistent += 1
            self._persistent.add(client_id)
        return device.budget

    def make_persistent(self, client_id: str) -> None:
        """A tracked session got an expiry on resume: count it as persistent
        (once; the broker checks :meth:`full` first)."""
        device_id = self._owners.get(client_id)
        if device_id is None or client_id in self._persistent:
            return
        self._devices[device_id].persistent += 1
        self._persistent.add(client_id)

    def detach(self, client_id: str) -> None:
        """The session of ``client_id`` was discarded (its queue already given back)."""
        device_id = self._owners.pop(client_id, None)
        if device_id is None:
            return
        device = self._devices[device_id]
        device.sessions -= 1
        if client_id in self._persistent:
            self._persistent.discard(client_id)
            device.persistent -= 1
        if device.sessions <= 0:
            del self._devices[device_id]


def remaining_expiry(expires_at: float, now: float) -> int:
    """The Message Expiry Interval to send for a message in flight at ``now``.

    v5 [MQTT-3.3.2-6]: the received value minus the time the message has
    waited in the server, rounded up to whole seconds. A message whose
    deadline passed while it was in flight is still retransmitted (onward
    delivery has started, so [MQTT-3.3.2-5] does not allow deleting it, and
    [MQTT-4.4.0-1] requires the resend); it gets 1, the least lifetime the
    property can state: 0 is read as "never expires" by some implementations
    (mosquitto, for one), and leaving the property out means that too.
    """
    return max(1, math.ceil(expires_at - now))


def outgoing_properties(message: Message, sub_ids: tuple[int, ...], now: float) -> Properties | None:
    """Properties for delivering ``message``; None if it has expired.

    v5 [MQTT-3.3.2-5]: an expired message is not delivered; [MQTT-3.3.2-6]: the
    Message Expiry Interval sent is the time remaining. v5 [MQTT-3.3.4-3]: the
    Subscription Identifiers of the matching subscriptions are added.
    """
    props = message.properties
    if message.expires_at is not None:
        remaining = message.expires_at - now
        if remaining <= 0:
            return None
        props = attrs.evolve(props, message_expiry_interval=remaining_expiry(message.expires_at, now))
    if sub_ids:
        props = attrs.evolve(props, subscription_identifiers=sub_ids)
    return props


@attrs.frozen
class SubOptions:
    """One subscription of one client, as stored in the router."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    #: v5 Subscription Identifier, None when absent.
    sub_id: int | None = None


class OutState(enum.Enum):
    #: PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    SENT = 1
    #: PUBREL sent, waiting for PUBCOMP (QoS 2).
    RELEASED = 2


class Overflow(Exception):
    """The session's queue is full (the caller disconnects with 0x97 or drops)."""


class BudgetExceeded(Overflow):
    """The message would take the shared :class:`QueueBudget` past its limit.

    Handled like :class:`Overflow` (0x97 or drop) but counted apart: the
    session is not at fault, all queues together are.
    """


class Session:
    """State that outlives a connection (see the module docstring)."""

    __slots__ = (
        "awaiting_release",
        "budget",
        "client_id",
        "counter",
        "expiry",
        "held",
        "inbound_ids",
        "inflight",
        "max_queued",
        "next_packet_id",
        "owner",
        "queue",
        "subscriptions",
        "uid",
        "unconfirmed",
        "window",
    )

    def __init__(
        self,
        client_id: str,
        uid: str,
        *,
        max_queued: int,
        expiry: int = 0,
        budget: QueueBudget | None = None,
        owner: str | None = None,
    ) -> None:
        self.client_id = client_id
        #: The device that created the session (None: an anonymous client).
        #: Only that device may resume or take it over (Broker.owned_by_other).
        self.owner = owner
        #: Random per session, kept across reconnects: the de-duplication id stem.
        self.uid = uid
        self.expiry = expiry
        self.max_queued = max_queued
        #: The broker-wide byte budget of queued messages; None: not counted
        #: (no budget, or the session has ended: see :meth:`end`).
        self.budget = budget
        #: Outbound QoS 1/2 in flight: packet id -> (state, PUBLISH as first
        #: sent, the message's expiry deadline or None).
        self.inflight: dict[int, tuple[OutState, Publish, float | None]] = {}
        #: Outbound QoS 1/2 waiting for room in the window (or for a connection).
        # An empty tuple until first used: an idle session should not carry a deque.
        self.queue: Any = ()
        #: Inbound QoS 2 packet ids routed and not yet released by PUBREL.
        #: An empty frozenset until the first QoS 2 PUBLISH (an empty set is
        #: 216 bytes, and most sessions never see QoS 2): add with :meth:`await_release`.
        self.awaiting_release: set[int] | frozenset[int] = _NO_IDS
        #: The ids of ``awaiting_release`` whose PUBREC never went out: the
        #: connection ended while their forward was pending or after it
        #: failed (:meth:`unconfirm`). Empty but for that rare case.
        self.unconfirmed: set[int] | frozenset[int] = _NO_IDS
        #: Inbound packet id -> de-dup id while its flow is not complete.
        self.inbound_ids: dict[int, str] = {}
        self.counter = 0
        self.next_packet_id = 1
        #: Messages we may have in flight to the client right now.
        self.window = 0
        #: Packet ids in ``inflight`` (SENT) not yet retransmitted on this
        #: connection because the window was full (:meth:`resend`), oldest
        #: first. An empty tuple unless a resume found more than the window.
        self.held: Any = ()
        #: topic filter (as subscribed, with any $share prefix) -> options.
        self.subscriptions: dict[str, SubOptions] = {}

    # -- inbound (client -> server)

    def inbound_msg_id(self, packet_id: int) -> str:
        """The forwarder's de-dup id for an inbound QoS 1/2 packet id.

        A retransmission of a packet id whose flow has not completed gets the
        same id (stored once upstream); a packet id reused after completion
        gets a new one.
        """
        msg_id = self.inbound_ids.get(packet_id)
        if msg_id is None:
            self.counter += 1
            msg_id = self.inbound_ids[packet_id] = f"{self.uid}:{packet_id}:{self.counter}"
        return msg_id

    def await_release(self, packet_id: int) -> None:
        """An inbound QoS 2 packet id was routed: it waits for PUBREL."""
        if not self.awaiting_release:
            self.awaiting_release = set()
        self.awaiting_release.add(packet_id)  # type: ignore[union-attr]

    def released(self, packet_id: int) -> None:
        """PUBREL arrived (or the flow failed) for an inbound QoS 2 packet id."""
        if packet_id in self.awaiting_release:
            self.awaiting_release.discard(packet_id)  # type: ignore[union-attr]
        if packet_id in self.unconfirmed:
            self.unconfirmed.discard(packet_id)  # type: ignore[union-attr]

    def unconfirm(self, packet_id: int) -> None:
        """An inbound QoS 2 message was routed but its PUBREC never went out
        (its forward was pending, or failed, when the connection ended): the
        client will retransmit it, and that retransmission must be forwarded
        again (same de-dup id) rather than acknowledged as stored. It is
        still not routed again (v5 [MQTT-4.3.3-10] method B)."""
        if packet_id in self.awaiting_release:
            if not self.unconfirmed:
                self.unconfirmed = set()
            self.unconfirmed.add(packet_id)  # type: ignore[union-attr]

    def reforward(self, packet_id: int) -> bool:
        """Whether a retransmitted QoS 2 PUBLISH must be forwarded again
        (:meth:`unconfirm`); it is then no longer marked."""
        if packet_id in self.unconfirmed:
            self.unconfirmed.discard(packet_id)  # type: ignore[union-attr]
            return True
        return False

    def inbound_done(self, packet_id: int) -> None:
        """The inbound flow of ``packet_id`` completed (PUBACK or PUBCOMP sent)."""
        self.inbound_ids.pop(packet_id, None)

    # -- outbound (server -> client)

    def _allocate(self) -> int:
        pid = self.next_packet_id
        inflight = self.inflight
        # v5 [MQTT-2.2.1-4]: never reuse an id still in flight; the window is
        # at most 65535 so a free id exists.
        while pid in inflight:
            pid = pid % 65535 + 1
        self.next_packet_id = pid % 65535 + 1
        return pid

    def has_room(self) -> bool:
        """Room for a new QoS 1/2 PUBLISH: held retransmissions go first."""
        return len(self.inflight) < self.window and not self.held

    def _unhold(self, packet_id: int) -> None:
        # An acknowledgement for a held id (the client had the PUBLISH from the
        # previous connection): it is done, never retransmitted.
        held = self.held
        if packet_id in held:
            held.remove(packet_id)
            if not held:
                self.held = ()

    def start(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties,
        expires_at: float | None = None,
    ) -> Publish:
        """A QoS 1/2 PUBLISH with a fresh packet id, recorded as in flight.

        ``expires_at`` is the message's expiry deadline (``Message.expires_at``),
        kept so a retransmission states the time left then (:meth:`resend`).
        """
        pid = self._allocate()
        sent = Publish(topic, payload, qos, retain, False, pid, properties)
        self.inflight[pid] = (OutState.SENT, sent, expires_at)
        return sent

    def forget(self, packet_id: int) -> None:
        """Drop an in-flight entry that could not be sent (too large for the peer)."""
        self.inflight.pop(packet_id, None)
        if self.held:
            self._unhold(packet_id)

    def enqueue(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        """Queue a QoS 1/2 delivery.

        Raises :class:`Overflow` when this queue holds ``max_queued`` entries,
        :class:`BudgetExceeded` when the entry would take the shared budget
        past its limit; nothing is queued or counted then.
        """
        if len(self.queue) >= self.max_queued:
            raise Overflow(self.client_id)
        budget = self.budget
        if budget is not None:
            if not budget.take(queued_size(message)):
                raise BudgetExceeded(self.client_id)
        if not self.queue:
            self.queue = collections.deque()
        self.queue.append((message, qos, retain, sub_ids))

    def dequeue(self) -> tuple[Message, int, bool, tuple[int, ...]]:
        """Take the oldest queued delivery (the queue must not be empty);
        its bytes go back to the budget whatever becomes of it (sent,
        expired, too large for the peer)."""
        entry = self.queue.popleft()
        budget = self.budget
        if budget is not None:
            budget.give_back(entry[0].size)  # measured by enqueue
        return entry

    def _release_queue(self) -> None:
        budget = self.budget
        if budget is not None and self.queue:
            budget.give_back(sum(entry[0].size for entry in self.queue))
        self.queue = ()

    def end(self) -> None:
        """The session is discarded (Clean Start, expiry, closed with expiry
        0): its queue goes and its bytes return to the budget. Idempotent;
        anything still queued on it afterwards (a late delivery to a handle
        being torn down) is not counted, as nothing would give it back."""
        self._release_queue()
        self.budget = None

    def on_puback(self, packet_id: int) -> bool:
        """PUBACK from the client; False if the id was not a QoS 1 in flight."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry[0] is not OutState.SENT or entry[1].qos != 1:
            return False
        del self.inflight[packet_id]
        if self.held:
            self._unhold(packet_id)
        return True

    def on_pubrec(self, packet_id: int, reason: ReasonCode) -> Pubrel | None:
        """PUBREC from the client; the PUBREL to send, or None."""
        entry = self.inflight.get(packet_id)
        if entry is None or entry[1].qos != 2:
            # v5 [MQTT-4.3.3-4]: PUBREL with 0x92 for an unknown id.
            return Pubrel(packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)
        if self.held:
            # v5 [MQTT-4.3.3-6]: past PUBREC a PUBLISH is never sent again.
            self._unhold(packet_id)
        if reason.is_error:
            # v5 section 4.3.3: a PUBREC with an error ends the flow.
            del self.inflight[packet_id]
            return None
        # Past PUBREC only PUBREL is ever resent: the deadline no longer matters.
        self.inflight[packet_id] = (OutState.RELEASED, entry[1], None)
        return Pubrel(packet_id)

    def on_pubcomp(self, packet_id: int) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or entry[0] is not OutState.RELEASED:
            return False
        del self.inflight[packet_id]
        return True

    def resend(self, now: float) -> list[Publish | Pubrel]:
        """What to retransmit at ``now`` on a resumed session, in the original order.

        v5 [MQTT-4.4.0-1], v311 [MQTT-4.4.0-1]: unacknowledged PUBLISHes with
        DUP set and their original packet ids, and PUBRELs for QoS 2 messages
        already received. Call after setting ``window`` for the new connection.

        v5 [MQTT-3.3.4-9]: at most ``window`` (the new Receive Maximum) QoS 1/2
        PUBLISHes without PUBACK, PUBCOMP or error PUBREC. A message past
        PUBREC has had no PUBCOMP yet, so it counts too (v5 section 4.9 lets
        the quota grow back only on PUBACK, PUBCOMP or error PUBREC). Every
        PUBREL goes now (v5 [MQTT-3.3.4-10], [MQTT-4.9.0-3]: only PUBLISHes
        wait for the window), then the PUBLISHes that fit in what the PUBRELs
        left of the window. The others are held, in order, for
        :meth:`next_held` (v5 [MQTT-4.6.0-6]: nothing queued overtakes them).

        v5 [MQTT-3.3.2-6]: a retransmitted PUBLISH carries the Message Expiry
        Interval left at ``now`` (:func:`remaining_expiry`), and one whose
        expiry passed while it was in flight is retransmitted all the same.
        """
        out: list[Publish | Pubrel] = []
        inflight = self.inflight
        room = self.window - sum(1 for entry in inflight.values() if entry[0] is OutState.RELEASED)
        held: list[int] = []
        for pid, (state, publish, expires_at) in inflight.items():
            if state is OutState.RELEASED:
                out.append(Pubrel(pid))
            elif room > 0:
                room -= 1
                out.append(_duplicate(publish, expires_at, now))
            else:
                held.append(pid)
        self.held = collections.deque(held) if held else ()
        return out

    def next_held(self, now: float) -> Publish | None:
        """The next held retransmission (DUP set, expiry as at ``now``) if the window has room."""
        held = self.held
        if not held or len(self.inflight) - len(held) >= self.window:
            return None
        pid = held.popleft()
        if not held:
            self.held = ()
        _, publish, expires_at = self.inflight[pid]
        return _duplicate(publish, expires_at, now)

    def reset_connection_state(self) -> None:
        """Clean Start on an existing session: nothing of it survives."""
        self.inflight.clear()
        self.held = ()
        self._release_queue()
        self.awaiting_release = _NO_IDS
        self.unconfirmed = _NO_IDS
        self.inbound_ids.clear()
        self.subscriptions.clear()


def _duplicate(publish: Publish, expires_at: float | None, now: float) -> Publish:
    """A retransmission: DUP set (v5 [MQTT-4.4.0-1]), the expiry interval as at ``now``."""
    if expires_at is None:
        return attrs.evolve(publish, dup=True)
    props = attrs.evolve(publish.properties, message_expiry_interval=remaining_expiry(expires_at, now))
    return attrs.evolve(publish, dup=True, properties=props)


def downgrade(message_qos: int, granted: int) -> int:
    """v5 [MQTT-3.8.4-8], v311 section 3.8.4: deliver at the lower QoS."""
    return message_qos if message_qos < granted else granted
