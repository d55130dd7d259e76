"""THE packet table: hand-written bytes from the MQTT 3.1.1 and 5.0 specs.

Every field carries a comment. One table drives decoding, encoding and
validation (tests/protocol/test_codec.py) and, later, the connection tests.

A case decodes with a server-side decoder (what a client sends) unless
``sender="server"``. Properties are written in identifier order, the order
our encoder uses (the spec allows any order; decoding accepts any). A server-side decoder is created already "connected"
(``Decoder(version=...)``) unless the raw bytes start with a CONNECT or
``connected=False``. ``error`` cases may hold several packets: decoding must
raise ``MQTTError`` with that reason before the end.
"""

from __future__ import annotations

from typing import Literal

import attrs

from mqttgate.protocol import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
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

V31 = ProtocolVersion.V31
V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
R = ReasonCode
MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR


@attrs.frozen
class PacketCase:
    id: str
    version: ProtocolVersion
    raw: bytes
    packet: Packet | None = None
    error: ReasonCode | None = None
    spec: tuple[str, ...] = ()
    only: Literal["both", "decode", "encode"] = "both"
    #: Who sends ``raw``: "client" bytes go to a server-side decoder.
    sender: Literal["client", "server"] = "client"
    #: False: a server-side decoder that has not seen a CONNECT yet.
    connected: bool = True
    max_packet_size: int | None = None


CASES: list[PacketCase] = []


def case(*args: object, **kwargs: object) -> PacketCase:
    made = PacketCase(*args, **kwargs)  # type: ignore[arg-type]
    CASES.append(made)
    return made


# ============================================================== CONNECT

CONNECT_V311_MINIMAL = case(
    "connect-v311-minimal", V311,
    bytes([
        0x10, 15,               # fixed header: CONNECT, remaining length 15
        0x00, 0x04, *b"MQTT",   # protocol name
        0x04,                   # protocol level 4 (3.1.1)
        0x02,                   # connect flags: clean session
        0x00, 0x3C,             # keepalive 60 s
        0x00, 0x03, *b"zen",    # client identifier
    ]),
    Connect(client_id="zen", keepalive=60, clean_start=True),
    spec=("MQTT-3.1.2-1",),
)  # fmt: skip

case(
    "connect-v311-full", V311,
    bytes([
        0x10, 40,               # CONNECT, remaining length 40
        0x00, 0x04, *b"MQTT",   # protocol name
        0x04,                   # level 4
        0xEC,                   # flags: user name, password, will retain, will QoS 1, will; clean 0
        0x01, 0x2C,             # keepalive 300 s
        0x00, 0x02, *b"id",     # client identifier
        0x00, 0x05, *b"dev/x",  # will topic
        0x00, 0x03, *b"bye",    # will payload (binary data)
        0x00, 0x04, *b"user",   # user name
        0x00, 0x06, *b"secret", # password (binary data)
    ]),
    Connect(client_id="id", keepalive=300, clean_start=False, username="user",
            password=b"secret", will=Will("dev/x", b"bye", qos=1, retain=True)),
)  # fmt: skip

case(
    "connect-v311-empty-client-id", V311,
    bytes([
        0x10, 12,               # CONNECT, remaining length 12
        0x00, 0x04, *b"MQTT",   # protocol name
        0x04,                   # level 4
        0x02,                   # clean session
        0x00, 0x00,             # keepalive 0 (off)
        0x00, 0x00,             # empty client identifier (v311 [MQTT-3.1.3-6]: server decides)
    ]),
    Connect(client_id="", keepalive=0),
)  # fmt: skip

CONNECT_V31 = case(
    "connect-v31-mqisdp", V31,
    bytes([
        0x10, 17,                 # CONNECT, remaining length 17
        0x00, 0x06, *b"MQIsdp",   # protocol name of MQTT 3.1
        0x03,                     # protocol level 3
        0x02,                     # clean session
        0x00, 0x0A,               # keepalive 10 s
        0x00, 0x03, *b"old",      # client identifier
    ]),
    Connect(client_id="old", protocol_version=V31, protocol_name="MQIsdp", keepalive=10),
    spec=("decision: decoded, answered with CONNACK 0x01",),
)  # fmt: skip

CONNECT_V5_MINIMAL = case(
    "connect-v5-minimal", V5,
    bytes([
        0x10, 16,               # CONNECT, remaining length 16
        0x00, 0x04, *b"MQTT",   # protocol name
        0x05,                   # protocol level 5
        0x02,                   # clean start
        0x00, 0x3C,             # keepalive 60 s
        0x00,                   # property length 0
        0x00, 0x03, *b"zen",    # client identifier
    ]),
    Connect(client_id="zen", protocol_version=V5, keepalive=60),
)  # fmt: skip

case(
    "connect-v5-full", V5,
    bytes([
        0x10, 57,                 # CONNECT, remaining length 57
        0x00, 0x04, *b"MQTT",     # protocol name
        0x05,                     # level 5
        0xD6,                     # flags: user name, password, will QoS 2, will, clean start
        0x00, 0x1E,               # keepalive 30 s
        18,                       # property length 18
        0x11, 0x00, 0x00, 0x0E, 0x10,   # Session Expiry Interval 3600 s
        0x17, 0x01,                     # Request Problem Information 1
        0x21, 0x00, 0x14,               # Receive Maximum 20
        0x26, 0x00, 0x01, *b"k", 0x00, 0x02, *b"v1",  # User Property k=v1
        0x00, 0x02, *b"c5",       # client identifier
        7,                        # will property length 7
        0x01, 0x01,                     # Payload Format Indicator 1 (UTF-8)
        0x18, 0x00, 0x00, 0x00, 0x05,   # Will Delay Interval 5 s
        0x00, 0x03, *b"w/t",      # will topic
        0x00, 0x02, *b"ok",       # will payload
        0x00, 0x01, *b"u",        # user name
        0x00, 0x02, 0x00, 0xFF,   # password: binary, may hold any byte
    ]),
    Connect(
        client_id="c5", protocol_version=V5, keepalive=30, username="u", password=b"\x00\xff",
        properties=Properties(session_expiry_interval=3600, receive_maximum=20,
                              user_properties=(("k", "v1"),), request_problem_information=1),
        will=Will("w/t", b"ok", qos=2,
                  properties=Properties(will_delay_interval=5, payload_format_indicator=1)),
    ),
)  # fmt: skip

case(
    "connect-v5-password-without-username", V5,
    bytes([
        0x10, 18,               # CONNECT, remaining length 18
        0x00, 0x04, *b"MQTT",   # protocol name
        0x05,                   # level 5
        0x42,                   # flags: password, clean start (allowed in v5, section 3.1.2.9)
        0x00, 0x00,             # keepalive 0
        0x00,                   # property length 0
        0x00, 0x01, *b"p",      # client identifier
        0x00, 0x02, *b"pw",     # password
    ]),
    Connect(client_id="p", protocol_version=V5, password=b"pw"),
)  # fmt: skip

