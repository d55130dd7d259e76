"""Real MQTT clients for the registry tests: paho-mqtt (3.1.1 and 5.0) in
threads, results collected in a queue and asserted in the test body, plus a raw
3.1.1 CONNECT to read the exact CONNACK return code."""

from __future__ import annotations

import queue
import secrets
import struct
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion


class Device:
    """A paho client whose callbacks only enqueue ``(kind, value)``."""

    def __init__(
        self, port: int, user: str | None, password: str | None, *, v5: bool, client_id: str | None = None
    ) -> None:
        self.port = port
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or "t-" + secrets.token_hex(4),
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        c = self.client
        c.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connect", rc.value))
        c.on_disconnect = lambda _c, _u, _f, rc, _p: self.events.put(("disconnect", rc.value))
        c.on_subscribe = lambda _c, _u, _m, rcs, _p: self.events.put(("suback", [r.value for r in rcs]))
        c.on_publish = lambda _c, _u, mid, rc, _p: self.events.put(("puback", rc.value))
        c.on_message = lambda _c, _u, msg: self.events.put(("message", (msg.topic, msg.payload)))

    async def next(self, wait_s: float = 5.0) -> tuple[str, Any]:
        def get() -> tuple[str, Any]:
            return self.events.get(timeout=wait_s)

        return await trio.to_thread.run_sync(get)

    async def expect(self, kind: str, wait_s: float = 5.0) -> Any:
        got_kind, value = await self.next(wait_s)
        assert got_kind == kind, (got_kind, value)
        return value

    async def connect(self) -> int:
        """Connect and return the CONNACK reason code (v5 value; paho maps 3.1.1)."""
        await trio.to_thread.run_sync(lambda: self.client.connect("127.0.0.1", self.port, 30))
        self.client.loop_start()
        code: int = await self.expect("connect")
        if code != 0:
            # Refused: wait for paho's disconnect, stop its thread.
            await self.close()
        return code

    async def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic_filter, qos)
        codes: list[int] = await self.expect("suback")
        return codes

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        self.client.publish(topic, payload, qos)
        code: int = await self.expect("puback")
        return code

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.client.disconnect)
        await trio.to_thread.run_sync(self.client.loop_stop)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


async def raw_connect_v311(port: int, user: str, password: str) -> int:
    """Send a 3.1.1 CONNECT; return the CONNACK return code byte."""
    flags = 0x80 | 0x40 | 0x02  # user name, password, clean session
    variable = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    payload = _utf8("raw-" + secrets.token_hex(4)) + _utf8(user) + _utf8(password)
    body = variable + payload
    assert len(body) < 128
    packet = bytes([0x10, len(body)]) + body
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(packet)
            data = b""
            while len(data) < 4:
                chunk = await stream.receive_some(4 - len(data))
                assert chunk, "closed without CONNACK"
                data += chunk
    # v311 section 3.2: 0x20, remaining length 2, session present, return code.
    assert data[:3] == b"\x20\x02\x00", data
    return data[3]
