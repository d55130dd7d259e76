"""Broker counters and the per-client snapshot the API and metrics read.

Plain mutable ints so the hot path pays one attribute increment; the ops side
turns them into Prometheus metrics.
"""

from __future__ import annotations

import attrs


@attrs.define
class BrokerStats:
    connections_current: int = 0
    #: Sockets closed at accept because max_pending_connects were waiting for CONNECT.
    connections_refused: int = 0
    connects_total: int = 0
    #: Refused CONNECTs by reason name (e.g. ``NOT_AUTHORIZED``, ``SERVER_BUSY``).
    connects_denied: dict[str, int] = attrs.Factory(dict)
    #: PUBLISH packets received from clients, by QoS (index 0..2).
    messages_in: list[int] = attrs.Factory(lambda: [0, 0, 0])
    #: PUBLISH packets sent to clients, by QoS (retransmissions not counted).
    messages_out: list[int] = attrs.Factory(lambda: [0, 0, 0])
    #: QoS 0 deliveries dropped because the subscriber's outbox was full.
    dropped_qos0: int = 0
    #: Subscribers disconnected (v5 0x97) because their QoS 1/2 queue overflowed.
    outbox_overflows: int = 0
    #: QoS 1/2 messages for offline sessions dropped because the queue was full.
    queue_dropped: int = 0
    #: QoS 1/2 deliveries refused because all sessions' queues held
    #: max_queued_bytes (an online receiver is also disconnected, 0x97, and
    #: counted in outbox_overflows).
    queued_bytes_dropped: int = 0
    #: Deliveries dropped because they exceed the client's Maximum Packet Size.
    too_large_dropped: int = 0
    #: Messages dropped because their Message Expiry Interval passed.
    messages_expired: int = 0
    publish_denied: int = 0
    subscribe_denied: int = 0
    retained_count: int = 0
    #: Payload bytes of the retained messages held (bounded by max_retained_bytes).
    retained_bytes: int = 0
    #: Retained messages refused because max_retained_messages or
    #: max_retained_bytes was reached.
    retained_dropped: int = 0
    sessions_count: int = 0
    #: QoS 0 messages the forwarder refused (its queue was full).
    forward_dropped: int = 0
    #: QoS 1/2 messages whose forward failed (v5 0x80 / 3.1.1 disconnect).
    forward_failed: int = 0
    #: PUBLISHes whose topic has no NATS subject (answered 0x90 / acked and dropped).
    forward_refused: int = 0
    protocol_errors: int = 0
    keepalive_timeouts: int = 0
    takeovers: int = 0
    wills_published: int = 0


@attrs.frozen
class ClientInfo:
    """One live connection, as the API lists it."""

    client_id: str
    device_id: str | None
    mqtt_user: str | None
    peer: str
    protocol_version: int
    #: Unix time of the CONNACK.
    connected_at: float
    #: Outbound QoS 1/2 messages waiting for an acknowledgement.
    inflight: int
    subscriptions: int
