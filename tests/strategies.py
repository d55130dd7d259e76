"""Hypothesis strategies for MQTT packets, topic names and topic filters.

``packets(version, sender)`` draws only packets the codec can round-trip for
that version and direction: 3.1.1 packets keep the v5-only fields at their
defaults (the encoder ignores them), reason codes are ones the packet may
carry, properties are ones the packet may carry with legal values.
"""

from __future__ import annotations

from typing import Any, Literal

from hypothesis import strategies as st

from mqttgate.protocol import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttgate.protocol._validate import (
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    PUBACK_CODES,
    PUBREL_CODES,
    SUBACK_CODES,
    UNSUBACK_CODES,
)
from mqttgate.protocol.properties import PROPERTY_TABLE, WILL, WireType

Sender = Literal["client", "server"]
V31, V311, V5 = ProtocolVersion.V31, ProtocolVersion.V311, ProtocolVersion.V5

#: Any character MQTT allows in a string: no surrogates (Python cannot encode
#: them anyway) and no U+0000 (v5 [MQTT-1.5.4-2]).
_chars = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
texts = st.text(_chars, max_size=12)
_level_chars = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00/+#")
levels = st.text(_level_chars, max_size=6)

packet_ids = st.integers(1, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)


def topic_names() -> st.SearchStrategy[str]:
    """Valid, non-empty topic names (no wildcards)."""
    return st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)


def topic_filters(shared: bool = False) -> st.SearchStrategy[str]:
    """Well-formed topic filters; with ``shared``, sometimes ``$share/{g}/{f}``."""
    plain = st.lists(st.one_of(levels, st.just("+")), min_size=1, max_size=4)
    tail = st.sampled_from(["", "#"])
    filters = st.builds(
        lambda parts, end: "/".join([*parts, end] if end else parts), plain, tail
    ).filter(bool)
    if not shared:
        return filters
    groups = st.text(_level_chars, min_size=1, max_size=4)
    return st.one_of(filters, st.builds(lambda g, f: f"$share/{g}/{f}", groups, filters))


def _value(name: str, wire: WireType) -> st.SearchStrategy[Any]:
    if name in {"payload_format_indicator", "request_problem_information",
                "request_response_information", "maximum_qos", "retain_available",
                "wildcard_subscription_available", "subscription_identifier_available",
                "shared_subscription_available"}:  # fmt: skip
        return st.integers(0, 1)
    if name in {"receive_maximum", "topic_alias"}:
        return st.integers(1, 0xFFFF)
    if name == "maximum_packet_size":
        return st.integers(1, 0xFFFF_FFFF)
    if name == "response_topic":
        return topic_names()
    return {
        WireType.BYTE: st.integers(0, 255),
        WireType.TWO_BYTE: u16,
        WireType.FOUR_BYTE: u32,
        WireType.UTF8: texts,
        WireType.BINARY: st.binary(max_size=12),
    }[wire]


