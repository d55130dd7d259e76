"""The forwarder's bookkeeping without a NATS server: what a cancelled
submission leaves behind (review findings)."""

from __future__ import annotations

import trio
import trio.testing

from mqttgate.forward import ForwardMessage
from mqttgate.forwarder import JetStreamForwarder
from tests.conftest import make_config


def message(n: int) -> ForwardMessage:
    return ForwardMessage("t", b"x", 1, False, "c", "dev", None, None, msg_id=f"m-{n}")


async def test_a_submit_cancelled_while_waiting_for_room_is_not_a_failed_forward(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection closed while it waits for queue room (backpressure) never
    queued its message: the forwarder must not keep it (payload included)
    until the deadline and then count and log it as a failed forward."""
    forwarder = JetStreamForwarder(make_config(forward=True, nats_queue_size=1, forward_timeout=1.0))
    queued = forwarder.try_submit(message(1))  # no pump: the queue is now full
    assert queued is not None
    with trio.move_on_after(0.1) as waited:
        await forwarder.submit(message(2))
    assert waited.cancelled_caught
    assert len(forwarder._outstanding) == 1  # only the queued message
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forwarder._expiry_loop)
        await trio.sleep(2.0)  # past the queued message's deadline
        nursery.cancel_scope.cancel()
    assert forwarder.stats.failed_total == 1  # the queued one, at its deadline
