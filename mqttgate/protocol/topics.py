"""Topic names, topic filters, and the two indexes the router needs.

Theory of operation
-------------------
A topic is a ``/``-separated list of *levels* (empty levels are allowed:
``/a`` has the levels ``""`` and ``"a"``). A filter may use ``+`` for exactly
one level and ``#`` for zero or more trailing levels, so ``a/#`` matches ``a``
itself (v5 section 4.7.1.2, v311 section 4.7.1.2, the ``sport/#`` example).
Topics starting with ``$`` are never matched by a filter whose first level is a
wildcard (v5 [MQTT-4.7.2-1], v311 [MQTT-4.7.2-1]).

* :func:`matches` is the naive, obviously-correct reference: it is what the
  tests compare the indexes against, not what the router calls.
* :class:`TopicTrie` maps filters to subscribers (publish → who gets it). A
  PUBLISH splits its topic once and walks the trie level by level, following
  the literal child, the ``+`` child and collecting the ``#`` child.
* :class:`RetainedIndex` maps topics to retained messages (subscribe → which
  retained messages match the new filter): the same walk in the other
  direction, where ``+`` fans out over children and ``#`` takes a subtree.

Both indexes assume their inputs are valid (checked once by the codec or the
session with :func:`validate_topic_name` / :func:`validate_topic_filter`);
they never see the ``$share/{group}/`` prefix: callers store the inner filter.

This module is pure: no I/O, no trio, no logging.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs

from mqttgate.protocol.reasons import MQTTError, ReasonCode

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "RetainedIndex",
    "SharedFilter",
    "TopicTrie",
    "matches",
    "parse_shared",
    "validate_topic_filter",
    "validate_topic_name",
]

#: Topic names and filters are UTF-8 strings of at most 65,535 bytes
#: (v5 [MQTT-4.7.3-3], v311 [MQTT-4.7.3-3]).
MAX_TOPIC_BYTES = 65535

#: The prefix of a shared subscription filter (v5 section 4.8.2).
SHARE_PREFIX = "$share/"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _check_length_and_levels(
    text: str, what: str, reason: ReasonCode, max_length: int, max_levels: int | None
) -> None:
    # Length is counted in UTF-8 bytes (v5 [MQTT-4.7.3-3]); a character is 1..4
    # bytes, so most strings are decided without encoding them.
    n = len(text)
    if n > max_length or (
        n * 4 > max_length and len(text.encode("utf-8", "surrogatepass")) > max_length
    ):
        raise MQTTError(reason, f"{what} longer than {max_length} bytes")
    if max_levels is not None and text.count("/") + 1 > max_levels:
        raise MQTTError(reason, f"{what} has more than {max_levels} levels")


def validate_topic_name(
    name: str, *, max_length: int = MAX_TOPIC_BYTES, max_levels: int | None = None
) -> None:
    """Check a topic name (PUBLISH, Will); raise ``MQTTError(TOPIC_NAME_INVALID)``.

    ``max_length`` (UTF-8 bytes) and ``max_levels`` are the broker's own
    limits, at most the protocol's 65,535 bytes.
    """
    if not name:
        # v5 [MQTT-4.7.3-1], v311 [MQTT-4.7.3-1]
        raise MQTTError(ReasonCode.TOPIC_NAME_INVALID, "empty topic name (MQTT-4.7.3-1)")
    if "+" in name or "#" in name:
        # v5 [MQTT-3.3.2-2] / [MQTT-4.7.0-1], v311 [MQTT-3.3.2-2] / [MQTT-4.7.1-1]
        raise MQTTError(
            ReasonCode.TOPIC_NAME_INVALID,
            f"wildcard in topic name {name!r} (MQTT-3.3.2-2)",
        )
    if "\x00" in name:
        # v5 [MQTT-4.7.3-2], v311 [MQTT-4.7.3-2]
        raise MQTTError(ReasonCode.TOPIC_NAME_INVALID, "U+0000 in topic name (MQTT-4.7.3-2)")
    _check_length_and_levels(
        name, "topic name", ReasonCode.TOPIC_NAME_INVALID, max_length, max_levels
    )


def _check_filter_levels(topic_filter: str) -> None:
    """The wildcard rules on a plain (non-shared) filter."""
    if not topic_filter:
        # v5 [MQTT-4.7.3-1], v311 [MQTT-4.7.3-1]
        raise MQTTError(ReasonCode.TOPIC_FILTER_INVALID, "empty topic filter (MQTT-4.7.3-1)")
    if "\x00" in topic_filter:
        # v5 [MQTT-4.7.3-2], v311 [MQTT-4.7.3-2]
        raise MQTTError(ReasonCode.TOPIC_FILTER_INVALID, "U+0000 in topic filter (MQTT-4.7.3-2)")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            # v5 [MQTT-4.7.1-1], v311 [MQTT-4.7.1-2]
            raise MQTTError(
                ReasonCode.TOPIC_FILTER_INVALID,
                f"'#' must be a whole level and the last one in {topic_filter!r} (MQTT-4.7.1-1)",
            )
        if "+" in level and level != "+":
            # v5 [MQTT-4.7.1-2], v311 [MQTT-4.7.1-3]
            raise MQTTError(
                ReasonCode.TOPIC_FILTER_INVALID,
                f"'+' must be a whole level in {topic_filter!r} (MQTT-4.7.1-2)",
            )


def validate_topic_filter(
    topic_filter: str, *, max_length: int = MAX_TOPIC_BYTES, max_levels: int | None = None
) -> None:
    """Check a topic filter (SUBSCRIBE, UNSUBSCRIBE).

    Raises ``MQTTError(TOPIC_FILTER_INVALID)``. A shared filter
    ``$share/{group}/{filter}`` is checked as such (see :func:`parse_shared`);
    ``max_levels`` then applies to the inner filter.
    """
    shared = parse_shared(topic_filter)
    if shared is None:
        _check_filter_levels(topic_filter)
        inner = topic_filter
    else:
        inner = shared.topic_filter
    _check_length_and_levels(
        topic_filter, "topic filter", ReasonCode.TOPIC_FILTER_INVALID, max_length, None
    )
    if max_levels is not None:
        _check_length_and_levels(
            inner, "topic filter", ReasonCode.TOPIC_FILTER_INVALID, max_length, max_levels
        )


@attrs.frozen
class SharedFilter:
    """A parsed ``$share/{group}/{filter}`` (v5 section 4.8.2)."""

    #: The ShareName: non-empty, without ``/``, ``+`` or ``#``.
    group: str
    #: The filter the group subscribes to, as it goes into the trie.
    topic_filter: str


def parse_shared(topic_filter: str) -> SharedFilter | None:
    """Split a shared subscription filter; ``None`` if the filter is not shared.

    Raises ``MQTTError(TOPIC_FILTER_INVALID)`` for a malformed shared filter
    such as ``$share/grp`` or ``$share//a``.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, sep, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group:
        # v5 [MQTT-4.8.2-1]: the ShareName is at least one character long.
        raise MQTTError(
            ReasonCode.TOPIC_FILTER_INVALID,
            f"empty share name in {topic_filter!r} (MQTT-4.8.2-1)",
        )
    if "+" in group or "#" in group:
        # v5 [MQTT-4.8.2-2]: no '/', '+' or '#' in the ShareName ('/' cannot
        # occur here: partition stopped at the first one).
        raise MQTTError(
            ReasonCode.TOPIC_FILTER_INVALID,
            f"wildcard in share name {group!r} (MQTT-4.8.2-2)",
        )
    if not sep or not inner:
        # v5 [MQTT-4.8.2-2]: the ShareName is followed by '/' and a Topic Filter.
        raise MQTTError(
            ReasonCode.TOPIC_FILTER_INVALID,
            f"no topic filter after the share name in {topic_filter!r} (MQTT-4.8.2-2)",
        )
    _check_filter_levels(inner)
    return SharedFilter(group=group, topic_filter=inner)


