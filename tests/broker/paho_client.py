"""A paho-mqtt client whose callbacks only put events into a queue.

Blocking methods are meant to run in ``trio.to_thread.run_sync``; assertions
belong in the test body.
"""

from __future__ import annotations

import queue
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5


class Paho:
    def __init__(self, port: int, client_id: str, version: int, *, clean: bool = True,
                 expiry: int | None = None, connect_props: dict[str, Any] | None = None) -> None:
        self.port = port
        self.version = version
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": version}
        if version == V311:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.clean = clean
        self.expiry = expiry
        self.connect_props = connect_props or {}
        c = self.client
        c.on_connect = lambda _c, _u, flags, rc, props: self.events.put(
            ("connack", int(rc.value), flags.session_present)
        )
        c.on_message = lambda _c, _u, m: self.events.put(
            ("msg", m.topic, m.payload, m.qos, m.retain, m.properties)
        )
        c.on_subscribe = lambda _c, _u, mid, codes, props: self.events.put(
            ("suback", [int(code.value) for code in codes])
        )
        c.on_disconnect = lambda _c, _u, flags, rc, props: self.events.put(("disconnect", int(rc.value)))
        c.on_publish = lambda _c, _u, mid, rc, props: self.events.put(("puback", mid, int(rc.value)))

    def connect(self, keepalive: int = 60) -> tuple[Any, ...]:
        props = None
        if self.version == V5:
            props = Properties(PacketTypes.CONNECT)
            if self.expiry is not None:
                props.SessionExpiryInterval = self.expiry
            for key, value in self.connect_props.items():
                setattr(props, key, value)
            self.client.connect("127.0.0.1", self.port, keepalive, clean_start=self.clean, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port, keepalive)
        self.client.loop_start()
        return self.wait("connack")

    def wait(self, kind: str, timeout: float = 5.0) -> tuple[Any, ...]:
        while True:
            event = self.events.get(timeout=timeout)
            if event[0] == kind:
                return event

    def subscribe(self, topic: str, qos: int = 0, **options: Any) -> list[int]:
        props = None
        sub_id = options.pop("sub_id", None)
        if self.version == V5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            opts: Any = SubscribeOptions(qos=qos, **options)
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            self.client.subscribe(topic, options=opts, properties=props)
        else:
            self.client.subscribe(topic, qos)
        return list(self.wait("suback")[1])

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                props: dict[str, Any] | None = None) -> None:
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for key, value in props.items():
                setattr(properties, key, value)
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(5)

    def messages(self, n: int, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        return [self.wait("msg", timeout) for _ in range(n)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def kill(self) -> None:
        """Close the socket without DISCONNECT (an abnormal close)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
