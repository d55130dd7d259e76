"""The pure session logic: CONNECT negotiation, QoS flows, ids, expiry. No trio."""

from __future__ import annotations

import pytest

from mqttgate.protocol.packets import NO_PROPERTIES, Connect, Properties, Publish, Pubrel
from mqttgate.protocol.reasons import ProtocolVersion, ReasonCode
from mqttgate.protocol.session import (
    BudgetExceeded,
    Limits,
    Message,
    OutState,
    Overflow,
    QueueBudget,
    Session,
    connack_for,
    message_from_publish,
    negotiate,
    outgoing_properties,
    queued_size,
)

V311, V5 = ProtocolVersion.V311, ProtocolVersion.V5
LIMITS = Limits(max_keepalive=600, max_session_expiry=3600, max_client_id_length=30)


def test_v311_empty_client_id_needs_clean_session() -> None:
    # v311 [MQTT-3.1.3-8]
    plan = negotiate(Connect("", V311, clean_start=False), LIMITS, "auto-1")
    assert plan.reason == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    plan = negotiate(Connect("", V311, clean_start=True), LIMITS, "auto-1")
    assert plan.reason == ReasonCode.SUCCESS and plan.client_id == "auto-1" and plan.assigned


def test_v5_empty_client_id_is_assigned_and_returned() -> None:
    plan = negotiate(Connect("", V5, clean_start=False), LIMITS, "auto-2")
    assert plan.client_id == "auto-2" and plan.assigned
    connack = connack_for(plan, V5, LIMITS, session_present=False)
    assert connack.properties.assigned_client_identifier == "auto-2"
    assert connack.properties.receive_maximum == LIMITS.receive_maximum
    assert connack.properties.maximum_packet_size == LIMITS.max_packet_size


@pytest.mark.parametrize("client_id", ["x" * 31, "bad\x01id", "del\x7f"])
def test_client_id_rules(client_id: str) -> None:
    plan = negotiate(Connect(client_id, V5), LIMITS, "auto")
    assert plan.reason == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID


def test_mqtt31_refused() -> None:
    plan = negotiate(Connect("a", ProtocolVersion.V31, protocol_name="MQIsdp"), LIMITS, "x")
    assert plan.reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


@pytest.mark.parametrize(
    ("asked", "used", "server_keepalive"), [(60, 60, None), (0, 600, 600), (601, 600, 600)]
)
def test_v5_server_keepalive(asked: int, used: int, server_keepalive: int | None) -> None:
    plan = negotiate(Connect("a", V5, keepalive=asked), LIMITS, "x")
    assert (plan.keepalive, plan.server_keepalive) == (used, server_keepalive)
    assert connack_for(plan, V5, LIMITS, session_present=False).properties.server_keep_alive == server_keepalive


def test_v311_keepalive_is_honoured() -> None:
    assert negotiate(Connect("a", V311, keepalive=0), LIMITS, "x").keepalive == 0
    assert negotiate(Connect("a", V311, keepalive=9999), LIMITS, "x").keepalive == 9999


def test_session_expiry() -> None:
    def expiry(version: ProtocolVersion, clean: bool, interval: int | None) -> int:
        props = Properties(session_expiry_interval=interval) if interval is not None else NO_PROPERTIES
        return negotiate(Connect("a", version, clean_start=clean, properties=props), LIMITS, "x").session_expiry

    assert expiry(V311, True, None) == 0
    assert expiry(V311, False, None) == 3600
    assert expiry(V5, False, None) == 0
    assert expiry(V5, True, 100) == 100
    assert expiry(V5, True, 0xFFFFFFFF) == 3600
    plan = negotiate(Connect("a", V5, properties=Properties(session_expiry_interval=99999)), LIMITS, "x")
    connack = connack_for(plan, V5, LIMITS, session_present=False, requested_expiry=99999)
    # v5 section 3.2.2.3.2: the shortened interval is returned.
    assert connack.properties.session_expiry_interval == 3600


def test_refusal_connack_has_no_session_present() -> None:
    plan = negotiate(Connect("", V311, clean_start=False), LIMITS, "x")
    connack = connack_for(plan, V311, LIMITS, session_present=True)
    assert connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID and not connack.session_present


def _message(qos: int = 1, topic: str = "t") -> Message:
    return Message(topic, b"p", qos, False, NO_PROPERTIES, "sender", None)


def test_outbound_qos1_flow_and_window() -> None:
    session = Session("c", "uid", max_queued=2)
    session.window = 2
    first = session.start("t", b"1", 1, False, NO_PROPERTIES)
    second = session.start("t", b"2", 1, False, NO_PROPERTIES)
    assert (first.packet_id, second.packet_id) == (1, 2)
    assert not session.has_room()
    assert session.on_puback(1)
    assert not session.on_puback(1)  # already acknowledged
    assert session.has_room()
    session.enqueue(_message(), 1, False, ())
    session.enqueue(_message(), 1, False, ())
    with pytest.raises(Overflow):
        session.enqueue(_message(), 1, False, ())