# --------------------------------------------------------------------------
# The reference matcher
# --------------------------------------------------------------------------


def matches(topic_filter: str, topic: str) -> bool:
    """Does a (valid, non-shared) filter match a (valid) topic name?

    The naive reference the indexes are tested against.
    """
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        # v5 [MQTT-4.7.2-1], v311 [MQTT-4.7.2-1]
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            # '#' matches the parent and any number of levels below it.
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


# --------------------------------------------------------------------------
# Subscriptions: filter -> subscribers
# --------------------------------------------------------------------------


class _FilterNode(Generic[K, V]):
    """One level of a filter; the node for filter ``f`` exists while some key
    subscribes to ``f`` or to a filter below it."""

    __slots__ = ("_entries", "children", "filter", "hash", "level", "parent", "plus", "subs")

    def __init__(self, parent: _FilterNode[K, V] | None, level: str, topic_filter: str) -> None:
        self.parent = parent
        self.level = level
        self.filter = topic_filter
        #: Literal children by level; '+' and '#' are kept apart so the walk
        #: needs no dictionary lookups for them.
        self.children: dict[str, _FilterNode[K, V]] = {}
        self.plus: _FilterNode[K, V] | None = None
        self.hash: _FilterNode[K, V] | None = None
        self.subs: dict[K, V] = {}
        # (filter, key, value) triples, rebuilt lazily after a change, so a
        # match is one list.extend per matching node.
        self._entries: list[tuple[str, K, V]] | None = None

    def entries(self) -> list[tuple[str, K, V]]:
        e = self._entries
        if e is None:
            f = self.filter
            e = self._entries = [(f, k, v) for k, v in self.subs.items()]
        return e

    def is_empty(self) -> bool:
        return not self.subs and not self.children and self.plus is None and self.hash is None


