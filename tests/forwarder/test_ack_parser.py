"""The JetStream ack fast path (nats_conn.AckParser) against nats-py's own parser.

Whatever way the server's bytes are cut into reads, every ack is handed over
exactly once and in order, and everything else (PING, INFO, other
subscriptions, status-only acks) still reaches nats-py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttgate import nats_conn

INBOX = b"_INBOX.abc"


class Recorder:
    """Stands in for the client: the parser's only collaborator."""

    def __init__(self) -> None:
        self.ack_sid_bytes = b"7"
        self.events: list[tuple[Any, ...]] = []

    def on_acks(self, acks: nats_conn.Acks) -> None:
        self.events.extend(("ack", subject, data) for subject, data in acks)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any) -> None:
        if sid == 7 and not headers:
            self.events.append(("ack", subject, data))
        else:
            self.events.append(("msg", sid, subject, data, headers))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.events.append(("info", info["server_id"]))

    async def _process_err(self, err: str) -> None:
        self.events.append(("err", err))


def ack(key: int, seq: int) -> tuple[bytes, tuple[Any, ...]]:
    body = b'{"stream":"MQTT", "seq":%d}' % seq
    subject = b"%s.%x" % (INBOX, key)
    return b"MSG %s 7  %d\r\n%s\r\n" % (subject, len(body), body), ("ack", subject, body)


def stream() -> tuple[bytes, list[tuple[Any, ...]]]:
    """Acks with every other kind of server operation in between."""
    frames: list[bytes] = []
    expected: list[tuple[Any, ...]] = []
    for key in range(40):
        frame, event = ack(key, key + 1)
        frames.append(frame)
        expected.append(event)
        if key == 5:
            frames.append(b"PING\r\n")
            expected.append(("ping",))
        if key == 9:
            frames.append(b"MSG other.subject 3 reply.to 5\r\nhello\r\n")
            expected.append(("msg", 3, b"other.subject", b"hello", None))
        if key == 17:
            frames.append(b"HMSG %s.ff 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n" % INBOX)
            expected.append(("msg", 7, INBOX + b".ff", b"", b"NATS/1.0 503\r\n\r\n"))
        if key == 25:
            frames.append(b'INFO {"server_id":"S1"}\r\nPONG\r\n')
            expected.extend([("info", "S1"), ("pong",)])
        if key == 30:  # a body holding a CRLF: framing by size, not by lines
            frames.append(b"MSG %s.fe 7  12\r\nab\r\ncdefghij\r\n" % INBOX)
            expected.append(("ack", INBOX + b".fe", b"ab\r\ncdefghij"))
        if key == 33:
            frames.append(b"+OK\r\n")
    return b"".join(frames), expected


def feed(chunks: list[bytes]) -> list[tuple[Any, ...]]:
    recorder = Recorder()
    parser = nats_conn.AckParser(recorder)

    async def run() -> None:
        for chunk in chunks:
            await parser.parse(chunk)

    asyncio.run(run())
    assert not parser.buf, "everything complete was consumed"
    return recorder.events


def test_whole_stream_in_one_read() -> None:
    data, expected = stream()
    assert feed([data]) == expected


def test_every_single_cut() -> None:
    data, expected = stream()
    for cut in range(1, len(data)):
        assert feed([data[:cut], data[cut:]]) == expected, cut


def test_byte_by_byte() -> None:
    data, expected = stream()
    assert feed([data[i : i + 1] for i in range(len(data))]) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40))
def test_any_read_sizes(sizes: list[int]) -> None:
    data, expected = stream()
    chunks, pos = [], 0
    while pos < len(data):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
    assert feed(chunks) == expected


def test_scan_stops_at_another_subscription_and_at_a_cut_frame() -> None:
    first, _ = ack(1, 1)
    second, _ = ack(2, 2)
    acks, pos = nats_conn.scan_acks(first + b"MSG x 8  1\r\na\r\n" + second, b"7")
    assert [subject for subject, _ in acks] == [INBOX + b".1"]
    assert pos == len(first)
    acks, pos = nats_conn.scan_acks(first + second[:-3], b"7")
    assert len(acks) == 1 and pos == len(first)


@pytest.mark.parametrize("sid", [1, 7, 12345])
def test_ack_sid_bytes_follow_the_sid(sid: int) -> None:
    client = nats_conn.FastClient()
    client.ack_sid = sid
    assert client.ack_sid_bytes == str(sid).encode()
    assert isinstance(client._ps, nats_conn.AckParser)


def test_only_a_status_header_makes_an_ack_a_status() -> None:
    """An ack on the inbox with headers but no status code (``NATS/1.0``
    alone) still carries its JSON body, which decides: it must reach
    ``on_acks`` (as before the fast path), not be taken as "not stored" and
    retried until its deadline fails it. ``NATS/1.0 503`` is a status."""
    client = nats_conn.FastClient()
    client.ack_sid = 7
    acks: list[tuple[bytes, bytes]] = []
    statuses: list[tuple[bytes, bytes]] = []
    client.on_acks = acks.extend
    client.on_ack_status = lambda subject, headers: statuses.append((subject, headers))
    body = b'{"stream":"MQTT", "seq":1}'

    async def run() -> None:
        await client._process_msg(7, INBOX + b".1", b"", body, b"NATS/1.0\r\nX-Trace: 1\r\n\r\n")
        await client._process_msg(7, INBOX + b".2", b"", b"", b"NATS/1.0 503\r\n\r\n")

    asyncio.run(run())
    assert acks == [(INBOX + b".1", body)]
    assert statuses == [(INBOX + b".2", b"NATS/1.0 503\r\n\r\n")]
