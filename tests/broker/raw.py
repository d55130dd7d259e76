"""A minimal MQTT client from hand-written bytes (independent of mqttgate's codec).

Used for golden-byte exchanges and as the second client implementation for the
basics; it only frames packets (fixed header + remaining length).
"""

from __future__ import annotations

from typing import Any

import trio


def frame(b0: int, body: bytes) -> bytes:
    """Fixed header (type/flags byte, remaining length varint) + body."""
    n = len(body)
    length = bytearray()
    while True:
        byte = n % 128
        n //= 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([b0]) + bytes(length) + body


def s(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect(
    client_id: str, *, version: int = 4, clean: bool = True, keepalive: int = 60, props: bytes = b"\x00"
) -> bytes:
    flags = 0x02 if clean else 0x00
    body = s("MQTT") + bytes([version, flags]) + keepalive.to_bytes(2, "big")
    if version == 5:
        body += props
    return frame(0x10, body + s(client_id))


def subscribe(packet_id: int, topic_filter: str, options: int, *, v5: bool = False) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"") + s(topic_filter) + bytes([options])
    return frame(0x82, body)


def publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0, v5: bool = False, retain: bool = False, props: bytes = b"\x00") -> bytes:
    body = s(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    if v5:
        body += props
    return frame(0x30 | (qos << 1) | int(retain), body + payload)


class RawClient:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    @classmethod
    async def connected(cls, port: int, client_id: str) -> RawClient:
        """A 3.1.1 client past an accepted CONNECT (clean session)."""
        client = await cls.open(port)
        await client.send(connect(client_id, version=4))
        assert await client.packet() == bytes([0x20, 2, 0, 0]), "CONNECT refused"
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buf += data
        return True

    async def packet(self) -> bytes | None:
        """The next whole packet's bytes, or None at EOF."""
        if not await self._fill(2):
            return None
        length, shift, i = 0, 0, 1
        while True:
            if not await self._fill(i + 1):
                return None
            byte = self.buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if byte < 0x80:
                break
        if not await self._fill(i + length):
            return None
        data = bytes(self.buf[: i + length])
        del self.buf[: i + length]
        return data

    async def eof(self) -> bool:
        """True if the server closed (after any packets still buffered)."""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return True
                self.buf += data
        except trio.BrokenResourceError:
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()