case(
    "connect-v5-auth-method", V5,
    bytes([
        0x10, 28,               # CONNECT, remaining length 28
        0x00, 0x04, *b"MQTT",   # protocol name
        0x05,                   # level 5
        0x02,                   # clean start
        0x00, 0x00,             # keepalive 0
        14,                     # property length 14
        0x15, 0x00, 0x05, *b"SCRAM",    # Authentication Method
        0x16, 0x00, 0x03, 1, 2, 3,      # Authentication Data
        0x00, 0x01, *b"a",      # client identifier
    ]),
    Connect(client_id="a", protocol_version=V5,
            properties=Properties(authentication_method="SCRAM", authentication_data=b"\x01\x02\x03")),
)  # fmt: skip

# -- CONNECT errors

_CONNECT_HEAD_V311 = bytes([0x00, 0x04, *b"MQTT", 0x04])  # protocol name + level 4
_CONNECT_HEAD_V5 = bytes([0x00, 0x04, *b"MQTT", 0x05])  # protocol name + level 5

case(
    "connect-unknown-protocol-name", V311,
    bytes([
        0x10, 15,               # CONNECT, remaining length 15
        0x00, 0x04, *b"MQTX",   # not a protocol name we know
        0x04, 0x02, 0x00, 0x3C, # level, flags, keepalive
        0x00, 0x03, *b"zen",    # client identifier
    ]),
    error=MALFORMED, spec=("MQTT-3.1.2-1",),
)  # fmt: skip

case(
    "connect-unsupported-level", V311,
    bytes([
        0x10, 15,               # CONNECT, remaining length 15
        0x00, 0x04, *b"MQTT",   # protocol name
        0x06,                   # protocol level 6: unknown
        0x02, 0x00, 0x3C,       # flags, keepalive
        0x00, 0x03, *b"zen",    # client identifier
    ]),
    error=R.UNSUPPORTED_PROTOCOL_VERSION, spec=("MQTT-3.1.2-2",),
)  # fmt: skip

case(
    "connect-mqtt-name-level-3", V311,
    bytes([
        0x10, 15,               # CONNECT, remaining length 15
        0x00, 0x04, *b"MQTT",   # protocol name MQTT ...
        0x03,                   # ... with the 3.1 level: not a version we speak
        0x02, 0x00, 0x3C,       # flags, keepalive
        0x00, 0x03, *b"zen",    # client identifier
    ]),
    error=R.UNSUPPORTED_PROTOCOL_VERSION, spec=("MQTT-3.1.2-2",),
)  # fmt: skip

def _pk(b0: int, *fields: int) -> bytes:
    """A fixed header byte, the remaining length (the byte count of ``fields``,
    below 128) and the fields. Used for error variants, whose point is not the
    length; the valid cases above spell their remaining length out."""
    return bytes([b0, len(fields), *fields])


for _version, _head in ((V311, _CONNECT_HEAD_V311), (V5, _CONNECT_HEAD_V5)):
    _props = b"\x00" if _version == V5 else b""  # v5: property length 0
    _wprops = _props                              # v5: will property length 0
    _tag = "v5" if _version == V5 else "v311"
    case(
        f"connect-{_tag}-reserved-flag", _version,
        _pk(0x10, *_head,
            0x03,                       # flags: clean start + reserved bit 0 set
            0x00, 0x00, *_props,        # keepalive
            0x00, 0x00),                # empty client identifier
        error=MALFORMED, spec=("MQTT-3.1.2-3",),
    )  # fmt: skip
    case(
        f"connect-{_tag}-will-qos-3", _version,
        _pk(0x10, *_head,
            0x1E,                       # flags: will QoS 3, will flag, clean start
            0x00, 0x00, *_props,        # keepalive
            0x00, 0x00,                 # empty client identifier
            *_wprops,
            0x00, 0x01, *b"t",          # will topic
            0x00, 0x00),                # will payload
        error=MALFORMED, spec=("MQTT-3.1.2-12", "v311 MQTT-3.1.2-14"),
    )  # fmt: skip
    case(
        f"connect-{_tag}-will-qos-without-will-flag", _version,
        _pk(0x10, *_head,
            0x0A,                       # flags: will QoS 1 but no will flag, clean start
            0x00, 0x00, *_props,        # keepalive
            0x00, 0x00),                # empty client identifier
        error=MALFORMED, spec=("MQTT-3.1.2-11", "v311 MQTT-3.1.2-13"),
    )  # fmt: skip
    case(
        f"connect-{_tag}-will-retain-without-will-flag", _version,
        _pk(0x10, *_head,
            0x22,                       # flags: will retain but no will flag, clean start
            0x00, 0x00, *_props,        # keepalive
            0x00, 0x00),                # empty client identifier
        error=MALFORMED, spec=("MQTT-3.1.2-13", "v311 MQTT-3.1.2-15"),
    )  # fmt: skip
    case(
        f"connect-{_tag}-leftover-bytes", _version,
        _pk(0x10, *_head,
            0x02, 0x00, 0x00, *_props,  # flags, keepalive
            0x00, 0x00,                 # empty client identifier
            0xAA),                      # one byte no field accounts for
        error=MALFORMED,
    )  # fmt: skip
    case(
        f"connect-{_tag}-surrogate-in-client-id", _version,
        _pk(0x10, *_head,
            0x02, 0x00, 0x00, *_props,  # flags, keepalive
            0x00, 0x03, 0xED, 0xA0, 0x80),  # client id: UTF-8 form of surrogate U+D800
        error=MALFORMED, spec=("MQTT-1.5.4-1", "v311 MQTT-1.5.3-1"),
    )  # fmt: skip
    case(
        f"connect-{_tag}-nul-in-client-id", _version,
        _pk(0x10, *_head,
            0x02, 0x00, 0x00, *_props,  # flags, keepalive
            0x00, 0x02, *b"a", 0x00),   # client id "a\0"
        error=MALFORMED, spec=("MQTT-1.5.4-2", "v311 MQTT-1.5.3-2"),
    )  # fmt: skip
    case(
        f"connect-{_tag}-bad-utf8-client-id", _version,
        _pk(0x10, *_head,
            0x02, 0x00, 0x00, *_props,  # flags, keepalive
            0x00, 0x02, 0xC0, 0xAF),    # overlong encoding of '/'
        error=MALFORMED, spec=("MQTT-1.5.4-1",),
    )  # fmt: skip
    case(
        f"connect-{_tag}-will-topic-wildcard", _version,
        _pk(0x10, *_head,
            0x06,                       # flags: will, clean start
            0x00, 0x00, *_props,        # keepalive
            0x00, 0x00,                 # empty client identifier
            *_wprops,
            0x00, 0x03, *b"a/#",        # will topic with a wildcard
            0x00, 0x00),                # will payload
        error=R.TOPIC_NAME_INVALID, spec=("MQTT-3.3.2-2",),
    )  # fmt: skip
    case(
        f"connect-{_tag}-bad-fixed-header-flags", _version,
        _pk(0x11,                       # CONNECT with flags 0b0001: reserved
            *_head, 0x02, 0x00, 0x00, *_props, 0x00, 0x00),
        error=MALFORMED, spec=("MQTT-2.1.3-1", "v311 MQTT-2.2.2-2"),
    )  # fmt: skip
    case(
        f"connect-{_tag}-second-connect", _version,
        2 * _pk(0x10, *_head, 0x02, 0x00, 0x00, *_props, 0x00, 0x00),  # CONNECT twice
        error=PROTOCOL, spec=("MQTT-3.1.0-2",),
    )  # fmt: skip
    case(
        f"connect-{_tag}-truncated-client-id", _version,
        _pk(0x10, *_head,
            0x02, 0x00, 0x00, *_props,  # flags, keepalive
            0x00, 0x05, *b"a"),         # client id says 5 bytes, packet has 1
        error=MALFORMED,
    )  # fmt: skip

