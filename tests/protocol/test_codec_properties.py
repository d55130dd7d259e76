"""Property tests: round-trip, split invariance, and garbage in -> packets or
MQTTError out, never any other exception (h11's fuzzing invariant)."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mqttgate.protocol import (
    Connect,
    Decoder,
    MQTTError,
    Packet,
    ProtocolVersion,
    ReasonCode,
    decode_varint,
    encode,
    encode_varint,
)
from tests.golden import CASES
from tests.strategies import Sender, connects, packets, versions

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
senders = st.sampled_from(["client", "server"])

#: What arbitrary input may raise (v5 section 2.4 readings of decode failures).
DECODE_REASONS = {
    ReasonCode.MALFORMED_PACKET,
    ReasonCode.PROTOCOL_ERROR,
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ReasonCode.TOPIC_NAME_INVALID,
    ReasonCode.PACKET_TOO_LARGE,
}


def decode_all(decoder: Decoder, data: bytes) -> list[Packet]:
    decoder.feed(data)
    return list(decoder.packets())


@SETTINGS
@given(st.data(), versions, senders)
def test_round_trip(data: st.DataObject, version: ProtocolVersion, sender: Sender) -> None:
    packet = data.draw(packets(version, sender))
    decoder = Decoder(version=version, server=sender == "client")
    assert decode_all(decoder, encode(packet, version)) == [packet]


@SETTINGS
@given(st.data(), st.sampled_from([ProtocolVersion.V31, ProtocolVersion.V311, ProtocolVersion.V5]))
def test_connect_round_trip(data: st.DataObject, version: ProtocolVersion) -> None:
    connect = data.draw(connects(version))
    decoder = Decoder()
    assert decode_all(decoder, encode(connect, version)) == [connect]
    assert decoder.version == version


@SETTINGS
@given(st.data(), versions, st.lists(st.integers(1, 64), max_size=30))
def test_split_invariance(data: st.DataObject, version: ProtocolVersion, cuts: list[int]) -> None:
    connect: Connect = data.draw(connects(version))
    rest = data.draw(st.lists(packets(version, "client"), max_size=6))
    stream = b"".join(encode(p, version) for p in [connect, *rest])
    decoder = Decoder()
    got: list[Packet] = []
    position = 0
    for cut in cuts:
        got += decode_all(decoder, stream[position : position + cut])
        position += cut
    got += decode_all(decoder, stream[position:])
    assert got == [connect, *rest]


def _decoders() -> st.SearchStrategy[Decoder]:
    return st.sampled_from(
        [
            lambda: Decoder(),
            lambda: Decoder(version=ProtocolVersion.V311),
            lambda: Decoder(version=ProtocolVersion.V5),
            lambda: Decoder(version=ProtocolVersion.V311, server=False),
            lambda: Decoder(version=ProtocolVersion.V5, server=False),
            lambda: Decoder(version=ProtocolVersion.V5, max_packet_size=64),
        ]
    ).map(lambda make: make())


def _only_packets_or_mqtt_error(decoder: Decoder, data: bytes) -> None:
    try:
        decode_all(decoder, data)
    except MQTTError as error:
        assert error.reason in DECODE_REASONS, error


@SETTINGS
@given(_decoders(), st.binary(max_size=512))
@example(Decoder(), b"\x10\x00")
@example(Decoder(version=ProtocolVersion.V5), b"\x30\x03\x00\x01")
def test_garbage_yields_packets_or_mqtt_error(decoder: Decoder, data: bytes) -> None:
    _only_packets_or_mqtt_error(decoder, data)


@SETTINGS
@given(
    st.sampled_from(CASES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_golden_bytes_yield_packets_or_mqtt_error(case: object, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(case.raw)  # type: ignore[attr-defined]
    for index, value in flips:
        raw[index % len(raw)] = value
    for decoder in (Decoder(), Decoder(version=case.version),  # type: ignore[attr-defined]
                    Decoder(version=case.version, server=False)):  # type: ignore[attr-defined]  # fmt: skip
        _only_packets_or_mqtt_error(decoder, bytes(raw))


@SETTINGS
@given(st.integers(0, 268_435_455))
def test_varint_round_trip_is_minimal(value: int) -> None:
    raw = encode_varint(value)
    assert 1 <= len(raw) <= 4
    assert raw[-1] != 0 or len(raw) == 1  # minimal: no trailing zero group
    assert decode_varint(raw + b"\xff", 0) == (value, len(raw))
