"""The broker's narrow interface to the upstream forwarder (NATS JetStream).

The broker hands every authenticated PUBLISH to a :class:`Forwarder`:

* QoS 0: ``try_submit`` (never waits; None when the bounded queue is full),
  then at most a short ``submit`` (the broker gives the pump 20 ms to make
  room), then ``submit_nowait``, which returns False when the message was
  dropped (the caller counts it). Wills use ``submit_nowait`` alone.
* QoS 1/2: ``await submit(message)`` waits for queue space (this is the
  backpressure that stops reading the device's socket) and returns a
  :class:`Ticket`; the connection sends PUBACK/PUBREC only after
  ``await ticket.wait()`` returned, i.e. after JetStream stored the message.
  ``ticket.wait()`` raises :class:`ForwardFailed` when the message could not be
  stored before the forward deadline.

:class:`NullForwarder` (``MQTTGATE_FORWARD=off``) completes every ticket at once.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from mqttgate.protocol.packets import NO_PROPERTIES, Properties


@attrs.define
class ForwardMessage:
    """One device message for upstream. Treat it as immutable: it is not
    frozen only because a frozen attrs class costs 1 µs more to build, and
    one is built for every forwarded PUBLISH."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    client_id: str
    device_id: str | None
    device_type: str | None
    mqtt_user: str | None
    #: v5 PUBLISH properties (content type, payload format, response topic,
    #: correlation data, user properties) to carry as headers.
    properties: Properties = NO_PROPERTIES
    #: JetStream de-duplication id (``Nats-Msg-Id``); set for QoS 1/2 so a
    #: retransmitted PUBLISH is stored once within the duplicate window.
    msg_id: str | None = None


class ForwardFailed(Exception):
    """The message was not stored upstream before the deadline."""


class ForwardRefused(ForwardFailed):
    """The message can never be forwarded (its topic has no NATS subject:
    whitespace, DEL or NUL in the topic). Retrying cannot help, so the broker
    answers v5 PUBACK/PUBREC 0x90 and acknowledges-and-drops on 3.1.1."""


class Ticket(Protocol):
    async def wait(self) -> None:
        """Return once the message is stored upstream; raise ForwardFailed otherwise."""
        ...


class Forwarder(Protocol):
    async def submit(self, message: ForwardMessage) -> Ticket: ...

    def try_submit(self, message: ForwardMessage) -> Ticket | None:
        """Queue without waiting; None when the queue is full (then ``submit``)."""
        ...

    def submit_nowait(self, message: ForwardMessage) -> bool: ...


class _DoneTicket:
    async def wait(self) -> None:
        return None


DONE = _DoneTicket()


class NullForwarder:
    """Forwarding off: nothing leaves the broker, every ticket is complete."""

    async def submit(self, message: ForwardMessage) -> Ticket:
        return DONE

    def try_submit(self, message: ForwardMessage) -> Ticket | None:
        return DONE

    def submit_nowait(self, message: ForwardMessage) -> bool:
        return True