case(
    "connect-v311-password-without-username", V311,
    bytes([
        0x10, 16,               # CONNECT, remaining length 16
        *_CONNECT_HEAD_V311,    # protocol name, level 4
        0x42,                   # flags: password without user name
        0x00, 0x00,             # keepalive
        0x00, 0x00,             # empty client identifier
        0x00, 0x02, *b"pw",     # password
    ]),
    error=MALFORMED, spec=("v311 MQTT-3.1.2-22",),
)  # fmt: skip


def _connect_v5_props(tag: str, props: bytes, error: ReasonCode, spec: tuple[str, ...] = ()) -> None:
    """A v5 CONNECT whose only oddity is its property block."""
    case(
        f"connect-v5-{tag}", V5,
        _pk(0x10, *_CONNECT_HEAD_V5,    # protocol name, level 5
            0x02, 0x00, 0x00,           # flags: clean start; keepalive 0
            len(props), *props,         # property length and properties
            0x00, 0x00),                # empty client identifier
        error=error, spec=spec,
    )  # fmt: skip


_connect_v5_props("duplicate-property", bytes([0x21, 0x00, 0x0A, 0x21, 0x00, 0x0B]),  # Receive Maximum twice
                  PROTOCOL, ("2.2.2.2",))  # fmt: skip
_connect_v5_props("receive-maximum-0", bytes([0x21, 0x00, 0x00]), PROTOCOL, ("3.1.2.11.3",))
_connect_v5_props("maximum-packet-size-0", bytes([0x27, 0, 0, 0, 0]), PROTOCOL, ("3.1.2.11.4",))
_connect_v5_props("request-problem-information-2", bytes([0x17, 0x02]), PROTOCOL, ("3.1.2.11.7",))
_connect_v5_props("topic-alias-in-connect", bytes([0x23, 0x00, 0x01]), MALFORMED, ("2.2.2.2",))
_connect_v5_props("unknown-property", bytes([0x7F, 0x00]), MALFORMED, ("2.2.2.2",))
_connect_v5_props("auth-data-without-method", bytes([0x16, 0x00, 0x01, 0x09]), PROTOCOL,
                  ("3.1.2.11.10",))  # fmt: skip
_connect_v5_props("property-overruns-length", bytes([0x11, 0x00, 0x00]), MALFORMED)  # 4-byte int cut short

case(
    "publish-before-connect", V311,
    bytes([0x30, 0x03, 0x00, 0x01, *b"t"]),  # PUBLISH QoS 0 to "t", no CONNECT yet
    error=PROTOCOL, spec=("MQTT-3.1.0-1",), connected=False,
)  # fmt: skip

case(
    "connect-from-server", V311,
    bytes(CONNECT_V311_MINIMAL.raw),  # a CONNECT arriving at a client
    error=PROTOCOL, sender="server",
)

# ============================================================== CONNACK

for _version, _tag in ((V311, "v311"), (V31, "v31")):
    case(
        f"connack-{_tag}-accepted", _version,
        bytes([0x20, 0x02,      # CONNACK, remaining length 2
               0x00,            # acknowledge flags: no session present
               0x00]),          # return code 0: accepted
        Connack(), sender="server",
    )  # fmt: skip
case(
    "connack-v311-session-present", V311,
    bytes([0x20, 0x02,          # CONNACK, remaining length 2
           0x01,                # session present
           0x00]),              # accepted
    Connack(session_present=True), sender="server",
)  # fmt: skip
case(
    "connack-v311-unacceptable-protocol", V311,
    bytes([0x20, 0x02,          # CONNACK, remaining length 2
           0x00,                # no session
           0x01]),              # return code 1: unacceptable protocol version
    Connack(R.UNSUPPORTED_PROTOCOL_VERSION), sender="server",
)  # fmt: skip
case(
    "connack-v311-not-authorized", V311,
    bytes([0x20, 0x02, 0x00,
           0x05]),              # return code 5: not authorized
    Connack(R.NOT_AUTHORIZED), sender="server",
)  # fmt: skip
case(
    "connack-v5-success", V5,
    bytes([0x20, 0x03,          # CONNACK, remaining length 3
           0x00,                # no session present
           0x00,                # reason code Success
           0x00]),              # property length 0
    Connack(), sender="server",
)  # fmt: skip
case(
    "connack-v5-properties", V5,
    bytes([0x20, 21,            # CONNACK, remaining length 21
           0x01,                # session present
           0x00,                # Success
           18,                  # property length 18
           0x12, 0x00, 0x02, *b"id",    # Assigned Client Identifier "id"
           0x21, 0x00, 0x40,            # Receive Maximum 64
           0x22, 0x00, 0x0A,            # Topic Alias Maximum 10
           0x24, 0x01,                  # Maximum QoS 1
           0x27, 0x00, 0x04, 0x00, 0x00]),  # Maximum Packet Size 262144
    Connack(session_present=True, properties=Properties(
        receive_maximum=64, maximum_qos=1, maximum_packet_size=262144,
        assigned_client_identifier="id", topic_alias_maximum=10)),
    sender="server",
)  # fmt: skip
case(
    "connack-v5-refused", V5,
    bytes([0x20, 10,            # CONNACK, remaining length 10
           0x00,                # no session
           0x87,                # Not authorized
           7,                   # property length 7
           0x1F, 0x00, 0x04, *b"nope"]),  # Reason String
    Connack(R.NOT_AUTHORIZED, properties=Properties(reason_string="nope")), sender="server",
)  # fmt: skip
case(
    "connack-from-client", V311,
    bytes([0x20, 0x02, 0x00, 0x00]),  # a CONNACK sent by a client
    error=PROTOCOL,
)
case(
    "connack-reserved-ack-flags", V311,
    bytes([0x20, 0x02,
           0x02,                # acknowledge flags bit 1: reserved
           0x00]),
    error=MALFORMED, sender="server", spec=("MQTT-3.2.2-1",),
)  # fmt: skip
case(
    "connack-v311-reserved-return-code", V311,
    bytes([0x20, 0x02, 0x00,
           0x06]),              # return code 6: reserved
    error=MALFORMED, sender="server", spec=("v311 3.2.2.3",),
)  # fmt: skip
case(
    "connack-v5-reason-not-for-connack", V5,
    bytes([0x20, 0x03, 0x00,
           0x10,                # No matching subscribers: a PUBACK reason, not CONNACK
           0x00]),
    error=PROTOCOL, sender="server", spec=("MQTT-3.2.2-8",),
)  # fmt: skip
case(
    "connack-v5-maximum-qos-2", V5,
    bytes([0x20, 0x05, 0x00, 0x00,
           0x02, 0x24, 0x02]),  # property length 2: Maximum QoS 2 (only 0/1 allowed)
    error=PROTOCOL, sender="server", spec=("3.2.2.3.4",),
)  # fmt: skip
case(
    "connack-v5-missing-property-length", V5,
    bytes([0x20, 0x02, 0x00, 0x00]),  # a 3.1.1-shaped CONNACK on a v5 connection
    error=MALFORMED, sender="server",
)

