"""mqttgate: an MQTT device gateway on trio."""

__version__ = "0.1.0"
