"""Topic access control for authenticated devices: deny by default.

Theory of operation
-------------------
An ACL is two ordered rule lists, one for PUBLISH topics and one for SUBSCRIBE
filters, written in the settings ``MQTTGATE_ACL_PUBLISH`` and
``MQTTGATE_ACL_SUBSCRIBE`` as comma-separated rules::

    allow:devices/{mqtt_user}/#, deny:devices/#, allow:#

Each rule is ``allow:`` or ``deny:`` followed by an MQTT topic filter, which
may use ``+``, ``#`` and the placeholders ``{mqtt_user}``, ``{device_id}`` and
``{type}``. The first rule that applies decides; when none applies the answer
is *deny*.

* PUBLISH to topic ``t``: a rule applies when its filter matches ``t`` (the
  ordinary MQTT matching, so ``#`` and ``+`` never match a ``$`` topic,
  v5/v311 [MQTT-4.7.2-1]).
* SUBSCRIBE to filter ``f``: an ``allow`` rule applies only when *every* topic
  ``f`` can match is matched by the rule (``f`` is contained in it), and a
  ``deny`` rule applies when *some* topic matched by ``f`` is matched by the
  rule (they overlap). So ``devices/+/x`` is not inside ``devices/abc/#``,
  and ``#`` is refused unless some rule allows everything.

Placeholders are filled in once per connection. A value that contains ``/``,
``+``, ``#`` or NUL would widen the rule, so such a rule is dropped for that
device (it applies to nothing). Device ids and user names are generated and
never contain them; ``type`` is chosen by the operator.

The defaults isolate devices from each other (the original let any device
subscribe to ``#``): publish anywhere except ``$`` topics and other devices'
``devices/{other}/...`` namespaces; subscribe only within
``devices/{mqtt_user}/#``.

Everything here is pure and synchronous: ``may_publish`` runs on every PUBLISH.
"""

from __future__ import annotations

import attrs

from mqttgate.auth import Identity
from mqttgate.protocol.reasons import MQTTError
from mqttgate.protocol.topics import matches, parse_shared

DEFAULT_PUBLISH = "allow:devices/{mqtt_user}/#, deny:devices/#, allow:#"
DEFAULT_SUBSCRIBE = "allow:devices/{mqtt_user}/#"

PLACEHOLDERS = ("{mqtt_user}", "{device_id}", "{type}")
_UNSAFE = ("/", "+", "#", "\x00")


@attrs.frozen
class Rule:
    allow: bool
    #: The filter as written, placeholders included.
    pattern: str


def parse_rules(text: str) -> tuple[Rule, ...]:
    """Parse ``allow:FILTER, deny:FILTER, ...``; raises ValueError with the reason."""
    rules = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        verdict, sep, pattern = item.partition(":")
        verdict = verdict.strip().lower()
        pattern = pattern.strip()
        if not sep or verdict not in ("allow", "deny"):
            raise ValueError(f"rule {item!r} must start with allow: or deny:")
        _check_pattern(pattern, item)
        rules.append(Rule(allow=verdict == "allow", pattern=pattern))
    return tuple(rules)


def _check_pattern(pattern: str, item: str) -> None:
    if not pattern:
        raise ValueError(f"rule {item!r} has an empty topic filter")
    sample = pattern
    for name in PLACEHOLDERS:
        sample = sample.replace(name, "x")
    if "{" in sample or "}" in sample:
        raise ValueError(
            f"rule {item!r}: unknown placeholder (use {', '.join(PLACEHOLDERS)})"
        )
    levels = sample.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"rule {item!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"rule {item!r}: '+' must be a whole level")


def parse_acl_setting(text: str) -> str:
    """Config parser: validate the rule list and keep the text as given."""
    parse_rules(text)
    return text


