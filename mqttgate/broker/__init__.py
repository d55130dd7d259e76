"""The MQTT broker: listeners, connections, sessions and routing (I/O side)."""

from mqttgate.broker.server import Broker

__all__ = ["Broker"]
