"""The ACL rules: defaults isolate devices; containment and overlap are exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttgate.acl import (
    DEFAULT_PUBLISH,
    DEFAULT_SUBSCRIBE,
    AclPolicy,
    contains,
    overlaps,
    parse_acl_setting,
    parse_rules,
)
from mqttgate.auth import Identity
from mqttgate.protocol.topics import matches

ME = Identity(device_id="0123456789abcdef01234567", mqtt_user="dev_me", device_type="meter")


def default_acl(identity: Identity = ME) -> object:
    return AclPolicy.from_settings(DEFAULT_PUBLISH, DEFAULT_SUBSCRIBE).compile(identity)


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("devices/dev_me/telemetry", True),
        ("devices/dev_me", True),
        ("telemetry/anything", True),
        ("a", True),
        ("devices/dev_other/telemetry", False),
        ("devices/dev_other", False),
        ("devices", False),
        ("$SYS/broker/load", False),
        ("$share/x", False),
    ],
)
def test_default_publish(topic: str, allowed: bool) -> None:
    acl = default_acl()
    assert acl.may_publish(topic) is allowed  # type: ignore[attr-defined]
    assert acl.may_publish(topic) is allowed  # type: ignore[attr-defined]  # memoised answer


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("devices/dev_me/#", True),
        ("devices/dev_me/cmd", True),
        ("devices/dev_me/+/x", True),
        ("devices/dev_me", True),
        ("$share/g/devices/dev_me/#", True),
        ("#", False),
        ("+/dev_me/#", False),
        ("devices/+/cmd", False),
        ("devices/#", False),
        ("devices/dev_other/#", False),
        ("$SYS/#", False),
        ("$share/g/#", False),
        ("telemetry/x", False),
    ],
)
def test_default_subscribe(topic_filter: str, allowed: bool) -> None:
    assert default_acl().may_subscribe(topic_filter) is allowed  # type: ignore[attr-defined]


def test_placeholders_and_unsafe_values() -> None:
    policy = AclPolicy.from_settings(
        "allow:types/{type}/#, allow:ids/{device_id}", "allow:types/{type}/#"
    )
    acl = policy.compile(ME)
    assert acl.may_publish("types/meter/x") and acl.may_publish(f"ids/{ME.device_id}")
    assert not acl.may_publish("types/other/x")
    # A type with a wildcard or a level separator would widen the rule: dropped.
    for bad in ("#", "a/b", "+", "x\x00"):
        sneaky = policy.compile(Identity(device_id="d", mqtt_user="u", device_type=bad))
        assert not sneaky.may_publish("types/anything/x")
        assert not sneaky.may_subscribe("types/#")


def test_deny_rule_refuses_overlapping_filters() -> None:
    acl = AclPolicy.from_settings("allow:#", "deny:secret/#, allow:#").compile(ME)
    assert acl.may_subscribe("public/x")
    assert not acl.may_subscribe("+/x")  # could receive secret/x
    assert not acl.may_subscribe("#")
    assert not acl.may_publish("$SYS/x")  # '#' never matches $ topics


@pytest.mark.parametrize(
    "text",
    ["allow", "permit:a/#", "allow:", "allow:a/#/b", "allow:a+", "deny:{user}/x", "allow:a#"],
)
def test_bad_rules_are_refused_at_load(text: str) -> None:
    with pytest.raises(ValueError):
        parse_acl_setting(text)


def test_rule_syntax() -> None:
    rules = parse_rules(" allow:a/{mqtt_user}/# ,DENY:b/+ ,, ")
    assert [(r.allow, r.pattern) for r in rules] == [(True, "a/{mqtt_user}/#"), (False, "b/+")]


def test_config_rejects_bad_acl_with_the_variable_name() -> None:
    from mqttgate.config import ConfigError, load

    with pytest.raises(ConfigError, match="MQTTGATE_ACL_SUBSCRIBE"):
        load({}, {"MQTTGATE_ACL_SUBSCRIBE": "allow:#/x"})


LEVEL = st.sampled_from(["a", "b", "$s", "+", "#"])
TOPIC_LEVEL = st.sampled_from(["a", "b", "$s", "c"])


def valid_filter(levels: list[str]) -> str:
    if "#" in levels:
        levels = levels[: levels.index("#") + 1]
    return "/".join(levels)


filters = st.lists(LEVEL, min_size=1, max_size=4).map(valid_filter)
topics = st.lists(TOPIC_LEVEL, min_size=1, max_size=5).map("/".join)


@settings(max_examples=200)
@given(outer=filters, inner=filters, topic=topics)
def test_contains_and_overlaps_agree_with_matching(outer: str, inner: str, topic: str) -> None:
    if contains(outer, inner) and matches(inner, topic):
        assert matches(outer, topic)
    if matches(outer, topic) and matches(inner, topic):
        assert overlaps(outer, inner)
    assert overlaps(outer, inner) == overlaps(inner, outer)
    assert contains(outer, outer) or outer.startswith("$")  # every filter contains itself
