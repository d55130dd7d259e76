"""Who gets a message: subscriptions, shared groups, retained messages, sessions.

Theory of operation
-------------------
:class:`Router` is the narrow interface between connections and the rest of
the broker. A connection calls it to subscribe, unsubscribe, publish, read
retained messages and register its session; the router calls back
``Target.deliver`` on each receiving session. Everything is synchronous:
``publish`` never waits, so a slow subscriber never stalls a publisher (the
target decides to queue, drop or disconnect, see ``broker/delivery.py``).

:class:`LocalRouter` keeps it all in this process. A router for several
replicas (NATS-backed) would implement the same protocol: ``publish`` also
sends the message to the other replicas, ``subscribe`` propagates interest,
and ``claim`` (the session registry) becomes a cluster-wide lock so that a
takeover on another replica ends the local connection.

Delivery policy (decided here, documented in docs/broker.md):

* overlapping subscriptions of one client: delivered once, at the highest
  granted QoS, with every matching Subscription Identifier (v5 section
  3.3.4, the "once" option; v311 [MQTT-3.3.5-1]); No Local subscriptions do not
  count for the client's own messages (v5 [MQTT-3.8.3-3]);
* shared subscriptions ``$share/{group}/{filter}``: each message goes to one
  member, round robin, skipping members that are offline or congested while
  another member can take it (v5 section 4.8.2);
* retained: an empty payload deletes (v5 [MQTT-3.3.1-6], v311
  [MQTT-3.3.1-10]); beyond ``max_retained`` new topics are not retained, and
  beyond ``max_retained_bytes`` of payload a message is not retained and the
  topic's old one is dropped too (v5 [MQTT-3.3.1-7]: "there will be no
  retained message for that topic"), so no stale value is served instead.
"""

from __future__ import annotations

from typing import Protocol

from mqttgate.broker.stats import BrokerStats
from mqttgate.protocol.session import Message, SubOptions
from mqttgate.protocol.topics import RetainedIndex, TopicTrie, parse_shared


