"""Delivering routed messages to one session: encode now, queue, drop or disconnect.

Theory of operation
-------------------
A :class:`SessionHandle` pairs the pure :class:`~mqttgate.protocol.session.Session`
with the connection currently attached to it (or none while the client is
offline). The router calls :meth:`SessionHandle.deliver` synchronously; it
never waits:

* QoS 0: encoded (once per message and option set, shared by subscribers) and
  appended to the connection's outbox; dropped and counted when the client is
  offline or its outbox holds ``max_outbox_bytes`` unsent bytes.
* QoS 1/2: sent at once if the in-flight window (min of ``max_inflight`` and
  the client's Receive Maximum, v5 [MQTT-3.3.4-7]) has room and the outbox is
  not full; otherwise queued in the session, up to ``max_queued_messages``
  and while all sessions' queues together stay within ``max_queued_bytes``
  (``Session.enqueue``). When the queue is full, a connected client is
  disconnected with 0x97 (Quota exceeded) because it cannot keep up; for an
  offline session the new message is dropped. Both are counted; a message
  refused by the byte budget is also counted as ``queued_bytes_dropped``.

:meth:`SessionHandle.pump` moves queued messages into the window when acks
arrive or the outbox drains.

Resuming a session (:meth:`SessionHandle.resend`): the unacknowledged PUBLISHes
are retransmitted (DUP) only as far as the new connection's window allows; the
rest are held and retransmitted one per acknowledgement by ``pump``, before any
queued message (``Session.resend``). A retransmission that no longer fits the
client's Maximum Packet Size is discarded as if delivered (v5 [MQTT-3.1.2-25]).
A retransmission carries the Message Expiry Interval left at the time it is
written (v5 [MQTT-3.3.2-6]), also when it is released from hold by ``pump``.

Overload control (:class:`Overload`): a delivery that leaves a session over
half its outbox or queue makes it *congested*; publishers then stop being read
(``Connection._read_loop`` holds their next PUBLISH) until it is relieved, or
for at most ``max_publisher_pause``, after which it is marked *slow* and the
drop/0x97 rules above apply to it. So under overload publishers slow down, and
messages are dropped only for a subscriber that does not read at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from mqttgate.broker.stats import BrokerStats
from mqttgate.logs import get_logger
from mqttgate.protocol.codec import PacketTooLargeForPeer, encode
from mqttgate.protocol.packets import Publish, Pubrel
from mqttgate.protocol.reasons import ProtocolVersion, ReasonCode
from mqttgate.protocol.session import (
    BudgetExceeded,
    Message,
    Overflow,
    Session,
    outgoing_properties,
)

if TYPE_CHECKING:
    from mqttgate.broker.connection import Connection

log = get_logger("broker")

_V5 = ProtocolVersion.V5


def encode_aliased(conn: Connection, publish: Publish) -> tuple[bytes, int | None]:
    """Encode a v5 PUBLISH using the connection's outbound Topic Aliases.

    The client's Topic Alias Maximum (v5 section 3.1.2.11.5) allows that many
    aliases; the first topics sent get 1..maximum for the life of the
    connection (no replacement). A topic with an alias already sent goes out
    with an empty Topic Name (v5 section 3.3.2.3.4). Returns the bytes and the
    alias to record once they are actually written (None: nothing new), so a
    PUBLISH dropped for its size never establishes an alias.
    """
    aliases = conn.out_aliases
    assert aliases is not None
    topic = publish.topic
    alias = aliases.get(topic)
    if alias is not None:
        aliased = attrs.evolve(
            publish, topic="", properties=attrs.evolve(publish.properties, topic_alias=alias)
        )
        return encode(aliased, _V5), None
    if len(aliases) < conn.out_alias_max:
        alias = len(aliases) + 1
        aliased = attrs.evolve(publish, properties=attrs.evolve(publish.properties, topic_alias=alias))
        return encode(aliased, _V5), alias
    return encode(publish, _V5), None


class Overload:
    """The congested sessions publishers wait for (overload control).

    A session becomes *congested* when a delivery leaves its outbox at half of
    ``max_outbox_bytes`` or its queue at half of ``max_queued_messages``. Every
    delivery to a congested session is noted in ``hit``; the publishing
    connection collects them after routing its message, and holds its next
    PUBLISH (so stops reading) until those sessions are relieved, or until
    ``max_pause`` seconds after they became congested: they are then marked
    *slow* and hold nobody back (their QoS 0 messages are dropped, their QoS
    1/2 queue may overflow) until they have caught up. Publishers that do not
    feed a congested session are not held.
    """

    __slots__ = ("congested", "event", "hit", "max_pause")

    def __init__(self, max_pause: float = 2.0) -> None:
        self.congested: list[SessionHandle] = []
        #: Congested sessions the message being routed was delivered to.
        self.hit: list[SessionHandle] = []
        #: Set (and dropped) whenever a session is relieved; created by the first waiter.
        self.event: Any = None
        self.max_pause = max_pause

    def remove(self, handle: SessionHandle) -> None:
        handle.pressured = False
        congested = self.congested
        if handle in congested:
            congested.remove(handle)
        if self.event is not None:
            self.event.set()
            self.event = None


class SessionHandle:
    """A session and its current connection; the router's delivery target."""

    __slots__ = (
        "conn", "epoch", "limit", "now", "overload", "pressured", "session", "since", "slow", "stats"
    )

    def __init__(
        self,
        session: Session,
        stats: BrokerStats,
        outbox_limit: int,
        now: Any,
        overload: Overload | None = None,
    ) -> None:
        self.session = session
        #: Shared by all sessions of a broker (see :class:`Overload`).
        self.overload = overload if overload is not None else Overload()
        #: In ``overload.congested`` since ``since`` (clock seconds).
        self.pressured = False
        self.since = 0.0
        #: Congested for longer than ``overload.max_pause``: it no longer slows
        #: publishers down until it has caught up.
        self.slow = False
        self.conn: Connection | None = None
        self.stats = stats
        self.limit = outbox_limit
        #: Incremented at every (re)connect; timers carry it to detect a resumed session.
        self.epoch = 0
        #: The clock (trio.current_time), injected so this module stays testable.
        self.now = now

    def congested(self) -> bool:
        """Over half its outbox or queue: publishers should wait."""
        conn = self.conn
        return conn is not None and (
            conn.out_bytes >= self.limit // 2 or len(self.session.queue) >= self.session.max_queued // 2
        )

    def _note_pressure(self) -> None:
        if not self.pressured:
            if self.slow or not self.congested():
                return
            self.pressured = True
            self.since = self.now()
            self.overload.congested.append(self)
        self.overload.hit.append(self)

    def relieved(self) -> None:
        """Called when the outbox drained or acks arrived (cheap when not congested)."""
        if (self.pressured or self.slow) and not self.congested():
            self.slow = False
            if self.pressured:
                self.overload.remove(self)

    def detached(self) -> None:
        """The connection went away: it holds nobody back any more."""
        self.slow = False
        if self.pressured:
            self.overload.remove(self)

    def available(self) -> bool:
        conn = self.conn
        return conn is not None and conn.out_bytes < self.limit

    def deliver(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        conn = self.conn
        if qos == 0:
            if conn is None:
                return
            if conn.out_bytes >= self.limit:
                self.stats.dropped_qos0 += 1
                return
            version = conn.version
            if version != _V5:
                sub_ids = ()
            if message.expires_at is not None and message.expires_at <= self.now():
                self.stats.messages_expired += 1
                return
            new_alias = None
            data: bytes | None
            if conn.out_aliases is not None:
                # Encoded for this connection only: the alias is per connection.
                props = message.properties
                if sub_ids or message.expires_at is not None:
                    fresh = outgoing_properties(message, sub_ids, self.now())
                    if fresh is None:
                        self.stats.messages_expired += 1
                        return
                    props = fresh
                data, new_alias = encode_aliased(
                    conn, Publish(message.topic, message.payload, 0, retain, False, None, props)
                )
            else:
                key = (version, retain, sub_ids)
                cache = message.cache
                if cache is None:
                    cache = message.cache = {}
                data = cache.get(key) if message.expires_at is None else None
                if data is None:
                    props = message.properties
                    if version == _V5 and (sub_ids or message.expires_at is not None):
                        fresh = outgoing_properties(message, sub_ids, self.now())
                        if fresh is None:
                            self.stats.messages_expired += 1
                            return
                        props = fresh
                    data = encode(Publish(message.topic, message.payload, 0, retain, False, None, props), version)
                    if message.expires_at is None:
                        cache[key] = data
            peer_max = conn.peer_max_packet_size
            if peer_max is not None and len(data) > peer_max:
                # v5 [MQTT-3.1.2-25]: discard what the client cannot take.
                self.stats.too_large_dropped += 1
                return
            if new_alias is not None:
                conn.out_aliases[message.topic] = new_alias  # type: ignore[index]
            self.stats.messages_out[0] += 1
            conn.write(data)
            if conn.out_bytes >= self.limit // 2:
                self._note_pressure()
            return
        session = self.session
        if conn is not None and not session.queue and session.has_room() and conn.out_bytes < self.limit:
            self._send(conn, message, qos, retain, sub_ids)
            return
        try:
            session.enqueue(message, qos, retain, sub_ids)
            if conn is not None:
                self._note_pressure()
        except Overflow as full:
            # The shared byte budget (max_queued_bytes) takes the same path as
            # this session's own limit (max_queued_messages), counted apart.
            budget = type(full) is BudgetExceeded
            if budget:
                self.stats.queued_bytes_dropped += 1
            if conn is not None and conn.close_reason is None:
                self.stats.outbox_overflows += 1
                log.warning(
                    "outbox_overflow",
                    conn_id=conn.conn_id,
                    client_id=session.client_id,
                    device_id=session.owner,
                    queued=len(session.queue),
                    limit="max_queued_bytes" if budget else "max_queued_messages",
                )
                conn.kick(ReasonCode.QUOTA_EXCEEDED)
            elif not budget:
                self.stats.queue_dropped += 1

    def _send(self, conn: Connection, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        v5 = conn.version == _V5
        props = message.properties
        if v5 and (sub_ids or message.expires_at is not None):
            fresh = outgoing_properties(message, sub_ids, self.now())
            if fresh is None:
                self.stats.messages_expired += 1
                return
            props = fresh
        elif message.expires_at is not None and message.expires_at <= self.now():
            self.stats.messages_expired += 1
            return
        publish = self.session.start(message.topic, message.payload, qos, retain, props, message.expires_at)
        new_alias = None
        if conn.out_aliases is not None:
            # The session keeps the PUBLISH with its topic (a resend goes to a
            # new connection, whose aliases start empty); only the bytes carry the alias.
            data, new_alias = encode_aliased(conn, publish)
        else:
            data = encode(publish, conn.version)
        peer_max = conn.peer_max_packet_size
        if peer_max is not None and len(data) > peer_max:
            # v5 [MQTT-3.1.2-25]
            self.session.forget(publish.packet_id)  # type: ignore[arg-type]
            self.stats.too_large_dropped += 1
            return
        if new_alias is not None:
            conn.out_aliases[message.topic] = new_alias  # type: ignore[index]
        self.stats.messages_out[qos] += 1
        conn.write(data)

    def resend(self) -> None:
        """Retransmit on a resumed session (the connection is attached, its window set)."""
        conn = self.conn
        assert conn is not None
        for packet in self.session.resend(self.now()):
            self._retransmit(conn, packet)
        self.pump()

    def _retransmit(self, conn: Connection, packet: Publish | Pubrel) -> None:
        if type(packet) is Pubrel:
            conn.write(encode(packet, conn.version))
            return
        try:
            # No topic alias: a retransmission carries its whole topic.
            data = encode(packet, conn.version, max_packet_size=conn.peer_max_packet_size)
        except PacketTooLargeForPeer:
            # v5 [MQTT-3.1.2-25]: the new connection may have a smaller Maximum
            # Packet Size than the one the PUBLISH first went out on.
            self.session.forget(packet.packet_id)  # type: ignore[arg-type]
            self.stats.too_large_dropped += 1
            return
        conn.write(data)

    def pump(self) -> None:
        """Move queued QoS 1/2 messages into the window while there is room."""
        conn = self.conn
        session = self.session
        if session.held and conn is not None:
            # Held retransmissions first, one per free slot of the window
            # (Session.resend). Not bounded by the outbox: each replaces an
            # acknowledged PUBLISH, and the resend that held them was not either.
            now = self.now()
            while (held := session.next_held(now)) is not None:
                self._retransmit(conn, held)
        queue = session.queue
        while queue and conn is not None and session.has_room() and conn.out_bytes < self.limit:
            message, qos, retain, sub_ids = session.dequeue()
            self._send(conn, message, qos, retain, sub_ids)
        if self.pressured or self.slow:
            self.relieved()
