"""A small HTTP/1.1 client over trio sockets and h11 (no HTTP library installed).

Each request opens a connection with ``Connection: close`` and reads to EOF,
so it also checks that the server closes its connections (stack-notes 1.3).
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import h11
import trio


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    port: int,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    deadline_s: float = 10.0,
) -> Reply:
    send_headers = {"Host": f"{host}:{port}", "Connection": "close"}
    if token is not None:
        send_headers["Authorization"] = f"Bearer {token}"
    if json_body is not None:
        body = json.dumps(json_body).encode()
        send_headers["Content-Type"] = "application/json"
    if body is not None:
        send_headers["Content-Length"] = str(len(body))
    send_headers.update(headers or {})
    conn = h11.Connection(h11.CLIENT)
    with trio.fail_after(deadline_s):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            out = conn.send(h11.Request(method=method, target=path, headers=list(send_headers.items())))
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            status, reply_headers, chunks = 0, {}, []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    reply_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            # The server must close after Connection: close (socket-leak regression).
            while await stream.receive_some(65536):
                pass
    return Reply(status, reply_headers, b"".join(chunks))
