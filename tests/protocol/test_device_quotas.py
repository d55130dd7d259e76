"""The pure per-device bookkeeping: QueueBudget with a parent (a device's
share of max_queued_bytes) and DeviceQuotas (max_sessions_per_device)."""

from __future__ import annotations

import pytest

from mqttgate.protocol.packets import NO_PROPERTIES
from mqttgate.protocol.session import BudgetExceeded, DeviceQuotas, Message, QueueBudget, Session


def message(size: int) -> Message:
    """A message whose queued size is ``size`` (topic "t" + payload)."""
    return Message("t", b"x" * (size - 1), 1, False, NO_PROPERTIES, None, None)


def test_take_needs_room_in_the_share_and_in_its_parent() -> None:
    broker = QueueBudget(100)
    share = QueueBudget(30, broker)
    assert share.take(30)
    assert (share.used, broker.used) == (30, 30)
    assert not share.take(1)  # the share is full, the broker is not
    assert (share.used, broker.used) == (30, 30)  # a refusal counts nothing
    other = QueueBudget(200, broker)
    assert other.take(70)
    assert not other.take(1)  # its own share has room, the broker has none
    assert (other.used, broker.used) == (70, 100)
    share.give_back(10)
    assert (share.used, broker.used) == (20, 90)
    assert other.take(10)
    assert broker.used == 100


def test_budget_without_parent_is_unchanged() -> None:
    # The broker-wide budget alone: exactly the old rule, used + size <= limit.
    budget = QueueBudget(10)
    assert budget.take(10) and not budget.take(1)
    budget.give_back(10)
    assert budget.used == 0
    zero = QueueBudget(0)
    assert not zero.take(1)  # max_queued_bytes 0 queues nothing


def test_session_over_its_device_share_raises_the_budget_error() -> None:
    broker = QueueBudget(1000)
    share = QueueBudget(20, broker)
    a1 = Session("a1", "u1", max_queued=10, budget=share)
    a2 = Session("a2", "u2", max_queued=10, budget=share)
    b = Session("b", "u3", max_queued=10, budget=QueueBudget(20, broker))
    a1.enqueue(message(10), 1, False, ())
    a2.enqueue(message(10), 1, False, ())
    # The same exception as a full broker budget: the delivery path handles
    # it the same way (dropped, or 0x97 for a connected client).
    with pytest.raises(BudgetExceeded) as raised:
        a1.enqueue(message(10), 1, False, ())
    assert type(raised.value) is BudgetExceeded
    b.enqueue(message(10), 1, False, ())  # another device's share has room
    assert (share.used, broker.used) == (20, 30)
    a1.dequeue()
    assert (share.used, broker.used) == (10, 20)
    a2.end()
    assert (share.used, broker.used) == (0, 10)


def test_device_sessions_are_counted_and_capped() -> None:
    quotas = DeviceQuotas(QueueBudget(1000), max_sessions=2, max_bytes=100)
    assert not quotas.full("d")
    first = quotas.attach("c1", "d", persistent=True)
    assert quotas.attach("c2", "d", persistent=True) is first  # one share per device
    assert first.parent is quotas.budget and first.limit == 100
    assert quotas.sessions("d") == 2 and quotas.full("d")
    assert not quotas.full("e")  # other devices are not affected
    assert quotas.attach("c3", "e", persistent=True) is not first
    quotas.detach("c1")
    assert quotas.sessions("d") == 1 and not quotas.full("d")
    quotas.detach("c1")  # idempotent
    assert quotas.sessions("d") == 1
    quotas.detach("c2")
    # The last session gone, the device is forgotten (memory per device
    # is bounded by the sessions held) and starts with a fresh share.
    assert quotas.sessions("d") == 0 and "d" not in quotas._devices
    assert quotas.attach("c1", "d", persistent=True) is not first


def test_a_client_id_attached_twice_counts_once() -> None:
    quotas = DeviceQuotas(QueueBudget(1000), max_sessions=5, max_bytes=100)
    quotas.attach("c", "d", persistent=True)
    quotas.attach("c", "d", persistent=True)
    assert quotas.sessions("d") == 1


def test_anonymous_clients_are_not_tracked_and_limits_0_do_not_limit() -> None:
    broker = QueueBudget(1000)
    quotas = DeviceQuotas(broker, max_sessions=1, max_bytes=100)
    for i in range(3):
        assert quotas.attach(f"anon{i}", None, persistent=True) is broker
    assert not quotas.full(None) and quotas.sessions(None) == 0
    assert quotas.client_ids(None) == []  # no anonymous client is tracked
    off = DeviceQuotas(broker, max_sessions=0, max_bytes=0)
    for i in range(3):
        assert off.attach(f"c{i}", "d", persistent=True) is broker
    # Counted all the same (a deleted device's sessions are found), never refused.
    assert not off.full("d") and off.sessions("d") == 3


def test_client_ids_of_a_device_and_of_all_devices() -> None:
    quotas = DeviceQuotas(QueueBudget(1000), max_sessions=0, max_bytes=0)
    for client_id, device_id in (("a1", "a"), ("b1", "b"), ("a2", "a"), ("anon", None)):
        quotas.attach(client_id, device_id, persistent=True)
    assert sorted(quotas.client_ids("a")) == ["a1", "a2"]
    assert sorted(quotas.client_ids(None)) == ["a1", "a2", "b1"]
    quotas.detach("a1")
    assert quotas.client_ids("a") == ["a2"] and quotas.client_ids("nobody") == []


def test_session_limit_alone_queues_against_the_broker_budget() -> None:
    broker = QueueBudget(1000)
    quotas = DeviceQuotas(broker, max_sessions=1, max_bytes=0)
    assert quotas.attach("c", "d", persistent=True) is broker
    assert quotas.full("d")
    bytes_only = DeviceQuotas(broker, max_sessions=0, max_bytes=100)
    for i in range(200):
        bytes_only.attach(f"c{i}", "d", persistent=True)
    assert not bytes_only.full("d") and bytes_only.sessions("d") == 200


def test_only_persistent_sessions_count_against_the_cap() -> None:
    # Sessions that end with their connection are bounded by max_connections;
    # the cap is for what piles up (docs/broker.md "Session memory").
    quotas = DeviceQuotas(QueueBudget(1000), max_sessions=1, max_bytes=0)
    for i in range(5):
        quotas.attach(f"clean{i}", "d", persistent=False)
    assert quotas.sessions("d") == 5 and quotas.persistent("d") == 0 and not quotas.full("d")
    quotas.attach("kept", "d", persistent=True)
    assert quotas.persistent("d") == 1 and quotas.full("d") and quotas.is_persistent("kept")
    quotas.detach("kept")
    assert not quotas.full("d")
    # A clean session resumed with an expiry becomes persistent (once).
    quotas.make_persistent("clean0")
    quotas.make_persistent("clean0")
    assert quotas.persistent("d") == 1 and quotas.is_persistent("clean0")
    quotas.make_persistent("unknown")  # not tracked: nothing happens
    quotas.detach("clean0")
    assert quotas.persistent("d") == 0 and quotas.sessions("d") == 4
