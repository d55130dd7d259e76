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
  not full; otherwise queued in the session, up to ``max_queued_messages``.
  When the queue is full, a connected client is disconnected with 0x97
  (Quota exceeded) because it cannot keep up; for an offline session the new
  message is dropped. Both are counted.

:meth:`SessionHandle.pump` moves queued messages into the window when acks
arrive or the outbox drains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqttgate.broker.stats import BrokerStats
from mqttgate.logs import get_logger
from mqttgate.protocol.codec import encode
from mqttgate.protocol.packets import Publish
from mqttgate.protocol.reasons import ProtocolVersion, ReasonCode
from mqttgate.protocol.session import Message, Overflow, Session, outgoing_properties

if TYPE_CHECKING:
    from mqttgate.broker.connection import Connection

log = get_logger("broker")

_V5 = ProtocolVersion.V5


class SessionHandle:
    """A session and its current connection; the router's delivery target."""

    __slots__ = ("conn", "drained", "epoch", "limit", "now", "pressure", "pressured", "session", "slow", "stats")

    def __init__(
        self,
        session: Session,
        stats: BrokerStats,
        outbox_limit: int,
        now: object,
        pressure: list[SessionHandle] | None = None,
    ) -> None:
        self.session = session
        #: Shared list of congested sessions that publishers wait for (overload control).
        self.pressure = pressure if pressure is not None else []
        self.pressured = False
        #: Set when a publisher waited for this session and it did not drain in time:
        #: it no longer slows publishers down until it has caught up.
        self.slow = False
        self.drained: Any = None
        self.conn: Connection | None = None
        self.stats = stats
        self.limit = outbox_limit
        #: Incremented at every (re)connect; timers carry it to detect a resumed session.
        self.epoch = 0
        #: The clock (trio.current_time), injected so this module stays testable.
        self.now = now

    def congested(self) -> bool:
        """Over half its outbox or queue: publishers should wait for it."""
        conn = self.conn
        return conn is not None and (
            conn.out_bytes >= self.limit // 2 or len(self.session.queue) >= self.session.max_queued // 2
        )

    def _note_pressure(self) -> None:
        if not self.pressured and not self.slow and self.congested():
            self.pressured = True
            self.pressure.append(self)

    def relieved(self) -> None:
        """Called when the outbox drained or acks arrived."""
        if not self.congested():
            self.slow = False
            drained = self.drained
            if drained is not None:
                self.drained = None
                drained.set()

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
            if message.expires_at is not None and message.expires_at <= self.now():  # type: ignore[operator]
                self.stats.messages_expired += 1
                return
            key = (version, retain, sub_ids)
            cache = message.cache
            if cache is None:
                cache = message.cache = {}
            data = cache.get(key) if message.expires_at is None else None
            if data is None:
                props = message.properties
                if version == _V5 and (sub_ids or message.expires_at is not None):
                    props = outgoing_properties(message, sub_ids, self.now())  # type: ignore[operator,assignment]
                    if props is None:
                        self.stats.messages_expired += 1
                        return
                data = encode(Publish(message.topic, message.payload, 0, retain, False, None, props), version)
                if message.expires_at is None:
                    cache[key] = data
            peer_max = conn.peer_max_packet_size
            if peer_max is not None and len(data) > peer_max:
                # v5 [MQTT-3.1.2-25]: discard what the client cannot take.
                self.stats.too_large_dropped += 1
                return
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
        except Overflow:
            if conn is not None and conn.close_reason is None:
                self.stats.outbox_overflows += 1
                log.warning(
                    "outbox_overflow",
                    conn_id=conn.conn_id,
                    client_id=session.client_id,
                    queued=len(session.queue),
                )
                conn.kick(ReasonCode.QUOTA_EXCEEDED)
            else:
                self.stats.queue_dropped += 1

    def _send(self, conn: Connection, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        v5 = conn.version == _V5
        props = message.properties
        if v5 and (sub_ids or message.expires_at is not None):
            props = outgoing_properties(message, sub_ids, self.now())  # type: ignore[operator,assignment]
            if props is None:
                self.stats.messages_expired += 1
                return
        elif message.expires_at is not None and message.expires_at <= self.now():  # type: ignore[operator]
            self.stats.messages_expired += 1
            return
        publish = self.session.start(message.topic, message.payload, qos, retain, props)
        data = encode(publish, conn.version)
        peer_max = conn.peer_max_packet_size
        if peer_max is not None and len(data) > peer_max:
            # v5 [MQTT-3.1.2-25]
            self.session.forget(publish.packet_id)  # type: ignore[arg-type]
            self.stats.too_large_dropped += 1
            return
        self.stats.messages_out[qos] += 1
        conn.write(data)

    def pump(self) -> None:
        """Move queued QoS 1/2 messages into the window while there is room."""
        conn = self.conn
        session = self.session
        queue = session.queue
        while queue and conn is not None and session.has_room() and conn.out_bytes < self.limit:
            message, qos, retain, sub_ids = queue.popleft()
            self._send(conn, message, qos, retain, sub_ids)
        if self.drained is not None or self.slow:
            self.relieved()
