"""Headers and stream checks: pure, no NATS."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.api import StorageType, StreamConfig

from mqttgate import headers as h
from mqttgate import nats_conn
from mqttgate.config import ConfigError
from mqttgate.forward import ForwardMessage
from mqttgate.protocol.packets import NO_PROPERTIES, Properties
from tests.conftest import make_config

# MQTT strings: any code point but NUL and surrogates (v5 [MQTT-1.5.4-1], [MQTT-1.5.4-2]).
mqtt_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)


def wire(headers: dict[str, str]) -> dict[str, str]:
    """What a header survives as on the wire: nats-py trims values and turns CR/LF into spaces."""
    for name in headers:
        assert all(c in "!#$%&'*+-.^_`|~" or (c.isalnum() and c.isascii()) for c in name)
    return {name: value.strip().replace("\r", " ").replace("\n", " ") for name, value in headers.items()}


@settings(max_examples=150)
@given(
    text=mqtt_text,
    data=st.binary(max_size=20),
    pairs=st.lists(st.tuples(mqtt_text, mqtt_text), max_size=4),
)
def test_headers_are_lossless_over_the_wire(text: str, data: bytes, pairs: list[tuple[str, str]]) -> None:
    props = Properties(
        content_type=text, response_topic=text, correlation_data=data, user_properties=tuple(pairs)
    )
    msg = ForwardMessage("t", b"", 1, False, text, None, text, text, props, "id")
    got = wire(h.message_headers(msg, "id"))
    for name in (h.CLIENT_ID, h.DEVICE_TYPE, h.USERNAME, h.CONTENT_TYPE, h.RESPONSE_TOPIC):
        assert h.read_text(got, name) == text
    assert h.read_binary(got, h.CORRELATION_DATA) == data
    assert h.read_user_properties(got) == pairs
    assert got[h.MSG_ID] == "id"


def test_plain_values_are_sent_as_they_are_and_awkward_ones_as_base64() -> None:
    out: dict[str, str] = {}
    h.put_text(out, "Mqtt-Content-Type", "text/plain")
    h.put_text(out, "Mqtt-Response-Topic", "a\nb")
    h.put_text(out, "Mqtt-Client-Id", " padded")
    assert out == {
        "Mqtt-Content-Type": "text/plain",
        "Mqtt-Response-Topic-B64": "YQpi",
        "Mqtt-Client-Id-B64": "IHBhZGRlZA==",
    }


def test_absent_properties_have_no_headers() -> None:
    msg = ForwardMessage("a/b", b"", 0, False, "c", None, None, None)
    assert h.message_headers(msg, None) == {
        "Mqtt-Topic": "a/b", "Mqtt-Client-Id": "c", "Mqtt-Qos": "0", "Mqtt-Retain": "false",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("subject_filter", "prefix", "covers"),
    [
        ("mqtt.>", "mqtt", True),
        (">", "mqtt", True),
        ("*.>", "mqtt", True),
        ("mqtt.*.>", "mqtt", True),
        ("mqtt.*.*.>", "mqtt", False),  # misses one-level topics
        ("mqtt.dev.>", "mqtt", False),  # one device only
        ("mqttx.>", "mqtt", False),
        ("mqtt", "mqtt", False),
        ("mqtt.*", "mqtt", False),
        ("org.mqtt.>", "org.mqtt", True),
        ("org.>", "org.mqtt", True),
        ("org.*.>", "org.mqtt", True),
        ("org.mqtt.*.>", "org.mqtt", True),
        ("org.other.>", "org.mqtt", False),
    ],
)
def test_filter_covers(subject_filter: str, prefix: str, covers: bool) -> None:
    assert nats_conn.filter_covers(subject_filter, prefix) is covers


def test_check_stream_tolerates_differences_and_refuses_a_stream_that_misses_our_subjects() -> None:
    config = make_config(nats_subject_prefix="mqtt", forward_timeout=10.0)
    fits = StreamConfig(name="MQTT", subjects=["mqtt.>"], storage=StorageType.MEMORY, duplicate_window=5.0)
    notes = nats_conn.check_stream(fits, config)
    assert any("storage" in note for note in notes)
    assert any("duplicate window" in note for note in notes)
    with pytest.raises(ConfigError) as caught:
        nats_conn.check_stream(StreamConfig(name="MQTT", subjects=["other.>"]), config)
    assert caught.value.source == "MQTTGATE_NATS_STREAM"


def test_connect_options_carry_credentials_and_reconnect_forever() -> None:
    config = make_config(
        nats_url="nats://a:4222, nats://b:4222", nats_user="u", nats_password="p", nats_creds="/x.creds"
    )
    options: dict[str, Any] = nats_conn.connect_options(config)
    assert options["servers"] == ["nats://a:4222", "nats://b:4222"]
    assert options["max_reconnect_attempts"] == -1
    assert (options["user"], options["password"], options["user_credentials"]) == ("u", "p", "/x.creds")
    assert "tls" not in options


def test_tls_options(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        nats_conn.connect_options(make_config(nats_tls_cert="/c.pem"))
    assert caught.value.source == "MQTTGATE_NATS_TLS_CERT"
    with pytest.raises(ConfigError):
        nats_conn.connect_options(make_config(nats_tls_cert="/missing.pem", nats_tls_key="/missing.key"))
    context = nats_conn.connect_options(make_config(nats_tls_ca=ssl.get_default_verify_paths().cafile))["tls"]
    assert isinstance(context, ssl.SSLContext)


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("props", [NO_PROPERTIES, Properties(content_type="x/y", user_properties=(("k", "\u00e9"),))])
async def test_forwarder_commands_are_what_nats_py_would_send(qos: int, props: Properties) -> None:
    """The forwarder builds its HPUBs in one formatting step from cached
    parts: byte for byte nats-py's encoding, first and cached alike."""
    from nats.aio.client import NATS_HDR_LINE
    from nats.protocol.command import hpub_cmd

    from mqttgate.forwarder import JetStreamForwarder

    forwarder = JetStreamForwarder(make_config(forward=True))
    message = ForwardMessage("a/b.c", b"\x00\r\n payload", qos, True, "c", "dev1", "t", "u", props,
                             "sess:7:1" if qos else None)  # fmt: skip
    for _ in range(2):
        entry = forwarder._entry(message)
        block = bytearray(NATS_HDR_LINE + b"\r\n")
        for key, value in h.message_headers(message, message.msg_id).items():
            block += f"{key}: {value}\r\n".encode()
        block += b"\r\n"
        reply = f"{forwarder._inbox}.{entry.key:x}" if qos else ""
        expected = hpub_cmd("mqtt.dev1.a.b//c", reply, bytes(block), message.payload)
        if not reply:
            expected = expected.replace(b"HPUB mqtt.dev1.a.b//c  ", b"HPUB mqtt.dev1.a.b//c ")
        assert entry.command == expected
        assert entry.subject == "mqtt.dev1.a.b//c"