def _fill(pattern: str, identity: Identity) -> str | None:
    values = {
        "{mqtt_user}": identity.mqtt_user or "",
        "{device_id}": identity.device_id or "",
        "{type}": identity.device_type or "",
    }
    out = pattern
    for name, value in values.items():
        if name in out:
            if not value or any(ch in value for ch in _UNSAFE):
                return None
            out = out.replace(name, value)
    return out


def _first_level_is_wildcard(levels: list[str]) -> bool:
    return levels[0] in ("+", "#")


def contains(outer: str, inner: str) -> bool:
    """Does filter ``outer`` match every topic that filter ``inner`` matches?"""
    o_levels, i_levels = outer.split("/"), inner.split("/")
    if _first_level_is_wildcard(o_levels) and i_levels[0].startswith("$"):
        return False  # v5/v311 [MQTT-4.7.2-1]: wildcards do not reach $ topics
    for index, o in enumerate(o_levels):
        if o == "#":
            return True
        if index >= len(i_levels):
            return False
        i = i_levels[index]
        if i == "#":
            return False
        if o == "+":
            continue
        if i != o:
            return False
    return len(o_levels) == len(i_levels)


def overlaps(a: str, b: str) -> bool:
    """Is there a topic that both filters match?"""
    a_levels, b_levels = a.split("/"), b.split("/")
    if (_first_level_is_wildcard(a_levels) and b_levels[0].startswith("$")) or (
        _first_level_is_wildcard(b_levels) and a_levels[0].startswith("$")
    ):
        return False
    for index in range(max(len(a_levels), len(b_levels))):
        x = a_levels[index] if index < len(a_levels) else None
        y = b_levels[index] if index < len(b_levels) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x == "+" or y == "+":
            continue
        if x != y:
            return False
    return True


class CompiledAcl:
    """One connection's ACL, placeholders filled in. Implements ``mqttgate.auth.Acl``."""

    __slots__ = ("_publish", "_publish_answers", "_subscribe")

    #: A device publishes to few distinct topics; remember that many answers.
    ANSWERS_KEPT = 256

    def __init__(
        self, publish: tuple[tuple[bool, str], ...], subscribe: tuple[tuple[bool, str], ...]
    ) -> None:
        self._publish = publish
        self._subscribe = subscribe
        self._publish_answers: dict[str, bool] = {}

    def may_publish(self, topic: str) -> bool:
        answer = self._publish_answers.get(topic)
        if answer is None:
            answer = False
            for allow, topic_filter in self._publish:
                if matches(topic_filter, topic):
                    answer = allow
                    break
            if len(self._publish_answers) < self.ANSWERS_KEPT:
                self._publish_answers[topic] = answer
        return answer

    def may_subscribe(self, topic_filter: str) -> bool:
        try:
            shared = parse_shared(topic_filter)
        except MQTTError:
            return False
        if shared is not None:
            # v5 section 4.8.2: a shared subscription receives what its inner
            # filter matches, so that is what the rules judge.
            topic_filter = shared.topic_filter
        for allow, rule_filter in self._subscribe:
            if allow:
                if contains(rule_filter, topic_filter):
                    return True
            elif overlaps(rule_filter, topic_filter):
                return False
        return False


@attrs.frozen
class AclPolicy:
    """The configured rules; ``compile(identity)`` makes one connection's ACL."""

    publish: tuple[Rule, ...]
    subscribe: tuple[Rule, ...]

    @classmethod
    def from_settings(cls, publish: str, subscribe: str) -> AclPolicy:
        return cls(parse_rules(publish), parse_rules(subscribe))

    def compile(self, identity: Identity) -> CompiledAcl:
        def fill(rules: tuple[Rule, ...]) -> tuple[tuple[bool, str], ...]:
            out = []
            for rule in rules:
                filled = _fill(rule.pattern, identity)
                if filled is not None:
                    out.append((rule.allow, filled))
            return tuple(out)

        return CompiledAcl(fill(self.publish), fill(self.subscribe))
