"""The golden table against the codec: decode whole, byte by byte and with
trailing data; encode back to the same bytes; error cases raise the reason
code the spec names. Plus the parts the table cannot express: varints, the
maximum packet size on both sides, and the decoder's life after an error."""

from __future__ import annotations

import pytest

from mqttgate.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    Connack,
    Decoder,
    Disconnect,
    MQTTError,
    Packet,
    PacketTooLargeForPeer,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    decode_varint,
    encode,
    encode_varint,
)
from mqttgate.protocol.codec import _header_rules
from tests.golden import (
    BIG_CASES,
    CONNECT_V5_MINIMAL,
    CONNECT_V31,
    CONNECT_V311_MINIMAL,
    ERROR_CASES,
    GOOD_CASES,
    VARINT_BOUNDARIES,
    PacketCase,
)

V311, V5 = ProtocolVersion.V311, ProtocolVersion.V5


def make_decoder(case: PacketCase) -> Decoder:
    server = case.sender == "client"
    starts_with_connect = case.raw[0] >> 4 == 1
    connected = case.connected and not (server and starts_with_connect)
    return Decoder(
        server=server,
        version=case.version if connected or not server else None,
        max_packet_size=case.max_packet_size or DEFAULT_MAX_PACKET_SIZE,
    )


def follow_up(case: PacketCase) -> tuple[bytes, Packet]:
    """A packet the same sender may send next."""
    return (b"\xc0\x00", Pingreq()) if case.sender == "client" else (b"\xd0\x00", Pingresp())


def feed_in(decoder: Decoder, data: bytes, step: int) -> list[Packet]:
    out: list[Packet] = []
    for start in range(0, len(data), step):
        decoder.feed(data[start : start + step])
        out.extend(decoder.packets())
    return out


def ids(case: PacketCase) -> str:
    return case.id


def test_case_ids_are_unique() -> None:
    all_ids = [c.id for c in GOOD_CASES + ERROR_CASES + BIG_CASES]
    assert len(all_ids) == len(set(all_ids))


def test_every_packet_type_has_a_valid_case_per_version() -> None:
    kinds = {(type(c.packet).__name__, c.version) for c in GOOD_CASES}
    for name in ("Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel", "Pubcomp",
                 "Subscribe", "Suback", "Unsubscribe", "Unsuback", "Pingreq", "Pingresp",
                 "Disconnect"):  # fmt: skip
        assert (name, V311) in kinds and (name, V5) in kinds, name
    assert ("Auth", V5) in kinds


# ---------------------------------------------------------------- valid cases


@pytest.mark.parametrize("case", [c for c in GOOD_CASES if c.only != "encode"], ids=ids)
@pytest.mark.parametrize("step", [0, 1], ids=["whole", "bytewise"])
def test_decode(case: PacketCase, step: int) -> None:
    decoder = make_decoder(case)
    packets = feed_in(decoder, case.raw, step or len(case.raw))
    assert packets == [case.packet]
    assert decoder.version == case.version
    assert decoder.next_packet() is None


@pytest.mark.parametrize("case", [c for c in GOOD_CASES if c.only != "encode"], ids=ids)
def test_decode_with_trailing_data(case: PacketCase) -> None:
    decoder = make_decoder(case)
    tail, tail_packet = follow_up(case)
    decoder.feed(case.raw + tail + tail[:1])  # and half of a third packet
    assert list(decoder.packets()) == [case.packet, tail_packet]
    decoder.feed(tail[1:])
    assert decoder.next_packet() == tail_packet


@pytest.mark.parametrize("case", [c for c in GOOD_CASES if c.only != "decode"], ids=ids)
def test_encode(case: PacketCase) -> None:
    assert case.packet is not None
    assert encode(case.packet, case.version) == case.raw


@pytest.mark.parametrize("case", BIG_CASES, ids=ids)
def test_big_remaining_lengths(case: PacketCase) -> None:
    assert encode(case.packet, case.version) == case.raw  # type: ignore[arg-type]
    whole = make_decoder(case)
    whole.feed(case.raw + b"\xc0\x00")
    assert list(whole.packets()) == [case.packet, Pingreq()]
    assert feed_in(make_decoder(case), case.raw, 65_536) == [case.packet]


# ---------------------------------------------------------------- error cases


def decode_until_error(decoder: Decoder, data: bytes, step: int) -> MQTTError:
    with pytest.raises(MQTTError) as info:
        feed_in(decoder, data, step)
    return info.value