#: Topics whose match() result a TopicTrie keeps (each a short list).
MATCH_CACHE_SIZE = 4096


class TopicTrie(Generic[K, V]):
    """Subscriptions indexed by filter; ``match(topic)`` finds every subscriber.

    A key (a client id, or e.g. ``("$share", group)`` for a share group) has at
    most one value per filter; subscribing again replaces it
    (v5 [MQTT-3.8.4-3], v311 [MQTT-3.8.4-3]).
    """

    __slots__ = ("_by_key", "_count", "_matched", "_root")

    def __init__(self) -> None:
        self._root: _FilterNode[K, V] = _FilterNode(None, "", "")
        # Per key: filter -> node, so remove_key and filters_of never walk the trie.
        self._by_key: dict[K, dict[str, _FilterNode[K, V]]] = {}
        self._count = 0
        #: match() results by topic, emptied by every change to the trie:
        #: devices publish on the same few topics over and over, and
        #: subscriptions change far less often than messages arrive.
        self._matched: dict[str, list[tuple[str, K, V]]] = {}

    def __len__(self) -> int:
        return self._count

    def subscribe(self, topic_filter: str, key: K, value: V) -> bool:
        """Add or replace ``key``'s subscription; True if it is new."""
        node = self._root
        for level in topic_filter.split("/"):
            if level == "+":
                nxt = node.plus
                if nxt is None:
                    nxt = node.plus = _FilterNode(node, level, "")
            elif level == "#":
                nxt = node.hash
                if nxt is None:
                    nxt = node.hash = _FilterNode(node, level, "")
            else:
                nxt = node.children.get(level)
                if nxt is None:
                    nxt = node.children[level] = _FilterNode(node, level, "")
            node = nxt
        node.filter = topic_filter
        new = key not in node.subs
        node.subs[key] = value
        node._entries = None
        self._matched.clear()
        if new:
            self._count += 1
            self._by_key.setdefault(key, {})[topic_filter] = node
        return new

    def unsubscribe(self, topic_filter: str, key: K) -> bool:
        """Remove ``key``'s subscription to ``topic_filter``; True if it existed."""
        filters = self._by_key.get(key)
        if filters is None:
            return False
        node = filters.pop(topic_filter, None)
        if node is None:
            return False
        if not filters:
            del self._by_key[key]
        self._drop(node, key)
        return True

    def remove_key(self, key: K) -> int:
        """Drop every subscription of ``key``; returns how many there were."""
        filters = self._by_key.pop(key, None)
        if not filters:
            return 0
        for node in filters.values():
            self._drop(node, key)
        return len(filters)

    def filters_of(self, key: K) -> dict[str, V]:
        """``key``'s subscriptions, filter -> value."""
        filters = self._by_key.get(key)
        if not filters:
            return {}
        return {f: node.subs[key] for f, node in filters.items()}

    def _drop(self, node: _FilterNode[K, V], key: K) -> None:
        del node.subs[key]
        node._entries = None
        self._matched.clear()
        self._count -= 1
        # Prune empty nodes up to the root so a trie that saw many short-lived
        # filters does not keep their skeleton.
        while node.is_empty() and node.parent is not None:
            parent = node.parent
            if node.level == "+":
                parent.plus = None
            elif node.level == "#":
                parent.hash = None
            else:
                del parent.children[node.level]
            node = parent

    def match(self, topic: str) -> list[tuple[str, K, V]]:
        """Every ``(filter, key, value)`` whose filter matches ``topic``.

        One entry per (filter, key); a key subscribed through several matching
        filters appears once per filter (merging them is the router's policy).
        The list is shared with later calls: do not modify it.
        """
        matched = self._matched.get(topic)
        if matched is None:
            matched = self._match(topic)
            if len(self._matched) >= MATCH_CACHE_SIZE:
                self._matched.clear()  # bounded; refilled by the live topics
            self._matched[topic] = matched
        return matched

    def _match(self, topic: str) -> list[tuple[str, K, V]]:
        out: list[tuple[str, K, V]] = []
        levels = topic.split("/")
        root = self._root
        # v5 [MQTT-4.7.2-1], v311 [MQTT-4.7.2-1]: at the first level of a
        # '$' topic only the literal child is followed.
        if topic[:1] == "$":
            first = root.children.get(levels[0])
            if first is None:
                return out
            nodes = [first]
            rest = levels[1:]
        else:
            nodes = [root]
            rest = levels
        for level in rest:
            nxt: list[_FilterNode[K, V]] = []
            for node in nodes:
                h = node.hash
                if h is not None:
                    out.extend(h.entries())
                c = node.children.get(level)
                if c is not None:
                    nxt.append(c)
                p = node.plus
                if p is not None:
                    nxt.append(p)
            if not nxt:
                return out
            nodes = nxt
        for node in nodes:
            if node.subs:
                out.extend(node.entries())
            h = node.hash
            if h is not None:
                # 'a/#' matches 'a' (the parent level).
                out.extend(h.entries())
        return out