def test_outbound_qos2_flow() -> None:
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    publish = session.start("t", b"x", 2, False, NO_PROPERTIES)
    pid = publish.packet_id
    assert pid is not None
    assert not session.on_puback(pid)  # a PUBACK for a QoS 2 message is not an ack
    assert session.on_pubrec(pid, ReasonCode.SUCCESS) == Pubrel(pid)
    assert session.inflight[pid][0] is OutState.RELEASED
    assert session.on_pubcomp(pid)
    assert not session.inflight
    # v5 [MQTT-4.3.3-4]: unknown id -> PUBREL 0x92
    assert session.on_pubrec(77, ReasonCode.SUCCESS) == Pubrel(77, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)


def test_pubrec_with_error_ends_flow() -> None:
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    pid = session.start("t", b"x", 2, False, NO_PROPERTIES).packet_id
    assert pid is not None
    assert session.on_pubrec(pid, ReasonCode.UNSPECIFIED_ERROR) is None
    assert not session.inflight


def test_resend_sets_dup_and_pubrel_in_order() -> None:
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    a = session.start("t", b"a", 1, False, NO_PROPERTIES)
    b = session.start("t", b"b", 2, False, NO_PROPERTIES)
    assert b.packet_id is not None
    session.on_pubrec(b.packet_id, ReasonCode.SUCCESS)
    resent = session.resend(now=0.0)
    assert resent == [Publish("t", b"a", 1, False, True, a.packet_id), Pubrel(b.packet_id)]


def test_packet_ids_skip_those_in_flight_and_wrap() -> None:
    session = Session("c", "uid", max_queued=10)
    session.window = 65535
    session.next_packet_id = 65535
    assert session.start("t", b"", 1, False, NO_PROPERTIES).packet_id == 65535
    assert session.start("t", b"", 1, False, NO_PROPERTIES).packet_id == 1
    session.next_packet_id = 1
    assert session.start("t", b"", 1, False, NO_PROPERTIES).packet_id == 2


def test_inbound_msg_ids_stable_until_done_then_new() -> None:
    session = Session("c", "uid", max_queued=10)
    first = session.inbound_msg_id(5)
    assert session.inbound_msg_id(5) == first  # retransmission: same de-dup id
    session.inbound_done(5)
    second = session.inbound_msg_id(5)
    assert second != first and second.startswith("uid:5:")


def test_unconfirmed_qos2_is_forwarded_again_once_and_forgotten_on_release() -> None:
    session = Session("c", "uid", max_queued=10)
    session.unconfirm(3)  # not awaiting release: nothing to mark
    assert not session.reforward(3)
    session.await_release(3)
    session.await_release(4)
    msg_id = session.inbound_msg_id(3)
    session.unconfirm(3)
    session.unconfirm(4)
    assert session.reforward(3) and not session.reforward(3)  # once
    assert session.inbound_msg_id(3) == msg_id  # forwarded again under the same de-dup id
    session.released(4)  # PUBREL (or an error PUBREC) ends the flow: no mark left
    assert not session.reforward(4)


def test_message_expiry_counts_down_and_alias_is_dropped() -> None:
    publish = Publish("t", b"x", 1, False, False, 1, Properties(message_expiry_interval=10, topic_alias=3))
    message = message_from_publish(publish, "t", "me", now=100.0)
    assert message.properties.topic_alias is None
    assert message.expires_at == 110.0
    props = outgoing_properties(message, (4,), now=103.5)
    assert props is not None
    assert props.message_expiry_interval == 7 and props.subscription_identifiers == (4,)
    assert outgoing_properties(message, (), now=110.0) is None


def _expiry_of(packet: Publish | Pubrel | None) -> int | None:
    assert isinstance(packet, Publish) and packet.dup
    return packet.properties.message_expiry_interval


def test_retransmission_carries_the_expiry_left_at_resend() -> None:
    # v5 [MQTT-3.3.2-6]: the interval sent is the received one minus the time
    # waited in the server, also for a DUP retransmission on a resumed session.
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    message = message_from_publish(
        Publish("t", b"x", 1, False, False, 1, Properties(message_expiry_interval=60)), "t", "p", now=100.0
    )
    props = outgoing_properties(message, (), now=100.0)
    assert props is not None and props.message_expiry_interval == 60
    session.start("t", b"x", 1, False, props, message.expires_at)
    session.start("t", b"y", 1, False, NO_PROPERTIES)  # no expiry: left alone
    first, second = session.resend(now=112.5)
    assert _expiry_of(first) == 48  # 47.5 s left, rounded up
    assert _expiry_of(second) is None
    # The stored PUBLISH is unchanged: a later resume counts from the deadline again.
    assert _expiry_of(session.resend(now=150.0)[0]) == 10