def properties(kind: int, *, sender: Sender = "client") -> st.SearchStrategy[Properties]:
    """Properties a ``kind`` packet (or Will) may carry, with legal values."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for spec in PROPERTY_TABLE.values():
        if kind not in spec.allowed:
            continue
        if spec.name == "user_properties":
            optional[spec.name] = st.lists(st.tuples(texts, texts), min_size=1, max_size=3).map(tuple)
        elif spec.name == "subscription_identifiers":
            if kind == PacketType.PUBLISH and sender == "client":
                continue  # v5 [MQTT-3.3.4-6]
            most = 3 if kind == PacketType.PUBLISH else 1
            optional[spec.name] = st.lists(st.integers(1, 268_435_455), min_size=1,
                                           max_size=most).map(tuple)  # fmt: skip
        elif spec.name == "session_expiry_interval" and kind == PacketType.DISCONNECT and sender == "server":
            continue  # v5 [MQTT-3.14.2-2]
        else:
            optional[spec.name] = _value(spec.name, spec.wire_type)

    def build(values: dict[str, Any]) -> Properties:
        if "authentication_data" in values and "authentication_method" not in values:
            values["authentication_method"] = "m"
        return Properties(**values)

    return st.fixed_dictionaries({}, optional=optional).map(build)


def _codes(allowed: frozenset[ReasonCode]) -> st.SearchStrategy[ReasonCode]:
    return st.sampled_from(sorted(allowed))


def _subscriptions(version: ProtocolVersion) -> st.SearchStrategy[Subscription]:
    if version != V5:
        return st.builds(Subscription, topic_filters(), st.integers(0, 2))
    return st.builds(
        lambda f, qos, nl, rap, rh: Subscription(f, qos, nl and not f.startswith("$share/"), rap, rh),
        topic_filters(shared=True),
        st.integers(0, 2),
        st.booleans(),
        st.booleans(),
        st.sampled_from(list(RetainHandling)),
    )


def connects(version: ProtocolVersion) -> st.SearchStrategy[Connect]:
    v5 = version == V5
    props = properties(PacketType.CONNECT) if v5 else st.just(Properties())
    wills = st.none() | st.builds(
        Will,
        topic_names(),
        st.binary(max_size=16),
        st.integers(0, 2),
        st.booleans(),
        properties(WILL) if v5 else st.just(Properties()),
    )

    def build(client_id: str, clean: bool, keepalive: int, username: str | None,
              password: bytes | None, will: Will | None, p: Properties) -> Connect:  # fmt: skip
        if not v5 and username is None:
            password = None  # v311 [MQTT-3.1.2-22]
        return Connect(
            client_id,
            protocol_version=version,
            protocol_name="MQIsdp" if version == V31 else "MQTT",
            clean_start=clean,
            keepalive=keepalive,
            username=username,
            password=password,
            will=will,
            properties=p,
        )

    return st.builds(build, texts, st.booleans(), u16, st.none() | texts,
                     st.none() | st.binary(max_size=8), wills, props)  # fmt: skip


def publishes(version: ProtocolVersion, sender: Sender = "client") -> st.SearchStrategy[Publish]:
    v5 = version == V5
    props = properties(PacketType.PUBLISH, sender=sender) if v5 else st.just(Properties())

    def build(topic: str, payload: bytes, qos: int, retain: bool, dup: bool, pid: int,
              p: Properties) -> Publish:  # fmt: skip
        if v5 and p.topic_alias is not None and dup and not retain:
            topic = ""  # an alias may stand in for the topic (v5 section 3.3.2.3.4)
        return Publish(topic, payload, qos, retain, dup and qos > 0, pid if qos else None, p)

    return st.builds(build, topic_names(), st.binary(max_size=64), st.integers(0, 2),
                     st.booleans(), st.booleans(), packet_ids, props)  # fmt: skip


def packets(version: ProtocolVersion, sender: Sender = "client") -> st.SearchStrategy[Packet]:
    """Packets ``sender`` may send once connected (no CONNECT)."""
    v5 = version == V5

    def props(kind: int) -> st.SearchStrategy[Properties]:
        return properties(kind, sender=sender) if v5 else st.just(Properties())

    def acks(cls: type[Puback | Pubrec | Pubrel | Pubcomp], allowed: frozenset[ReasonCode],
             kind: int) -> st.SearchStrategy[Packet]:  # fmt: skip
        if not v5:
            return st.builds(cls, packet_ids)
        return st.builds(cls, packet_ids, _codes(allowed), props(kind))

    common: list[st.SearchStrategy[Packet]] = [
        publishes(version, sender),
        acks(Puback, PUBACK_CODES, PacketType.PUBACK),
        acks(Pubrec, PUBACK_CODES, PacketType.PUBREC),
        acks(Pubrel, PUBREL_CODES, PacketType.PUBREL),
        acks(Pubcomp, PUBREL_CODES, PacketType.PUBCOMP),
    ]
    if v5:
        common.append(st.builds(Disconnect, _codes(DISCONNECT_CODES), props(PacketType.DISCONNECT)))
        common.append(st.builds(Auth, _codes(AUTH_CODES), props(PacketType.AUTH)))
    if sender == "client":
        common += [
            st.builds(Subscribe, packet_ids,
                      st.lists(_subscriptions(version), min_size=1, max_size=3).map(tuple),
                      props(PacketType.SUBSCRIBE)),
            st.builds(Unsubscribe, packet_ids,
                      st.lists(topic_filters(shared=v5), min_size=1, max_size=3).map(tuple),
                      props(PacketType.UNSUBSCRIBE)),
            st.just(Pingreq()),
        ]  # fmt: skip
        if not v5:
            common.append(st.just(Disconnect()))
    else:
        v311_connack = sorted({ReasonCode.SUCCESS, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                               ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, ReasonCode.SERVER_UNAVAILABLE,
                               ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.NOT_AUTHORIZED})  # fmt: skip
        suback_codes = SUBACK_CODES if v5 else frozenset(
            {ReasonCode.SUCCESS, ReasonCode.GRANTED_QOS_1, ReasonCode.GRANTED_QOS_2,
             ReasonCode.UNSPECIFIED_ERROR})  # fmt: skip
        common += [
            st.builds(Connack, _codes(CONNACK_CODES) if v5 else st.sampled_from(v311_connack),
                      st.booleans(), props(PacketType.CONNACK)),
            st.builds(Suback, packet_ids,
                      st.lists(_codes(suback_codes), min_size=1, max_size=4).map(tuple),
                      props(PacketType.SUBACK)),
            st.builds(Unsuback, packet_ids,
                      st.lists(_codes(UNSUBACK_CODES), min_size=1, max_size=4).map(tuple)
                      if v5 else st.just(()),
                      props(PacketType.UNSUBACK)),
            st.just(Pingresp()),
        ]  # fmt: skip
    return st.one_of(common)


versions = st.sampled_from([V311, V5])