# --------------------------------------------------------------------------
# Retained messages: topic -> message, matched by a filter
# --------------------------------------------------------------------------


class _TopicNode(Generic[V]):
    __slots__ = ("children", "entry", "level", "parent")

    def __init__(self, parent: _TopicNode[V] | None, level: str) -> None:
        self.parent = parent
        self.level = level
        self.children: dict[str, _TopicNode[V]] = {}
        # (topic, value) while a message is retained here: appended as is to
        # match results, no allocation per match.
        self.entry: tuple[str, V] | None = None


class RetainedIndex(Generic[V]):
    """Retained messages by topic; ``match(filter)`` walks only the branches
    the filter can reach (``+`` fans out over one level, ``#`` takes a subtree)."""

    __slots__ = ("_nodes", "_root")

    def __init__(self) -> None:
        self._root: _TopicNode[V] = _TopicNode(None, "")
        self._nodes: dict[str, _TopicNode[V]] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def set(self, topic: str, value: V) -> None:
        """Store (or replace) the retained value of a (valid) topic name."""
        node = self._nodes.get(topic)
        if node is None:
            node = self._root
            for level in topic.split("/"):
                nxt = node.children.get(level)
                if nxt is None:
                    nxt = node.children[level] = _TopicNode(node, level)
                node = nxt
            self._nodes[topic] = node
        node.entry = (topic, value)

    def get(self, topic: str) -> V | None:
        node = self._nodes.get(topic)
        if node is None or node.entry is None:
            return None
        return node.entry[1]

    def delete(self, topic: str) -> bool:
        """Forget a topic's retained value; True if there was one."""
        node = self._nodes.pop(topic, None)
        if node is None:
            return False
        node.entry = None
        while node.entry is None and not node.children and node.parent is not None:
            del node.parent.children[node.level]
            node = node.parent
        return True

    def match(self, topic_filter: str) -> list[tuple[str, V]]:
        """Every stored ``(topic, value)`` the (valid, non-shared) filter matches."""
        out: list[tuple[str, V]] = []
        nodes = [self._root]
        first = True
        for level in topic_filter.split("/"):
            if level == "#":
                for node in nodes:
                    if node.entry is not None:
                        # 'a/#' matches 'a' (the root, at the first level, is no topic).
                        out.append(node.entry)
                    _collect_below(node, out, skip_dollar=first)
                return out
            nxt: list[_TopicNode[V]] = []
            if level == "+":
                for node in nodes:
                    if first:
                        # v5 [MQTT-4.7.2-1], v311 [MQTT-4.7.2-1]
                        nxt.extend(c for name, c in node.children.items() if name[:1] != "$")
                    else:
                        nxt.extend(node.children.values())
            else:
                for node in nodes:
                    c = node.children.get(level)
                    if c is not None:
                        nxt.append(c)
            if not nxt:
                return out
            nodes = nxt
            first = False
        for node in nodes:
            if node.entry is not None:
                out.append(node.entry)
        return out


def _collect_below(node: _TopicNode[V], out: list[tuple[str, V]], *, skip_dollar: bool) -> None:
    """Append every entry strictly below ``node`` (iteratively: topics may be deep)."""
    if skip_dollar:
        # v5 [MQTT-4.7.2-1], v311 [MQTT-4.7.2-1]: '#' as the first level.
        stack = [c for name, c in node.children.items() if name[:1] != "$"]
    else:
        stack = list(node.children.values())
    while stack:
        n = stack.pop()
        if n.entry is not None:
            out.append(n.entry)
        if n.children:
            stack.extend(n.children.values())