def test_expired_in_flight_message_is_still_retransmitted() -> None:
    # v5 [MQTT-3.3.2-5] lets the server delete an expired message only before
    # onward delivery started; [MQTT-4.4.0-1] requires the resend. It states 1 s.
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    session.start("t", b"x", 2, False, Properties(message_expiry_interval=5), 105.0)
    assert _expiry_of(session.resend(now=200.0)[0]) == 1


def test_held_retransmission_expiry_is_counted_when_released() -> None:
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    for pid in (1, 2):
        session.start("t", b"%d" % pid, 1, False, Properties(message_expiry_interval=60), 160.0)
    session.window = 1
    assert [_expiry_of(p) for p in session.resend(now=110.0)] == [50]
    assert session.on_puback(1)
    assert _expiry_of(session.next_held(now=130.0)) == 30


def test_pubrec_keeps_only_pubrel_for_resend() -> None:
    session = Session("c", "uid", max_queued=10)
    session.window = 10
    session.start("t", b"x", 2, False, Properties(message_expiry_interval=60), 160.0)
    assert session.on_pubrec(1, ReasonCode.SUCCESS) == Pubrel(1)
    assert session.resend(now=500.0) == [Pubrel(1)]


def test_user_properties_pass_through_in_order() -> None:
    user = (("b", "1"), ("a", "2"), ("b", "3"))
    publish = Publish("t", b"x", 0, properties=Properties(user_properties=user, content_type="c"))
    message = message_from_publish(publish, "t", "me", now=0.0)
    props = outgoing_properties(message, (), now=0.0)
    assert props is not None and props.user_properties == user and props.content_type == "c"


# ---------------------------------------------------------------- the shared queue budget


def test_queued_size_counts_payload_topic_and_variable_properties_once() -> None:
    assert queued_size(Message("a/b", b"12345", 1, False, NO_PROPERTIES, None, None)) == 8
    props = Properties(
        user_properties=(("k", "vv"), ("kk", "v")), content_type="ct", response_topic="r/t",
        correlation_data=b"1234", message_expiry_interval=60,
    )
    message = Message("t", b"xy", 1, False, props, None, None)
    assert queued_size(message) == 1 + 2 + 6 + 2 + 3 + 4
    # Measured once: a message fanned out to many queues is not measured again.
    message.payload = b""
    assert queued_size(message) == 18


def test_budget_counts_enqueue_and_gives_back_on_dequeue() -> None:
    budget = QueueBudget(30)
    one = Session("one", "u1", max_queued=10, budget=budget)
    two = Session("two", "u2", max_queued=10, budget=budget)
    message = Message("t", b"x" * 9, 1, False, NO_PROPERTIES, None, None)  # 10 bytes
    one.enqueue(message, 1, False, ())
    two.enqueue(message, 1, False, ())  # the same message counts once per queue
    one.enqueue(message, 1, False, ())
    assert budget.used == 30
    with pytest.raises(BudgetExceeded):
        two.enqueue(message, 1, False, ())
    assert budget.used == 30 and len(two.queue) == 1  # refused: nothing queued, nothing counted
    # A full session queue is the plain Overflow, not the budget's.
    small = Session("small", "u3", max_queued=1, budget=QueueBudget(1000))
    small.enqueue(message, 1, False, ())
    with pytest.raises(Overflow) as raised:
        small.enqueue(message, 1, False, ())
    assert type(raised.value) is Overflow
    assert one.dequeue() == (message, 1, False, ())
    assert budget.used == 20
    two.enqueue(message, 1, False, ())
    assert budget.used == 30


def test_budget_given_back_when_the_session_ends_or_is_reset() -> None:
    budget = QueueBudget(1000)
    ended = Session("e", "u1", max_queued=10, budget=budget)
    reset = Session("r", "u2", max_queued=10, budget=budget)
    for _ in range(3):
        ended.enqueue(_message(), 1, False, ())
        reset.enqueue(_message(), 1, False, ())
    assert budget.used == 12  # "t" + b"p"
    ended.end()
    assert budget.used == 6 and not ended.queue
    ended.end()  # idempotent
    assert budget.used == 6
    # A delivery reaching a session already ended is not counted: nothing
    # would give it back.
    ended.enqueue(_message(), 1, False, ())
    ended.dequeue()
    assert budget.used == 6
    reset.reset_connection_state()  # Clean Start on a live session
    assert budget.used == 0 and not reset.queue
    reset.enqueue(_message(), 1, False, ())
    assert budget.used == 2  # still counted after a reset


def test_session_without_budget_counts_nothing() -> None:
    session = Session("c", "uid", max_queued=2)
    session.enqueue(_message(), 1, False, ())
    assert session.dequeue()[0].topic == "t"