# ============================================================== PUBLISH

for _version, _tag in ((V311, "v311"), (V5, "v5")):
    _p = b"\x00" if _version == V5 else b""  # v5: property length 0
    case(
        f"publish-{_tag}-qos0", _version,
        bytes([0x30, 8 + len(_p),      # PUBLISH QoS 0, remaining length
               0x00, 0x03, *b"a/b",     # topic name
               *_p,
               *b"hey"]),               # payload
        Publish("a/b", b"hey"),
    )  # fmt: skip
    case(
        f"publish-{_tag}-qos1-retain", _version,
        bytes([0x33, 9 + len(_p),       # PUBLISH, flags: QoS 1, retain
               0x00, 0x03, *b"a/b",     # topic name
               0x12, 0x34,              # packet identifier 0x1234
               *_p,
               *b"\x00\xff"]),          # payload, binary
        Publish("a/b", b"\x00\xff", qos=1, retain=True, packet_id=0x1234),
    )  # fmt: skip
    case(
        f"publish-{_tag}-qos2-dup-empty-payload", _version,
        bytes([0x3C, 5 + len(_p),       # PUBLISH, flags: DUP, QoS 2
               0x00, 0x01, *b"t",       # topic name
               0x00, 0x07,              # packet identifier 7
               *_p]),                   # no payload: allowed
        Publish("t", b"", qos=2, dup=True, packet_id=7),
    )  # fmt: skip
    case(
        f"publish-{_tag}-utf8-topic", _version,
        bytes([0x30, 6 + len(_p),
               0x00, 0x04, 0xC3, 0xA9, *b"/$",   # topic "é/$"
               *_p]),
        Publish("é/$"),
    )  # fmt: skip
    case(
        f"publish-{_tag}-from-server", _version,
        bytes([0x30, 4 + len(_p), 0x00, 0x01, *b"t", *_p, *b"x"]),  # server -> client PUBLISH
        Publish("t", b"x"), sender="server",
    )  # fmt: skip
    case(
        f"publish-{_tag}-qos3", _version,
        bytes([0x36, 5 + len(_p),       # PUBLISH, flags: QoS 3
               0x00, 0x01, *b"t", 0x00, 0x01, *_p]),
        error=MALFORMED, spec=("MQTT-3.3.1-4",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-dup-qos0", _version,
        bytes([0x38, 3 + len(_p),       # PUBLISH, flags: DUP with QoS 0
               0x00, 0x01, *b"t", *_p]),
        error=MALFORMED, spec=("MQTT-3.3.1-2",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-plus-in-topic", _version,
        bytes([0x30, 5 + len(_p), 0x00, 0x03, *b"a/+", *_p]),  # topic "a/+"
        error=R.TOPIC_NAME_INVALID, spec=("MQTT-3.3.2-2",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-hash-in-topic", _version,
        bytes([0x30, 3 + len(_p), 0x00, 0x01, *b"#", *_p]),  # topic "#"
        error=R.TOPIC_NAME_INVALID, spec=("MQTT-3.3.2-2",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-empty-topic", _version,
        bytes([0x30, 2 + len(_p), 0x00, 0x00, *_p]),  # empty topic, no Topic Alias
        error=PROTOCOL, spec=("MQTT-4.7.3-1", "MQTT-3.3.2-1"),
    )  # fmt: skip
    case(
        f"publish-{_tag}-packet-id-0", _version,
        bytes([0x32, 5 + len(_p), 0x00, 0x01, *b"t",
               0x00, 0x00,              # QoS 1 with packet identifier 0
               *_p]),
        error=PROTOCOL, spec=("MQTT-2.2.1-3",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-topic-past-end", _version,
        bytes([0x30, 0x03, 0x00, 0x05, *b"t"]),  # topic length 5, one byte left
        error=MALFORMED,
    )  # fmt: skip
    case(
        f"publish-{_tag}-nul-in-topic", _version,
        bytes([0x30, 4 + len(_p), 0x00, 0x02, *b"a", 0x00, *_p]),  # topic "a\0"
        error=MALFORMED, spec=("MQTT-1.5.4-2",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-surrogate-in-topic", _version,
        bytes([0x30, 5 + len(_p), 0x00, 0x03, 0xED, 0xB0, 0x80, *_p]),  # U+DC00 encoded
        error=MALFORMED, spec=("MQTT-1.5.4-1",),
    )  # fmt: skip
    case(
        f"publish-{_tag}-truncated-packet-id", _version,
        bytes([0x32, 0x04, 0x00, 0x01, *b"t", 0x00]),  # QoS 1, packet id cut after 1 byte
        error=MALFORMED,
    )  # fmt: skip

case(
    "publish-v5-properties", V5,
    bytes([
        0x30, 58,                     # PUBLISH QoS 0, remaining length 58
        0x00, 0x03, *b"a/b",          # topic name
        50,                           # property length 50
        0x01, 0x01,                   # Payload Format Indicator 1
        0x02, 0x00, 0x00, 0x00, 0x3C, # Message Expiry Interval 60 s
        0x03, 0x00, 0x04, *b"text",   # Content Type "text"
        0x08, 0x00, 0x05, *b"reply",  # Response Topic "reply"
        0x09, 0x00, 0x02, 0xAB, 0xCD, # Correlation Data
        0x23, 0x00, 0x05,             # Topic Alias 5
        0x26, 0x00, 0x01, *b"a", 0x00, 0x01, *b"1",   # User Property a=1
        0x26, 0x00, 0x01, *b"a", 0x00, 0x01, *b"2",   # User Property a=2 (repeats, order kept)
        0x26, 0x00, 0x01, *b"b", 0x00, 0x00,          # User Property b=""
        *b"hi",                       # payload
    ]),
    Publish("a/b", b"hi", properties=Properties(
        payload_format_indicator=1, message_expiry_interval=60, content_type="text",
        response_topic="reply", correlation_data=b"\xab\xcd", topic_alias=5,
        user_properties=(("a", "1"), ("a", "2"), ("b", "")))),
)  # fmt: skip
case(
    "publish-v5-empty-topic-with-alias", V5,
    bytes([0x30, 0x07,
           0x00, 0x00,                # empty topic name: the Topic Alias stands in
           0x03, 0x23, 0x00, 0x01,    # property length 3: Topic Alias 1
           *b"x"]),                   # payload
    Publish("", b"x", properties=Properties(topic_alias=1)), spec=("3.3.2.3.4",),
)  # fmt: skip
case(
    "publish-v5-subscription-ids-from-server", V5,
    bytes([0x30, 0x0A,
           0x00, 0x01, *b"t",         # topic name
           0x05,                      # property length 5
           0x0B, 0x01,                # Subscription Identifier 1
           0x0B, 0x80, 0x01,          # Subscription Identifier 128 (two-byte varint)
           *b"p"]),                   # payload
    Publish("t", b"p", properties=Properties(subscription_identifiers=(1, 128))),
    sender="server", spec=("3.3.2.3.8",),
)  # fmt: skip
case(
    "publish-v5-subscription-id-from-client", V5,
    bytes([0x30, 0x06, 0x00, 0x01, *b"t",
           0x02, 0x0B, 0x01]),        # Subscription Identifier 1: servers only
    error=PROTOCOL, spec=("MQTT-3.3.4-6",),
)  # fmt: skip
case(
    "publish-v5-topic-alias-0", V5,
    bytes([0x30, 0x07, 0x00, 0x01, *b"t",
           0x03, 0x23, 0x00, 0x00]),  # Topic Alias 0
    error=PROTOCOL, spec=("MQTT-3.3.2-8",),
)  # fmt: skip
case(
    "publish-v5-duplicate-topic-alias", V5,
    bytes([0x30, 0x0A, 0x00, 0x01, *b"t",
           0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02]),  # Topic Alias twice
    error=PROTOCOL, spec=("2.2.2.2",),
)  # fmt: skip
case(
    "publish-v5-payload-format-2", V5,
    bytes([0x30, 0x06, 0x00, 0x01, *b"t",
           0x02, 0x01, 0x02]),        # Payload Format Indicator 2
    error=PROTOCOL, spec=("3.3.2.3.2",),
)  # fmt: skip
case(
    "publish-v5-session-expiry-not-allowed", V5,
    bytes([0x30, 0x09, 0x00, 0x01, *b"t",
           0x05, 0x11, 0, 0, 0, 1]),  # Session Expiry Interval: not a PUBLISH property
    error=MALFORMED, spec=("2.2.2.2",),
)  # fmt: skip
case(
    "publish-v5-property-length-past-end", V5,
    bytes([0x30, 0x04, 0x00, 0x01, *b"t",
           0x09]),                    # property length 9, nothing follows
    error=MALFORMED,
)  # fmt: skip
case(
    "publish-v5-missing-property-length", V5,
    bytes([0x30, 0x03, 0x00, 0x01, *b"t"]),  # v5 PUBLISH must carry a property length
    error=MALFORMED,
)  # fmt: skip
case(
    "publish-v5-property-varint-5-bytes", V5,
    bytes([0x30, 0x08, 0x00, 0x01, *b"t",
           0x80, 0x80, 0x80, 0x80, 0x01]),  # property length: a 5-byte varint
    error=MALFORMED, spec=("1.5.5",),
)  # fmt: skip

# ============================================================== PUBACK, PUBREC, PUBREL, PUBCOMP

_ACKS = ((0x40, Puback, "puback"), (0x50, Pubrec, "pubrec"), (0x62, Pubrel, "pubrel"),
         (0x70, Pubcomp, "pubcomp"))  # fmt: skip
for _b0, _cls, _name in _ACKS:
    for _version, _tag in ((V311, "v311"), (V5, "v5")):
        case(
            f"{_name}-{_tag}", _version,
            bytes([_b0, 0x02,           # fixed header, remaining length 2
                   0x00, 0x2A]),        # packet identifier 42 (v5: short form, Success)
            _cls(42),
        )  # fmt: skip
        case(
            f"{_name}-{_tag}-from-server", _version,
            bytes([_b0, 0x02, 0xFF, 0xFF]),  # packet identifier 65535, server -> client
            _cls(65535), sender="server",
        )  # fmt: skip
        case(
            f"{_name}-{_tag}-packet-id-0", _version,
            bytes([_b0, 0x02, 0x00, 0x00]),  # packet identifier 0
            error=PROTOCOL, spec=("MQTT-2.2.1-3",),
        )  # fmt: skip
        case(
            f"{_name}-{_tag}-bad-flags", _version,
            bytes([_b0 ^ 0x02, 0x02, 0x00, 0x01]),  # reserved flags flipped
            error=MALFORMED, spec=("MQTT-2.1.3-1", "v311 MQTT-2.2.2-2"),
        )  # fmt: skip
        case(
            f"{_name}-{_tag}-truncated", _version,
            bytes([_b0, 0x01, 0x00]),       # remaining length 1: half a packet identifier
            error=MALFORMED,
        )  # fmt: skip
    case(
        f"{_name}-v311-leftover", V311,
        bytes([_b0, 0x03, 0x00, 0x01,
               0x00]),                  # 3.1.1 acks are exactly 2 bytes long
        error=MALFORMED, spec=("v311 3.4.2",),
    )  # fmt: skip

case(
    "puback-v5-reason-only", V5,
    bytes([0x40, 0x03, 0x00, 0x01,
           0x10]),                      # No matching subscribers, no property length
    Puback(1, R.NO_MATCHING_SUBSCRIBERS), spec=("3.4.2.2.1",),
)  # fmt: skip
case(
    "puback-v5-success-with-empty-properties", V5,
    bytes([0x40, 0x04, 0x00, 0x01,
           0x00,                        # Success
           0x00]),                      # property length 0: legal, but we send the short form
    Puback(1), only="decode",
)  # fmt: skip
case(
    "pubrec-v5-reason-string", V5,
    bytes([0x50, 0x0B, 0x00, 0x09,
           0x87,                        # Not authorized
           0x07, 0x1F, 0x00, 0x04, *b"deny"]),  # Reason String "deny"
    Pubrec(9, R.NOT_AUTHORIZED, Properties(reason_string="deny")),
)  # fmt: skip
case(
    "pubrel-v5-not-found", V5,
    bytes([0x62, 0x03, 0x00, 0x09,
           0x92]),                      # Packet Identifier not found
    Pubrel(9, R.PACKET_IDENTIFIER_NOT_FOUND),
)  # fmt: skip
case(
    "pubcomp-v5-user-property", V5,
    bytes([0x70, 0x0B, 0x00, 0x09,
           0x00,                        # Success
           0x07, 0x26, 0x00, 0x01, *b"k", 0x00, 0x01, *b"v"]),  # User Property k=v
    Pubcomp(9, properties=Properties(user_properties=(("k", "v"),))),
)  # fmt: skip
case(
    "puback-v5-reason-not-for-puback", V5,
    bytes([0x40, 0x03, 0x00, 0x01,
           0x92]),                      # Packet Identifier not found: PUBREL/PUBCOMP only
    error=PROTOCOL, spec=("3.4.2.1",),
)  # fmt: skip
case(
    "puback-v5-topic-alias-not-allowed", V5,
    bytes([0x40, 0x07, 0x00, 0x01, 0x00,
           0x03, 0x23, 0x00, 0x01]),    # Topic Alias in a PUBACK
    error=MALFORMED, spec=("2.2.2.2",),
)  # fmt: skip

# ============================================================== SUBSCRIBE / SUBACK

case(
    "subscribe-v311", V311,
    bytes([
        0x82, 14,                 # SUBSCRIBE (flags 0b0010), remaining length 14
        0x00, 0x0A,               # packet identifier 10
        0x00, 0x03, *b"a/+",      # topic filter "a/+"
        0x01,                     # requested QoS 1
        0x00, 0x03, *b"b/#",      # topic filter "b/#"
        0x02,                     # requested QoS 2
    ]),
    Subscribe(10, (Subscription("a/+", 1), Subscription("b/#", 2))),
)  # fmt: skip
case(
    "subscribe-v311-share-is-plain", V311,
    bytes([0x82, 0x0C, 0x00, 0x01,
           0x00, 0x07, *b"$share/",   # 3.1.1 has no shared subscriptions: a plain filter
           0x00]),
    Subscribe(1, (Subscription("$share/", 0),)),
)  # fmt: skip
case(
    "subscribe-v5", V5,
    bytes([
        0x82, 24,                 # SUBSCRIBE, remaining length 24
        0x00, 0x0B,               # packet identifier 11
        0x02, 0x0B, 0x07,         # property length 2: Subscription Identifier 7
        0x00, 0x01, *b"#",        # topic filter "#"
        0x2D,                     # options: retain handling 2, RAP, no local, QoS 1
        0x00, 0x0C, *b"$share/g/a/+",  # shared subscription, group "g", filter "a/+"
        0x18,                     # options: retain handling 1, RAP, QoS 0
    ]),
    Subscribe(11, (
        Subscription("#", 1, no_local=True, retain_as_published=True,
                     retain_handling=RetainHandling.DO_NOT_SEND),
        Subscription("$share/g/a/+", 0, retain_as_published=True,
                     retain_handling=RetainHandling.SEND_IF_NEW),
    ), Properties(subscription_identifiers=(7,))),
)  # fmt: skip
case(
    "subscribe-bad-flags", V311,
    bytes([0x80, 0x06, 0x00, 0x01, 0x00, 0x01, *b"a", 0x00]),  # SUBSCRIBE with flags 0
    error=MALFORMED, spec=("v311 MQTT-3.8.1-1",),
)  # fmt: skip

def _sub(version: ProtocolVersion, tag: str, payload: bytes, error: ReasonCode,
         spec: tuple[str, ...] = (), props: bytes | None = None) -> None:
    """A SUBSCRIBE with packet identifier 1 whose payload (or v5 properties) is at fault."""
    if props is None:
        props = b"\x00" if version == V5 else b""  # v5: property length 0
    case(
        f"subscribe-{'v5' if version == V5 else 'v311'}-{tag}", version,
        _pk(0x82,                       # SUBSCRIBE, flags 0b0010
            0x00, 0x01,                 # packet identifier 1
            *props, *payload),
        error=error, spec=spec,
    )  # fmt: skip


for _version in (V311, V5):
    _sub(_version, "no-filters", b"", PROTOCOL, ("MQTT-3.8.3-2", "v311 MQTT-3.8.3-3"))
    _sub(_version, "hash-not-last", bytes([0x00, 0x05, *b"a/#/b", 0x00]), MALFORMED,
         ("MQTT-4.7.1-1",))  # fmt: skip
    _sub(_version, "hash-in-level", bytes([0x00, 0x03, *b"ab#", 0x00]), MALFORMED,
         ("MQTT-4.7.1-1",))  # fmt: skip
    _sub(_version, "plus-in-level", bytes([0x00, 0x03, *b"a+b", 0x00]), MALFORMED,
         ("MQTT-4.7.1-2",))  # fmt: skip
    _sub(_version, "empty-filter", bytes([0x00, 0x00, 0x00]), MALFORMED, ("MQTT-4.7.3-1",))
    _sub(_version, "missing-options", bytes([0x00, 0x01, *b"a"]), MALFORMED)
    _sub(_version, "nul-in-filter", bytes([0x00, 0x02, *b"a", 0x00, 0x00]), MALFORMED,
         ("MQTT-1.5.4-2",))  # fmt: skip

# options byte: bit 2 is reserved in 3.1.1, bits 6-7 in 5.0
_sub(V311, "reserved-bits", bytes([0x00, 0x01, *b"a", 0x04]), MALFORMED, ("v311 MQTT-3-8.3-4",))
_sub(V311, "qos-3", bytes([0x00, 0x01, *b"a", 0x03]), MALFORMED, ("v311 MQTT-3-8.3-4",))
_sub(V5, "reserved-bits", bytes([0x00, 0x01, *b"a", 0x40]), MALFORMED, ("MQTT-3.8.3-5",))
_sub(V5, "qos-3", bytes([0x00, 0x01, *b"a", 0x03]), PROTOCOL, ("3.8.3.1",))
_sub(V5, "retain-handling-3", bytes([0x00, 0x01, *b"a", 0x30]), PROTOCOL, ("3.8.3.1",))
_sub(V5, "no-local-shared", bytes([0x00, 0x0A, *b"$share/g/a", 0x04]), PROTOCOL,
     ("MQTT-3.8.3-4",))  # fmt: skip
_sub(V5, "share-empty-group", bytes([0x00, 0x09, *b"$share//a", 0x00]), MALFORMED,
     ("MQTT-4.8.2-1",))  # fmt: skip
_sub(V5, "share-no-filter", bytes([0x00, 0x08, *b"$share/g", 0x00]), MALFORMED,
     ("MQTT-4.8.2-1",))  # fmt: skip
_sub(V5, "share-empty-filter", bytes([0x00, 0x09, *b"$share/g/", 0x00]), MALFORMED,
     ("MQTT-4.8.2-1",))  # fmt: skip
_sub(V5, "share-wildcard-group", bytes([0x00, 0x0A, *b"$share/+/a", 0x00]), MALFORMED,
     ("MQTT-4.8.2-2",))  # fmt: skip
_sub(V5, "share-bad-filter", bytes([0x00, 0x0B, *b"$share/g/#a", 0x00]), MALFORMED,
     ("MQTT-4.7.1-1",))  # fmt: skip
_sub(V5, "subscription-id-0", bytes([0x00, 0x01, *b"a", 0x00]), PROTOCOL, ("3.8.2.1.2",),
     props=bytes([0x02, 0x0B, 0x00]))  # fmt: skip
_sub(V5, "two-subscription-ids", bytes([0x00, 0x01, *b"a", 0x00]), PROTOCOL, ("3.8.2.1.2",),
     props=bytes([0x04, 0x0B, 0x01, 0x0B, 0x02]))  # fmt: skip
_sub(V5, "payload-format-not-allowed", bytes([0x00, 0x01, *b"a", 0x00]), MALFORMED,
     ("2.2.2.2",), props=bytes([0x02, 0x01, 0x01]))  # fmt: skip

case(
    "subscribe-v5-packet-id-0", V5,
    bytes([0x82, 0x07, 0x00, 0x00,      # packet identifier 0
           0x00, 0x00, 0x01, *b"a", 0x00]),
    error=PROTOCOL, spec=("MQTT-2.2.1-3",),
)  # fmt: skip

case(
    "suback-v311", V311,
    bytes([0x90, 0x06,                  # SUBACK, remaining length 6
           0x00, 0x0A,                  # packet identifier 10
           0x00, 0x01, 0x02, 0x80]),    # granted QoS 0, 1, 2, and Failure
    Suback(10, (R.SUCCESS, R.GRANTED_QOS_1, R.GRANTED_QOS_2, R.UNSPECIFIED_ERROR)),
    sender="server",
)  # fmt: skip
case(
    "suback-v5", V5,
    bytes([0x90, 0x0C,                  # SUBACK, remaining length 12
           0x00, 0x0A,                  # packet identifier 10
           0x06, 0x1F, 0x00, 0x03, *b"why",  # Reason String "why"
           0x01, 0x8F, 0x9E]),          # QoS 1, Topic Filter invalid, Shared not supported
    Suback(10, (R.GRANTED_QOS_1, R.TOPIC_FILTER_INVALID, R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
           Properties(reason_string="why")),
    sender="server",
)  # fmt: skip
case(
    "suback-v311-reserved-code", V311,
    bytes([0x90, 0x03, 0x00, 0x0A,
           0x03]),                      # return code 3: reserved
    error=PROTOCOL, sender="server", spec=("v311 MQTT-3.9.3-2",),
)  # fmt: skip
case(
    "suback-v5-no-codes", V5,
    bytes([0x90, 0x03, 0x00, 0x0A, 0x00]),  # no reason codes at all
    error=PROTOCOL, sender="server",
)  # fmt: skip
case(
    "suback-from-client", V311,
    bytes([0x90, 0x03, 0x00, 0x0A, 0x00]),
    error=PROTOCOL,
)

# ============================================================== UNSUBSCRIBE / UNSUBACK

case(
    "unsubscribe-v311", V311,
    bytes([0xA2, 0x08,                  # UNSUBSCRIBE (flags 0b0010), remaining length 8
           0x00, 0x0C,                  # packet identifier 12
           0x00, 0x01, *b"a",           # topic filter "a"
           0x00, 0x01, *b"#"]),         # topic filter "#"
    Unsubscribe(12, ("a", "#")),
)  # fmt: skip
case(
    "unsubscribe-v5", V5,
    bytes([0xA2, 0x10,                  # UNSUBSCRIBE, remaining length 16
           0x00, 0x0C,                  # packet identifier 12
           0x07, 0x26, 0x00, 0x01, *b"k", 0x00, 0x01, *b"v",  # User Property k=v
           0x00, 0x04, *b"a/+/"]),      # topic filter
    Unsubscribe(12, ("a/+/",), Properties(user_properties=(("k", "v"),))),
)  # fmt: skip
for _version, _tag in ((V311, "v311"), (V5, "v5")):
    _p = b"\x00" if _version == V5 else b""
    case(
        f"unsubscribe-{_tag}-no-filters", _version,
        bytes([0xA2, 2 + len(_p), 0x00, 0x0C, *_p]),   # packet identifier, no filter
        error=PROTOCOL, spec=("MQTT-3.10.3-2",),
    )  # fmt: skip
    case(
        f"unsubscribe-{_tag}-bad-filter", _version,
        bytes([0xA2, 6 + len(_p), 0x00, 0x0C, *_p, 0x00, 0x02, *b"#a"]),  # "#a"
        error=MALFORMED, spec=("MQTT-4.7.1-1",),
    )  # fmt: skip
    case(
        f"unsubscribe-{_tag}-bad-flags", _version,
        bytes([0xA0, 5 + len(_p), 0x00, 0x0C, *_p, 0x00, 0x01, *b"a"]),  # flags 0: reserved
        error=MALFORMED, spec=("MQTT-3.10.1-1",),
    )  # fmt: skip
case(
    "unsuback-v311", V311,
    bytes([0xB0, 0x02, 0x00, 0x0C]),    # UNSUBACK, packet identifier 12
    Unsuback(12), sender="server",
)  # fmt: skip
case(
    "unsuback-v5", V5,
    bytes([0xB0, 0x05,                  # UNSUBACK, remaining length 5
           0x00, 0x0C,                  # packet identifier 12
           0x00,                        # property length 0
           0x00, 0x11]),                # Success, No subscription existed
    Unsuback(12, (R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED)), sender="server",
)  # fmt: skip
case(
    "unsuback-v311-leftover", V311,
    bytes([0xB0, 0x03, 0x00, 0x0C, 0x00]),  # 3.1.1 UNSUBACK has no payload
    error=MALFORMED, sender="server",
)  # fmt: skip
case(
    "unsuback-v5-bad-code", V5,
    bytes([0xB0, 0x04, 0x00, 0x0C, 0x00,
           0x10]),                      # No matching subscribers: not an UNSUBACK code
    error=PROTOCOL, sender="server", spec=("3.11.3",),
)  # fmt: skip

# ============================================================== PINGREQ / PINGRESP

for _version, _tag in ((V311, "v311"), (V5, "v5")):
    case(f"pingreq-{_tag}", _version, bytes([0xC0, 0x00]), Pingreq())  # PINGREQ, length 0
    case(f"pingresp-{_tag}", _version, bytes([0xD0, 0x00]), Pingresp(), sender="server")
    case(f"pingreq-{_tag}-leftover", _version, bytes([0xC0, 0x01, 0x00]), error=MALFORMED)
    case(f"pingreq-{_tag}-bad-flags", _version, bytes([0xC1, 0x00]), error=MALFORMED,
         spec=("MQTT-2.1.3-1",))  # fmt: skip
    case(f"pingresp-{_tag}-from-client", _version, bytes([0xD0, 0x00]), error=PROTOCOL)
    case(f"pingreq-{_tag}-from-server", _version, bytes([0xC0, 0x00]), error=PROTOCOL,
         sender="server")  # fmt: skip

# ============================================================== DISCONNECT

for _version, _tag in ((V311, "v311"), (V5, "v5")):
    case(f"disconnect-{_tag}", _version, bytes([0xE0, 0x00]), Disconnect())  # length 0
    case(f"disconnect-{_tag}-bad-flags", _version, bytes([0xE2, 0x00]), error=MALFORMED,
         spec=("MQTT-2.1.3-1",))  # fmt: skip
case("disconnect-v311-leftover", V311, bytes([0xE0, 0x01, 0x00]), error=MALFORMED)
case("disconnect-v311-from-server", V311, bytes([0xE0, 0x00]), error=PROTOCOL, sender="server")
case(
    "disconnect-v5-with-will", V5,
    bytes([0xE0, 0x01,
           0x04]),                      # Disconnect with Will Message, no property length
    Disconnect(R.DISCONNECT_WITH_WILL_MESSAGE), spec=("3.14.2.2.1",),
)  # fmt: skip
case(
    "disconnect-v5-session-expiry", V5,
    bytes([0xE0, 0x07,
           0x00,                        # Normal disconnection
           0x05, 0x11, 0, 0, 0, 0]),    # Session Expiry Interval 0
    Disconnect(properties=Properties(session_expiry_interval=0)),
)  # fmt: skip
case(
    "disconnect-v5-from-server", V5,
    bytes([0xE0, 0x07,
           0x8B,                        # Server shutting down
           0x05, 0x1C, 0x00, 0x02, *b"s2"]),  # property length 5: Server Reference "s2"
    Disconnect(R.SERVER_SHUTTING_DOWN, Properties(server_reference="s2")), sender="server",
)  # fmt: skip
case(
    "disconnect-v5-server-session-expiry", V5,
    bytes([0xE0, 0x07, 0x00,
           0x05, 0x11, 0, 0, 0, 9]),    # Session Expiry Interval from a server
    error=PROTOCOL, sender="server", spec=("MQTT-3.14.2-2",),
)  # fmt: skip
case(
    "disconnect-v5-bad-reason", V5,
    bytes([0xE0, 0x01,
           0x91]),                      # Packet Identifier in use: not a DISCONNECT reason
    error=PROTOCOL, spec=("3.14.2.1",),
)  # fmt: skip

# ============================================================== AUTH

case("auth-v5-empty", V5, bytes([0xF0, 0x00]), Auth(), spec=("3.15.2.1",))  # length 0 = Success
case(
    "auth-v5-continue", V5,
    bytes([0xF0, 0x0F,
           0x18,                        # Continue authentication
           0x0D,                        # property length 13
           0x15, 0x00, 0x05, *b"SCRAM", # Authentication Method
           0x16, 0x00, 0x02, 0x01, 0x02]),  # Authentication Data
    Auth(R.CONTINUE_AUTHENTICATION,
         Properties(authentication_method="SCRAM", authentication_data=b"\x01\x02")),
)  # fmt: skip
case(
    "auth-v5-from-server", V5,
    bytes([0xF0, 0x01, 0x19]),          # Re-authenticate, no properties
    Auth(R.RE_AUTHENTICATE), sender="server",
)  # fmt: skip
case("auth-v311-reserved-type", V311, bytes([0xF0, 0x00]), error=MALFORMED, spec=("v311 2.2.1",))
case("auth-v5-bad-flags", V5, bytes([0xF1, 0x00]), error=MALFORMED, spec=("MQTT-2.1.3-1",))
case("auth-v5-bad-reason", V5, bytes([0xF0, 0x01, 0x87]), error=PROTOCOL, spec=("3.15.2.1",))

# ============================================================== fixed header

for _version, _tag in ((V311, "v311"), (V5, "v5")):
    case(f"type-0-{_tag}", _version, bytes([0x00, 0x00]), error=MALFORMED, spec=("2.1.2",))
    case(
        f"remaining-length-5-bytes-{_tag}", _version,
        bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # a fourth byte with continuation set
        error=MALFORMED, spec=("1.5.5", "v311 2.2.3"),
    )  # fmt: skip
    case(
        f"remaining-length-not-minimal-{_tag}", _version,
        bytes([0xC0, 0x80, 0x00]),      # PINGREQ, remaining length 0 in two bytes
        error=MALFORMED, spec=("MQTT-1.5.5-1",),
    )  # fmt: skip
    case(
        f"packet-too-large-{_tag}", _version,
        bytes([0x30, 0x7F]),            # PUBLISH of 129 bytes, body not sent yet
        error=R.PACKET_TOO_LARGE, max_packet_size=128, spec=("MQTT-3.1.2-24",),
    )  # fmt: skip
    case(
        f"packet-at-max-size-{_tag}", _version,
        bytes([0xC0, 0x00]),            # 2-byte PINGREQ with a maximum of 2
        Pingreq(), max_packet_size=2,
    )  # fmt: skip


# ============================================================== remaining-length boundaries


def _publish_of_length(remaining: int, version: ProtocolVersion) -> PacketCase:
    """A QoS 0 PUBLISH to "t" whose remaining length is exactly ``remaining``."""
    head = bytes([0x00, 0x01, *b"t"]) + (b"\x00" if version == V5 else b"")  # topic (+ props)
    payload = b"\xa5" * (remaining - len(head))
    return PacketCase(
        f"publish-remaining-length-{remaining}-{'v5' if version == V5 else 'v311'}",
        version,
        bytes([0x30]) + _length_bytes(remaining) + head + payload,
        Publish("t", payload),
    )


def _length_bytes(value: int) -> bytes:
    """Hand-rolled for the boundaries, independently of the codec's encoder."""
    return {
        127: bytes([0x7F]),                     # 1 byte, largest
        128: bytes([0x80, 0x01]),               # 2 bytes, smallest
        16_383: bytes([0xFF, 0x7F]),            # 2 bytes, largest
        16_384: bytes([0x80, 0x80, 0x01]),      # 3 bytes, smallest
        2_097_151: bytes([0xFF, 0xFF, 0x7F]),   # 3 bytes, largest
        2_097_152: bytes([0x80, 0x80, 0x80, 0x01]),  # 4 bytes, smallest
        268_435_455: bytes([0xFF, 0xFF, 0xFF, 0x7F]),  # 4 bytes, largest
    }[value]  # fmt: skip


#: Varint boundaries (v5 section 1.5.5 table 1-1, v311 table 2.4).
VARINT_BOUNDARIES = [(v, _length_bytes(v)) for v in (127, 128, 16_383, 16_384, 2_097_151,
                                                      2_097_152, 268_435_455)]  # fmt: skip

for _rl in (127, 128, 16_383, 16_384):
    for _version in (V311, V5):
        CASES.append(_publish_of_length(_rl, _version))

#: Too large to feed one byte at a time; test_codec feeds them whole and in chunks.
BIG_CASES = [_publish_of_length(_rl, V311) for _rl in (2_097_151, 2_097_152)]

GOOD_CASES = [c for c in CASES if c.error is None]
ERROR_CASES = [c for c in CASES if c.error is not None]