class Target(Protocol):
    """A session that can receive messages (``broker.delivery.SessionHandle``)."""

    def deliver(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None: ...

    def available(self) -> bool:
        """Connected and able to take a message now (for shared groups)."""
        ...


class Router(Protocol):
    def subscribe(self, client_id: str, topic_filter: str, options: SubOptions) -> bool:
        """Add or replace a subscription (filter may be ``$share/...``); True if new."""
        ...

    def unsubscribe(self, client_id: str, topic_filter: str) -> bool: ...

    def publish(self, message: Message) -> int:
        """Route to every matching session; returns the number of deliveries."""
        ...

    def retain(self, message: Message) -> None:
        """Store (or, with an empty payload, delete) the retained message of its topic."""
        ...

    def retained_for(self, topic_filter: str, now: float) -> list[Message]:
        """Retained messages matching a (non-shared) filter; expired ones are dropped."""
        ...

    def attach(self, client_id: str, target: Target) -> None:
        """Register the session that receives the client's messages."""
        ...

    def detach(self, client_id: str, target: Target) -> None:
        """Forget the session and its subscriptions (if ``target`` is still the registered one)."""
        ...

    def target(self, client_id: str) -> Target | None: ...


class _Group:
    """The members of one shared subscription (one group, one filter)."""

    __slots__ = ("members", "order", "turn")

    def __init__(self) -> None:
        self.members: dict[str, SubOptions] = {}
        self.order: list[str] = []
        self.turn = 0


class LocalRouter:
    """The in-process :class:`Router`."""

    def __init__(
        self, stats: BrokerStats, *, max_retained: int, max_retained_bytes: int | None = None
    ) -> None:
        self.stats = stats
        self.max_retained = max_retained
        #: Payload bytes the retained messages may hold (None: no limit).
        self.max_retained_bytes = max_retained_bytes
        self._trie: TopicTrie[str, SubOptions] = TopicTrie()
        self._shared: TopicTrie[str, _Group] = TopicTrie()
        self._groups: dict[tuple[str, str], _Group] = {}
        self._retained: RetainedIndex[Message] = RetainedIndex()
        self._targets: dict[str, Target] = {}

    # -- sessions

    def attach(self, client_id: str, target: Target) -> None:
        self._targets[client_id] = target
        self.stats.sessions_count = len(self._targets)

    def detach(self, client_id: str, target: Target) -> None:
        if self._targets.get(client_id) is not target:
            return
        del self._targets[client_id]
        self.stats.sessions_count = len(self._targets)
        self._trie.remove_key(client_id)
        for topic_filter in list(self._shared_filters_of(client_id)):
            self.unsubscribe(client_id, topic_filter)

    def _shared_filters_of(self, client_id: str) -> list[str]:
        return [
            f"$share/{group}/{inner}"
            for (group, inner), g in self._groups.items()
            if client_id in g.members
        ]

    def target(self, client_id: str) -> Target | None:
        return self._targets.get(client_id)

    # -- subscriptions

    def subscribe(self, client_id: str, topic_filter: str, options: SubOptions) -> bool:
        shared = parse_shared(topic_filter)
        if shared is None:
            return self._trie.subscribe(topic_filter, client_id, options)
        key = (shared.group, shared.topic_filter)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            self._shared.subscribe(shared.topic_filter, shared.group, group)
        new = client_id not in group.members
        group.members[client_id] = options
        if new:
            group.order.append(client_id)
        return new

    def unsubscribe(self, client_id: str, topic_filter: str) -> bool:
        shared = parse_shared(topic_filter)
        if shared is None:
            return self._trie.unsubscribe(topic_filter, client_id)
        key = (shared.group, shared.topic_filter)
        group = self._groups.get(key)
        if group is None or client_id not in group.members:
            return False
        del group.members[client_id]
        group.order.remove(client_id)
        if not group.members:
            del self._groups[key]
            self._shared.unsubscribe(shared.topic_filter, shared.group)
        return True

    # -- publishing

    def publish(self, message: Message) -> int:
        topic = message.topic
        targets = self._targets
        count = 0
        matches = self._trie.match(topic)
        if len(matches) == 1:
            _, client_id, opts = matches[0]
            if not (opts.no_local and client_id == message.sender):
                target = targets.get(client_id)
                if target is not None:
                    qos = opts.qos if opts.qos < message.qos else message.qos
                    ids = () if opts.sub_id is None else (opts.sub_id,)
                    target.deliver(message, qos, message.retain and opts.retain_as_published, ids)
                    count = 1
        elif matches:
            merged: dict[str, tuple[int, bool, list[int]]] = {}
            for _, client_id, opts in matches:
                if opts.no_local and client_id == message.sender:
                    continue
                entry = merged.get(client_id)
                ids_list: list[int] = [] if entry is None else entry[2]
                if opts.sub_id is not None:
                    ids_list.append(opts.sub_id)
                if entry is None:
                    merged[client_id] = (opts.qos, opts.retain_as_published, ids_list)
                else:
                    merged[client_id] = (
                        max(entry[0], opts.qos), entry[1] or opts.retain_as_published, ids_list
                    )
            for client_id, (granted, rap, id_list) in merged.items():
                target = targets.get(client_id)
                if target is None:
                    continue
                qos = granted if granted < message.qos else message.qos
                target.deliver(message, qos, message.retain and rap, tuple(id_list))
                count += 1
        if self._groups:
            for _, _, group in self._shared.match(topic):
                if self._deliver_shared(group, message):
                    count += 1
        return count

    def _deliver_shared(self, group: _Group, message: Message) -> bool:
        order = group.order
        n = len(order)
        fallback: str | None = None
        for step in range(n):
            client_id = order[(group.turn + step) % n]
            target = self._targets.get(client_id)
            if target is None:
                continue
            if target.available():
                group.turn = (group.turn + step + 1) % n
                break
            if fallback is None:
                fallback = client_id
        else:
            if fallback is None:
                return False
            client_id = fallback
            group.turn = (group.turn + 1) % n
        opts = group.members[client_id]
        target = self._targets[client_id]
        qos = opts.qos if opts.qos < message.qos else message.qos
        ids = () if opts.sub_id is None else (opts.sub_id,)
        target.deliver(message, qos, message.retain and opts.retain_as_published, ids)
        return True

    # -- retained messages

    def retain(self, message: Message) -> None:
        retained = self._retained
        stats = self.stats
        topic = message.topic
        old = retained.get(topic)
        freed = 0 if old is None else len(old.payload)
        size = len(message.payload)
        budget = self.max_retained_bytes
        if size and (old is not None or len(retained) < self.max_retained) and (
            budget is None or stats.retained_bytes - freed + size <= budget
        ):
            retained.set(topic, message)
            stats.retained_bytes += size - freed
        else:
            if size:
                stats.retained_dropped += 1
            if old is not None:
                # Empty payload: deleted; over the limits: not replaced by a
                # stale value either (v5 [MQTT-3.3.1-7]).
                retained.delete(topic)
                stats.retained_bytes -= freed
        stats.retained_count = len(retained)

    def retained_for(self, topic_filter: str, now: float) -> list[Message]:
        out = []
        for topic, message in self._retained.match(topic_filter):
            if message.expires_at is not None and message.expires_at <= now:
                # v5 [MQTT-3.3.2-5]: an expired retained message is not sent.
                self._retained.delete(topic)
                self.stats.retained_bytes -= len(message.payload)
                self.stats.messages_expired += 1
                continue
            out.append(message)
        self.stats.retained_count = len(self._retained)
        return out
