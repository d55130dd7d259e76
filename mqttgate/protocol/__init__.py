"""The pure (sans-IO) MQTT core: packets, reason codes and the codec."""