@pytest.mark.parametrize("case", ERROR_CASES, ids=ids)
@pytest.mark.parametrize("step", [0, 1], ids=["whole", "bytewise"])
def test_decode_error(case: PacketCase, step: int) -> None:
    error = decode_until_error(make_decoder(case), case.raw, step or len(case.raw))
    assert error.reason == case.error, error.message


@pytest.mark.parametrize("case", ERROR_CASES, ids=ids)
def test_decode_error_with_trailing_data(case: PacketCase) -> None:
    tail, _ = follow_up(case)
    error = decode_until_error(make_decoder(case), case.raw + tail, len(case.raw) + 2)
    assert error.reason == case.error, error.message


def test_error_messages_cite_something() -> None:
    for case in ERROR_CASES:
        with pytest.raises(MQTTError) as info:
            feed_in(make_decoder(case), case.raw, len(case.raw))
        assert info.value.message and isinstance(info.value.reason, ReasonCode)


# ---------------------------------------------------------------- varints and sizes


@pytest.mark.parametrize(("value", "raw"), VARINT_BOUNDARIES, ids=[str(v) for v, _ in VARINT_BOUNDARIES])
def test_varint_boundaries(value: int, raw: bytes) -> None:
    assert encode_varint(value) == raw
    assert decode_varint(raw, 0) == (value, len(raw))


@pytest.mark.parametrize("value", [-1, 268_435_456])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff\x01", b"\x80\x80\x80\x80\x00", b"\x80\x00", b"\x80"])
def test_varint_malformed(raw: bytes) -> None:
    with pytest.raises(MQTTError) as info:
        decode_varint(raw, 0)
    assert info.value.reason == ReasonCode.MALFORMED_PACKET


def test_largest_remaining_length_waits_for_the_body() -> None:
    decoder = Decoder(version=V311)
    decoder.feed(b"\x30\xff\xff\xff\x7f")  # remaining length 268,435,455: legal
    assert decoder.next_packet() is None
    decoder.feed(b"\x00\x01t")  # still waiting, nothing raised
    assert decoder.next_packet() is None


def test_max_packet_size_counts_the_fixed_header() -> None:
    raw = encode(Publish("t", b"x" * 10), V311)  # 2 + 13 bytes
    fits = Decoder(version=V311, max_packet_size=len(raw))
    fits.feed(raw)
    assert fits.next_packet() == Publish("t", b"x" * 10)
    too_small = Decoder(version=V311, max_packet_size=len(raw) - 1)
    too_small.feed(raw[:2])  # just the fixed header: refused before the body arrives
    with pytest.raises(MQTTError) as info:
        too_small.next_packet()
    assert info.value.reason == ReasonCode.PACKET_TOO_LARGE


def test_decoder_is_dead_after_an_error() -> None:
    decoder = Decoder(version=V311)
    decoder.feed(b"\x00\x00")
    with pytest.raises(MQTTError) as first:
        decoder.next_packet()
    decoder.feed(b"\xc0\x00")  # ignored
    with pytest.raises(MQTTError) as second:
        decoder.next_packet()
    assert second.value is first.value


def test_buffer_compaction_keeps_partial_packets() -> None:
    decoder = Decoder(version=V311)
    raw = encode(Publish("a/b", b"payload"), V311)
    decoder.feed(raw + raw[:5])
    assert decoder.next_packet() == Publish("a/b", b"payload")
    assert decoder.next_packet() is None
    decoder.feed(raw[5:])  # compacts, then completes the second packet
    assert list(decoder.packets()) == [Publish("a/b", b"payload")]


def test_connect_version_is_learnt_even_when_the_rest_is_malformed() -> None:
    decoder = Decoder()
    assert decoder.version is None
    raw = bytearray(CONNECT_V5_MINIMAL.raw)
    raw[1] += 1
    raw.append(0xAA)  # leftover byte
    decoder.feed(bytes(raw))
    with pytest.raises(MQTTError):
        decoder.next_packet()
    assert decoder.version == V5  # so the broker answers with a v5 CONNACK 0x81


@pytest.mark.parametrize("case", [CONNECT_V311_MINIMAL, CONNECT_V5_MINIMAL, CONNECT_V31], ids=ids)
def test_connect_sets_version(case: PacketCase) -> None:
    decoder = Decoder()
    decoder.feed(case.raw)
    assert decoder.next_packet() == case.packet
    assert decoder.version == case.version


