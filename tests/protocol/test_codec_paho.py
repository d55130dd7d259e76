"""Cross-check against an independent encoder: paho-mqtt's.

paho builds each packet in ``Client._send_*`` and hands the bytes to
``_packet_queue``; we replace that method on one client instance to record
them (no socket, no thread). For each sample, our encoding must equal
paho's bytes, and our decoder must read paho's bytes back to the same packet,
so a mistake made symmetrically in our encoder and decoder cannot hide.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqttgate.protocol import (
    Connect,
    Decoder,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    RetainHandling,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    encode,
)

V31, V311, V5 = ProtocolVersion.V31, ProtocolVersion.V311, ProtocolVersion.V5
PAHO_PROTOCOL = {V31: paho.MQTTv31, V311: paho.MQTTv311, V5: paho.MQTTv5}


class _NoSocket:
    """Stands in for paho's socket: ``_send_publish`` only checks it exists,
    ``Client.__del__`` closes it."""

    def close(self) -> None:
        pass


class Recorder:
    """A paho client whose outgoing packets land in ``sent``."""

    def __init__(self, version: ProtocolVersion, client_id: str = "dev-1") -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PAHO_PROTOCOL[version]
        )
        self.sent: list[bytes] = []

        def record(command: int, packet: bytes, mid: int, qos: int, info: Any = None) -> int:
            self.sent.append(bytes(packet))
            return 0

        self.client._packet_queue = record  # type: ignore[method-assign,assignment]
        self.client._sock = _NoSocket()  # type: ignore[assignment]

    def last(self) -> bytes:
        assert len(self.sent) == 1
        return self.sent.pop()


def paho_properties(packet_type: int, **values: Any) -> PahoProperties:
    props = PahoProperties(packet_type)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                props.UserProperty = pair  # paho appends on each assignment
        else:
            setattr(props, name, value)
    return props


def check(ours: Packet, version: ProtocolVersion, theirs: bytes, *, server: bool = True) -> None:
    assert encode(ours, version) == theirs
    decoder = Decoder(server=server, version=None if isinstance(ours, Connect) else version)
    decoder.feed(theirs)
    assert list(decoder.packets()) == [ours]


# ---------------------------------------------------------------- PUBLISH


@pytest.mark.parametrize("version", [V311, V5])
@pytest.mark.parametrize(
    ("qos", "retain", "dup", "payload"),
    [(0, False, False, b"hello"), (1, True, False, b""), (2, False, True, bytes(range(256)) * 2)],
)
def test_publish(version: ProtocolVersion, qos: int, retain: bool, dup: bool, payload: bytes) -> None:
    rec = Recorder(version)
    mid = 0x1234 if qos else 0
    rec.client._send_publish(mid, "sensors/é/temp".encode(), payload, qos, retain, dup)
    ours = Publish("sensors/é/temp", payload, qos, retain, dup, mid if qos else None)
    check(ours, version, rec.last())


def test_publish_v5_properties() -> None:
    rec = Recorder(V5)
    props = paho_properties(
        PacketTypes.PUBLISH,
        PayloadFormatIndicator=1,
        MessageExpiryInterval=3600,
        ContentType="application/json",
        ResponseTopic="replies/dev-1",
        CorrelationData=b"\x01\x02",
        TopicAlias=3,
        UserProperty=[("site", "lyon"), ("site", "paris"), ("unit", "°C")],
    )
    rec.client._send_publish(9, b"a/b", b"{}", 1, False, False, properties=props)
    ours = Publish(
        "a/b", b"{}", qos=1, packet_id=9,
        properties=Properties(
            payload_format_indicator=1, message_expiry_interval=3600,
            content_type="application/json", response_topic="replies/dev-1",
            correlation_data=b"\x01\x02", topic_alias=3,
            user_properties=(("site", "lyon"), ("site", "paris"), ("unit", "°C")),
        ),
    )  # fmt: skip
    check(ours, V5, rec.last())


def test_publish_v5_subscription_identifiers_server_to_client() -> None:
    rec = Recorder(V5)
    props = PahoProperties(PacketTypes.PUBLISH)
    props.SubscriptionIdentifier = 1
    props.SubscriptionIdentifier = 300_000  # a three-byte varint
    rec.client._send_publish(0, b"t", b"x", 0, False, False, properties=props)
    ours = Publish("t", b"x", properties=Properties(subscription_identifiers=(1, 300_000)))
    check(ours, V5, rec.last(), server=False)


def test_publish_long_remaining_length() -> None:
    rec = Recorder(V311)
    payload = b"z" * 20_000  # three-byte remaining length
    rec.client._send_publish(0, b"big", payload, 0, False, False)
    check(Publish("big", payload), V311, rec.last())


# ---------------------------------------------------------------- CONNECT


@pytest.mark.parametrize("version", [V31, V311, V5])
def test_connect_minimal(version: ProtocolVersion) -> None:
    rec = Recorder(version, client_id="zen")
    rec.client._send_connect(60)
    ours = Connect("zen", protocol_version=version,
                   protocol_name="MQIsdp" if version == V31 else "MQTT", keepalive=60)  # fmt: skip
    check(ours, version, rec.last())


@pytest.mark.parametrize("version", [V311, V5])
def test_connect_full(version: ProtocolVersion) -> None:
    v5 = version == V5
    rec = Recorder(version, client_id="dev-42")
    will_props = paho_properties(PacketTypes.WILLMESSAGE, WillDelayInterval=10,
                                 UserProperty=[("why", "lost")]) if v5 else None  # fmt: skip
    rec.client.will_set("dev/42/status", b"offline", qos=2, retain=True, properties=will_props)
    rec.client.username_pw_set("dev-42", "s3cret")
    if v5:
        rec.client._connect_properties = paho_properties(
            PacketTypes.CONNECT, SessionExpiryInterval=3600, ReceiveMaximum=16,
            MaximumPacketSize=65536, TopicAliasMaximum=8, RequestProblemInformation=0,
            UserProperty=[("model", "x1")],
        )  # fmt: skip
    rec.client._send_connect(30)
    ours = Connect(
        "dev-42", protocol_version=version, keepalive=30, username="dev-42", password=b"s3cret",
        will=Will("dev/42/status", b"offline", qos=2, retain=True,
                  properties=Properties(will_delay_interval=10, user_properties=(("why", "lost"),))
                  if v5 else Properties()),
        properties=Properties(session_expiry_interval=3600, receive_maximum=16,
                              maximum_packet_size=65536, topic_alias_maximum=8,
                              request_problem_information=0, user_properties=(("model", "x1"),))
        if v5 else Properties(),
    )  # fmt: skip
    check(ours, version, rec.last())


# ---------------------------------------------------------------- SUBSCRIBE / UNSUBSCRIBE


def test_subscribe_v311() -> None:
    rec = Recorder(V311)
    rec.client._send_subscribe(False, [(b"a/+", 1), (b"b/#", 2), (b"c", 0)])
    ours = Subscribe(1, (Subscription("a/+", 1), Subscription("b/#", 2), Subscription("c", 0)))
    check(ours, V311, rec.last())


def test_subscribe_v5() -> None:
    rec = Recorder(V5)
    props = paho_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42,
                            UserProperty=[("k", "v")])  # fmt: skip
    rec.client._send_subscribe(False, [
        (b"a/+", SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True,
                                  retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)),
        (b"$share/grp/b/#", SubscribeOptions(qos=2, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)),
    ], properties=props)  # fmt: skip
    ours = Subscribe(1, (
        Subscription("a/+", 1, no_local=True, retain_as_published=True,
                     retain_handling=RetainHandling.DO_NOT_SEND),
        Subscription("$share/grp/b/#", 2, retain_handling=RetainHandling.SEND_IF_NEW),
    ), Properties(subscription_identifiers=(42,), user_properties=(("k", "v"),)))  # fmt: skip
    check(ours, V5, rec.last())


@pytest.mark.parametrize("version", [V311, V5])
def test_unsubscribe(version: ProtocolVersion) -> None:
    rec = Recorder(version)
    rec.client._send_unsubscribe(False, [b"a/+", b"#"])
    check(Unsubscribe(1, ("a/+", "#")), version, rec.last())


# ---------------------------------------------------------------- acks, ping, disconnect


@pytest.mark.parametrize("version", [V311, V5])
def test_acks_and_ping(version: ProtocolVersion) -> None:
    rec = Recorder(version)
    rec.client._send_puback(7)
    check(Puback(7), version, rec.last())
    rec.client._send_pubrec(8)
    check(Pubrec(8), version, rec.last())
    rec.client._send_pubrel(9)
    check(Pubrel(9), version, rec.last())
    rec.client._send_pubcomp(65535)
    check(Pubcomp(65535), version, rec.last())
    rec.client._send_pingreq()
    check(Pingreq(), version, rec.last())
    rec.client._send_disconnect()
    check(Disconnect(), version, rec.last())


def test_disconnect_v5_with_reason_and_properties() -> None:
    rec = Recorder(V5)
    reason = PahoReasonCode(PacketTypes.DISCONNECT, identifier=0x04)  # with Will Message
    props = paho_properties(PacketTypes.DISCONNECT, SessionExpiryInterval=0,
                            ReasonString="bye")  # fmt: skip
    rec.client._send_disconnect(reason, props)
    ours = Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE,
                      Properties(session_expiry_interval=0, reason_string="bye"))  # fmt: skip
    check(ours, V5, rec.last())
