"""Placeholder broker: the lead's stub until the real broker lands."""

from __future__ import annotations

import trio

from mqttgate.auth import Authenticator
from mqttgate.config import Config
from mqttgate.forward import Forwarder


class Broker:
    def __init__(self, config: Config, authenticator: Authenticator, forwarder: Forwarder) -> None:
        self.config = config
        self.authenticator = authenticator
        self.forwarder = forwarder

    async def serve(
        self,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listen = self.config.mqtt_listen
        listeners = await trio.open_tcp_listeners(listen.port, host=listen.host)
        async with trio.open_nursery() as nursery:
            addrs = []
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                addrs.append(f"mqtt://{host}:{port}")
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(addrs)
            await shutdown.wait()
            nursery.cancel_scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        await stream.aclose()
