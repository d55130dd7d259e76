"""Topic validation, matching, the subscription trie and the retained index.

Table tests carry the spec clause; the indexes are checked against the naive
``matches`` (itself checked against paho-mqtt's independent matcher) with
hypothesis, on a tiny level alphabet so that collisions are the norm.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)
from paho.mqtt.client import topic_matches_sub

from mqttgate.protocol.reasons import MQTTError, ReasonCode
from mqttgate.protocol.topics import (
    RetainedIndex,
    SharedFilter,
    TopicTrie,
    matches,
    parse_shared,
    validate_topic_filter,
    validate_topic_name,
)

# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

VALID_NAMES = [
    ("sport/tennis/player1", "v5 4.7.1 example"),
    ("/finance", "v5 4.7.1.3: leading '/' makes an empty first level"),
    ("finance/", "trailing empty level"),
    ("/", "two empty levels, v5 [MQTT-4.7.3-1] only needs one character"),
    ("$SYS/monitor/Clients", "v5 4.7.2 example"),
    ("a//b", "empty middle level"),
    ("a b/ü/€", "spaces and non-ASCII are legal in MQTT"),
]


@pytest.mark.parametrize(("name", "why"), VALID_NAMES)
def test_valid_topic_names(name: str, why: str) -> None:
    validate_topic_name(name)


INVALID_NAMES = [
    ("", "v5 [MQTT-4.7.3-1]"),
    ("sport/+", "v5 [MQTT-3.3.2-2] v311 [MQTT-3.3.2-2]"),
    ("sport/#", "v5 [MQTT-3.3.2-2]"),
    ("a+b", "v5 [MQTT-3.3.2-2]: any '+' at all"),
    ("a#", "v5 [MQTT-3.3.2-2]"),
    ("a\x00b", "v5 [MQTT-4.7.3-2]"),
]


@pytest.mark.parametrize(("name", "spec"), INVALID_NAMES)
def test_invalid_topic_names(name: str, spec: str) -> None:
    with pytest.raises(MQTTError) as info:
        validate_topic_name(name)
    assert info.value.reason is ReasonCode.TOPIC_NAME_INVALID


def test_topic_name_length_is_in_utf8_bytes() -> None:
    # v5 [MQTT-4.7.3-3]: the limit is on the encoded length.
    validate_topic_name("a" * 10, max_length=10)
    validate_topic_name("€" * 3, max_length=9)  # 3 bytes each
    with pytest.raises(MQTTError) as info:
        validate_topic_name("€" * 4, max_length=9)
    assert info.value.reason is ReasonCode.TOPIC_NAME_INVALID
    with pytest.raises(MQTTError):
        validate_topic_name("a" * 11, max_length=10)
    validate_topic_name("a" * 65535)
    with pytest.raises(MQTTError):
        validate_topic_name("a" * 65536)


def test_topic_levels_limit() -> None:
    validate_topic_name("a/b/c", max_levels=3)
    with pytest.raises(MQTTError) as info:
        validate_topic_name("a/b/c/d", max_levels=3)
    assert info.value.reason is ReasonCode.TOPIC_NAME_INVALID
    with pytest.raises(MQTTError) as info:
        validate_topic_filter("a/b/+/#", max_levels=3)
    assert info.value.reason is ReasonCode.TOPIC_FILTER_INVALID
    # For a shared filter the limit applies to the inner filter.
    validate_topic_filter("$share/g/a/b/c", max_levels=3)
    with pytest.raises(MQTTError):
        validate_topic_filter("$share/g/a/b/c/d", max_levels=3)


VALID_FILTERS = [
    ("sport/tennis/player1/#", "v5 4.7.1.2 example"),
    ("sport/#", "v5 4.7.1.2"),
    ("#", "v5 4.7.1.2: '#' alone"),
    ("sport/tennis/#", "v5 4.7.1.2"),
    ("+", "v5 4.7.1.3"),
    ("+/tennis/#", "v5 4.7.1.3"),
    ("sport/+/player1", "v5 4.7.1.3"),
    ("sport/+", "v5 4.7.1.3"),
    ("+/+", "v5 4.7.1.3"),
    ("/+", "v5 4.7.1.3"),
    ("/finance", "v5 4.7.1.3"),
    ("$SYS/#", "v5 4.7.2"),
    ("$SYS/monitor/+", "v5 4.7.2"),
    ("+//#", "empty level between wildcards"),
    ("$share/group/a/+", "v5 4.8.2 shared"),
    ("$share/g/#", "v5 4.8.2 shared"),
    ("$share", "not a shared filter: a literal level"),
    ("$shared/x", "not a shared filter"),
]


@pytest.mark.parametrize(("topic_filter", "why"), VALID_FILTERS)
def test_valid_topic_filters(topic_filter: str, why: str) -> None:
    validate_topic_filter(topic_filter)


INVALID_FILTERS = [
    ("", "v5 [MQTT-4.7.3-1]"),
    ("sport/tennis#", "v5 [MQTT-4.7.1-1] v311 [MQTT-4.7.1-2]: '#' not alone"),
    ("sport/tennis/#/ranking", "v5 [MQTT-4.7.1-1]: '#' not last"),
    ("#/a", "v5 [MQTT-4.7.1-1]"),
    ("##", "v5 [MQTT-4.7.1-1]"),
    ("sport+", "v5 [MQTT-4.7.1-2] v311 [MQTT-4.7.1-3]: '+' not alone"),
    ("sport/+tennis", "v5 [MQTT-4.7.1-2]"),
    ("++", "v5 [MQTT-4.7.1-2]"),
    ("a\x00", "v5 [MQTT-4.7.3-2]"),
    ("$share/grp", "v5 [MQTT-4.8.2-2]: no '/' and filter after ShareName"),
    ("$share/grp/", "v5 [MQTT-4.8.2-2]: empty filter after ShareName"),
    ("$share//a", "v5 [MQTT-4.8.2-1]: empty ShareName"),
    ("$share/", "v5 [MQTT-4.8.2-1]"),
    ("$share/g+/a", "v5 [MQTT-4.8.2-2]: '+' in ShareName"),
    ("$share/#/a", "v5 [MQTT-4.8.2-2]: '#' in ShareName"),
    ("$share/g/a#", "v5 [MQTT-4.7.1-1] in the inner filter"),
]


@pytest.mark.parametrize(("topic_filter", "spec"), INVALID_FILTERS)
def test_invalid_topic_filters(topic_filter: str, spec: str) -> None:
    with pytest.raises(MQTTError) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason is ReasonCode.TOPIC_FILTER_INVALID


def test_filter_length_limit() -> None:
    validate_topic_filter("a/" * 10 + "#", max_length=22)
    with pytest.raises(MQTTError) as info:
        validate_topic_filter("a/" * 11 + "#", max_length=22)
    assert info.value.reason is ReasonCode.TOPIC_FILTER_INVALID


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/group/a/+", SharedFilter(group="group", topic_filter="a/+")),
        ("$share/g/#", SharedFilter(group="g", topic_filter="#")),
        ("$share/g//", SharedFilter(group="g", topic_filter="/")),
        ("$share/g/$SYS/x", SharedFilter(group="g", topic_filter="$SYS/x")),
        ("a/b", None),
        ("$share", None),
        ("$SHARE/g/a", None),
    ],
)
def test_parse_shared(topic_filter: str, expected: SharedFilter | None) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize("topic_filter", ["$share/grp", "$share//a", "$share/g/+x", "$share/a+/b"])
def test_parse_shared_refuses_malformed(topic_filter: str) -> None:
    with pytest.raises(MQTTError) as info:
        parse_shared(topic_filter)
    assert info.value.reason is ReasonCode.TOPIC_FILTER_INVALID


# --------------------------------------------------------------------------
# Matching: the spec's examples (v5 and v311 section 4.7, same text)
# --------------------------------------------------------------------------

MATCH_TABLE = [
    # (filter, topic, expected, where)
    ("sport/tennis/player1/#", "sport/tennis/player1", True, "4.7.1.2"),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True, "4.7.1.2"),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True, "4.7.1.2"),
    ("sport/#", "sport", True, "4.7.1.2: '#' includes the parent level"),
    ("a/#", "a", True, "4.7.1.2"),
    ("a/#", "a/", True, "an empty child level"),
    ("a/#", "ab", False, "levels, not prefixes"),
    ("#", "a/b/c", True, "4.7.1.2"),
    ("#", "/", True, "4.7.1.2"),
    ("sport/tennis/+", "sport/tennis/player1", True, "4.7.1.3"),
    ("sport/tennis/+", "sport/tennis/player2", True, "4.7.1.3"),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False, "4.7.1.3"),
    ("sport/+", "sport", False, "4.7.1.3"),
    ("sport/+", "sport/", True, "4.7.1.3"),
    ("+/+", "/finance", True, "4.7.1.3"),
    ("/+", "/finance", True, "4.7.1.3"),
    ("+", "/finance", False, "4.7.1.3"),
    ("/finance", "/finance", True, "4.7.1.3"),
    ("finance", "/finance", False, "4.7.3: '/finance' and 'finance' differ"),
    ("#", "$SYS/x", False, "[MQTT-4.7.2-1]"),
    ("#", "$SYS", False, "[MQTT-4.7.2-1]"),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False, "4.7.2 [MQTT-4.7.2-1]"),
    ("$SYS/#", "$SYS/monitor/Clients", True, "4.7.2"),
    ("$SYS/#", "$SYS", True, "4.7.2 with the parent rule"),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True, "4.7.2"),
    ("+/x", "a$/x", True, "only a leading '$' is special"),
    ("a/+", "a/$x", True, "'$' at a later level is ordinary"),
    ("a/#", "a/$x", True, "'$' at a later level is ordinary"),
    ("ACCOUNTS", "Accounts", False, "4.7.3: case-sensitive"),
    ("a/+/c", "a//c", True, "'+' matches an empty level"),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected", "where"), MATCH_TABLE)
def test_matches_table(topic_filter: str, topic: str, expected: bool, where: str) -> None:
    assert matches(topic_filter, topic) is expected
    # paho-mqtt's matcher is an independent implementation of the same rules.
    assert topic_matches_sub(topic_filter, topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic", "expected", "where"), MATCH_TABLE)
def test_trie_and_retained_table(topic_filter: str, topic: str, expected: bool, where: str) -> None:
    trie: TopicTrie[str, int] = TopicTrie()
    trie.subscribe(topic_filter, "c", 1)
    assert trie.match(topic) == ([(topic_filter, "c", 1)] if expected else [])
    retained: RetainedIndex[int] = RetainedIndex()
    retained.set(topic, 7)
    assert retained.match(topic_filter) == ([(topic, 7)] if expected else [])


# --------------------------------------------------------------------------
# Generators: a tiny alphabet so that filters and topics collide
# --------------------------------------------------------------------------

TOPIC_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$"])
topics = st.lists(TOPIC_LEVELS, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "", "$SYS", "+"]), max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    # [""] would be the empty filter, which is invalid (v5 [MQTT-4.7.3-1]).
    return "/".join(levels) or "#"


@settings(max_examples=200)
@given(topic_filter=filters(), topic=topics)
def test_matches_agrees_with_paho(topic_filter: str, topic: str) -> None:
    validate_topic_filter(topic_filter)
    validate_topic_name(topic)
    assert matches(topic_filter, topic) is topic_matches_sub(topic_filter, topic)


@settings(max_examples=200)
@given(subs=st.lists(st.tuples(filters(), st.sampled_from("xyz"), st.integers(0, 2))), topic=topics)
def test_trie_match_equals_naive(subs: list[tuple[str, str, int]], topic: str) -> None:
    trie: TopicTrie[str, int] = TopicTrie()
    model: dict[tuple[str, str], int] = {}
    for topic_filter, key, value in subs:
        assert trie.subscribe(topic_filter, key, value) is ((topic_filter, key) not in model)
        model[(topic_filter, key)] = value
    got = trie.match(topic)
    expected = sorted((f, k, v) for (f, k), v in model.items() if matches(f, topic))
    assert sorted(got) == expected
    assert len(got) == len(expected)  # one entry per (filter, key)
    assert len(trie) == len(model)


@settings(max_examples=200)
@given(
    stored=st.lists(st.tuples(topics, st.integers(0, 9))),
    deleted=st.lists(topics, max_size=3),
    topic_filter=filters(),
)
def test_retained_match_equals_naive(
    stored: list[tuple[str, int]], deleted: list[str], topic_filter: str
) -> None:
    index: RetainedIndex[int] = RetainedIndex()
    model: dict[str, int] = {}
    for topic, value in stored:
        index.set(topic, value)
        model[topic] = value
    for topic in deleted:
        assert index.delete(topic) is (model.pop(topic, None) is not None)
    assert len(index) == len(model)
    for topic, value in model.items():
        assert index.get(topic) == value
    expected = sorted((t, v) for t, v in model.items() if matches(topic_filter, t))
    assert sorted(index.match(topic_filter)) == expected


def test_retained_get_set_delete() -> None:
    index: RetainedIndex[str] = RetainedIndex()
    assert index.get("a/b") is None
    index.set("a/b", "1")
    index.set("a/b", "2")
    assert len(index) == 1
    assert index.get("a/b") == "2"
    index.set("a", "p")
    assert sorted(index.match("a/#")) == [("a", "p"), ("a/b", "2")]
    assert index.delete("a/b") is True
    assert index.delete("a/b") is False
    assert index.get("a/b") is None
    assert index.match("a/#") == [("a", "p")]
    assert index.delete("a") is True
    assert len(index) == 0
    # Pruned: nothing left under the root.
    assert index._root.children == {}


def test_trie_replace_unsubscribe_remove_key() -> None:
    trie: TopicTrie[str, int] = TopicTrie()
    assert trie.subscribe("a/+", "c1", 0) is True
    assert trie.subscribe("a/+", "c1", 1) is False  # replaced, v5 [MQTT-3.8.4-3]
    assert trie.subscribe("a/#", "c1", 2) is True
    assert trie.subscribe("a/+", "c2", 0) is True
    assert len(trie) == 3
    assert sorted(trie.match("a/b")) == [("a/#", "c1", 2), ("a/+", "c1", 1), ("a/+", "c2", 0)]
    assert trie.filters_of("c1") == {"a/+": 1, "a/#": 2}
    assert trie.unsubscribe("a/+", "c1") is True
    assert trie.unsubscribe("a/+", "c1") is False
    assert trie.unsubscribe("nope", "c9") is False
    assert trie.remove_key("c1") == 1
    assert trie.remove_key("c1") == 0
    assert trie.filters_of("c1") == {}
    assert trie.match("a/b") == [("a/+", "c2", 0)]
    assert trie.remove_key("c2") == 1
    assert len(trie) == 0
    root = trie._root
    assert root.children == {} and root.plus is None and root.hash is None


def test_trie_shared_keys() -> None:
    # The router may key share groups as ("$share", group) next to client ids.
    trie: TopicTrie[tuple[str, str] | str, int] = TopicTrie()
    trie.subscribe("a/+", ("$share", "g1"), 1)
    trie.subscribe("a/+", "client", 0)
    assert sorted(trie.match("a/x"), key=repr) == sorted(
        [("a/+", ("$share", "g1"), 1), ("a/+", "client", 0)], key=repr
    )


# --------------------------------------------------------------------------
# Stateful: subscribe / unsubscribe / remove_key against a dict model
# --------------------------------------------------------------------------

PROBE_TOPICS = ["a", "a/b", "/a", "a/", "$SYS", "$SYS/a", "b/a/b", "/", "a//b"]


class TrieMachine(RuleBasedStateMachine):
    subscribed = Bundle("subscribed")

    def __init__(self) -> None:
        super().__init__()
        self.trie: TopicTrie[str, int] = TopicTrie()
        self.model: dict[tuple[str, str], int] = {}

    @rule(
        target=subscribed,
        topic_filter=filters(),
        key=st.sampled_from(["k1", "k2", "k3"]),
        value=st.integers(0, 2),
    )
    def subscribe(self, topic_filter: str, key: str, value: int) -> tuple[str, str]:
        new = self.trie.subscribe(topic_filter, key, value)
        assert new is ((topic_filter, key) not in self.model)
        self.model[(topic_filter, key)] = value
        return (topic_filter, key)

    @rule(sub=consumes(subscribed))
    def unsubscribe(self, sub: tuple[str, str]) -> None:
        existed = self.trie.unsubscribe(*sub)
        assert existed is (self.model.pop(sub, None) is not None)

    @rule(topic_filter=filters(), key=st.sampled_from(["k1", "k2", "k3"]))
    def unsubscribe_any(self, topic_filter: str, key: str) -> None:
        existed = self.trie.unsubscribe(topic_filter, key)
        assert existed is (self.model.pop((topic_filter, key), None) is not None)

    @rule(key=st.sampled_from(["k1", "k2", "k3"]))
    def remove_key(self, key: str) -> None:
        expected = [fk for fk in self.model if fk[1] == key]
        assert self.trie.remove_key(key) == len(expected)
        for fk in expected:
            del self.model[fk]

    @invariant()
    def same_subscriptions(self) -> None:
        assert len(self.trie) == len(self.model)
        for key in ("k1", "k2", "k3"):
            assert self.trie.filters_of(key) == {
                f: v for (f, k), v in self.model.items() if k == key
            }

    @invariant()
    def same_matches(self) -> None:
        for topic in PROBE_TOPICS:
            expected = sorted((f, k, v) for (f, k), v in self.model.items() if matches(f, topic))
            assert sorted(self.trie.match(topic)) == expected

    @invariant()
    def pruned_when_empty(self) -> None:
        if not self.model:
            root = self.trie._root
            assert root.children == {} and root.plus is None and root.hash is None


TrieMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
test_trie_state_machine = TrieMachine.TestCase