def test_unsupported_version_leaves_version_unknown() -> None:
    decoder = Decoder()
    decoder.feed(b"\x10\x0f\x00\x04MQTT\x06\x02\x00\x3c\x00\x03zen")
    with pytest.raises(MQTTError) as info:
        decoder.next_packet()
    assert info.value.reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert decoder.version is None


def test_client_side_decoder_needs_a_version() -> None:
    with pytest.raises(ValueError):
        Decoder(server=False)


def test_header_rules_are_shared() -> None:
    assert _header_rules(V5, True) is _header_rules(V5, True)


# ---------------------------------------------------------------- encoding rules


def test_encode_v311_ignores_v5_only_fields() -> None:
    props = Properties(reason_string="x", user_properties=(("k", "v"),))
    assert encode(Puback(1, ReasonCode.NO_MATCHING_SUBSCRIBERS, props), V311) == b"\x40\x02\x00\x01"
    assert encode(Publish("t", b"", properties=props), V311) == b"\x30\x03\x00\x01t"
    assert encode(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN), V311) == b"\xe0\x00"
    assert encode(Unsuback(3, (ReasonCode.SUCCESS,)), V311) == b"\xb0\x02\x00\x03"
    # SUBACK failure codes collapse to 0x80 (v311 section 3.9.3)
    assert encode(Suback(3, (ReasonCode.NOT_AUTHORIZED,)), V311) == b"\x90\x03\x00\x03\x80"
    assert encode(Connack(ReasonCode.BANNED), V311) == b"\x20\x02\x00\x05"
    sub = Subscribe(1, (Subscription("a", 1, no_local=True),))
    assert encode(sub, V311) == b"\x82\x06\x00\x01\x00\x01a\x01"


@pytest.mark.parametrize(
    "packet",
    [
        Publish("t", qos=1),  # no packet id
        Publish("t", packet_id=5),  # packet id on QoS 0
        Publish("t", qos=3, packet_id=1),
        Publish("t", dup=True),
        Puback(0),
        Subscribe(1, ()),
        Puback(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),  # not a PUBACK reason
        Publish("t", properties=Properties(session_expiry_interval=1)),  # not a PUBLISH property
        Publish("x" * 70_000),
    ],
)
def test_encode_refuses_impossible_packets(packet: Packet) -> None:
    with pytest.raises(ValueError):
        encode(packet, V5)


def test_encode_v311_connack_without_return_code() -> None:
    with pytest.raises(ValueError):
        encode(Connack(ReasonCode.MALFORMED_PACKET), V311)


def test_peer_maximum_drops_reason_string_then_user_properties() -> None:
    full = Puback(1, ReasonCode.NOT_AUTHORIZED,
                  Properties(reason_string="r" * 20, user_properties=(("k", "v"),)))  # fmt: skip
    raw = encode(full, V5)
    assert encode(full, V5, max_packet_size=len(raw)) == raw
    without_reason = encode(full, V5, max_packet_size=len(raw) - 1)
    assert without_reason == encode(Puback(1, ReasonCode.NOT_AUTHORIZED,
                                           Properties(user_properties=(("k", "v"),))), V5)  # fmt: skip
    bare = encode(full, V5, max_packet_size=len(without_reason) - 1)
    assert bare == b"\x40\x03\x00\x01\x87"
    with pytest.raises(PacketTooLargeForPeer) as info:
        encode(full, V5, max_packet_size=4)
    assert info.value.limit == 4 and info.value.size == len(raw)


def test_peer_maximum_never_drops_publish_user_properties() -> None:
    publish = Publish("t", b"x", properties=Properties(user_properties=(("k", "v"),)))
    raw = encode(publish, V5)
    with pytest.raises(PacketTooLargeForPeer):
        encode(publish, V5, max_packet_size=len(raw) - 1)
    assert not isinstance(PacketTooLargeForPeer(publish, 1, 0), MQTTError)


def test_decoded_payload_is_bytes_not_a_view() -> None:
    decoder = Decoder(version=V5)
    decoder.feed(encode(Publish("t", b"abc"), V5))
    packet = decoder.next_packet()
    assert isinstance(packet, Publish) and type(packet.payload) is bytes
    decoder.feed(b"\xc0\x00")  # the buffer can still be resized: no view outlives next_packet
    assert decoder.next_packet() == Pingreq()
