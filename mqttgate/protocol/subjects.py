"""MQTT topic <-> NATS subject, exactly as nats-server's own MQTT support maps them.

Theory of operation
-------------------
nats-server (``server/mqtt.go``) converts a topic with
``mqttToNATSSubjectConversion`` (via ``mqttTopicToNATSPubSubject`` for PUBLISH
and ``mqttFilterToNATSSubject`` for SUBSCRIBE) and back with
``natsSubjectToMQTTTopic``. Its byte-by-byte rules are:

* ``/`` becomes ``/.`` when it is the first character or follows a ``/.``;
  ``./`` when it is the last character or is followed by ``/``; else ``.``;
* ``.`` becomes ``//``;
* a result ending in ``.`` gets a final ``/``;
* ``+`` and ``#`` become ``*`` and ``>`` in filters and are refused in topics;
* a space is refused.

Read per level, those rules say: **split the topic on ``/``, write each empty
level as the token ``/``, write ``.`` inside a level as ``//``, and join the
tokens with ``.``**. That is how this module computes it (string methods, no
per-character Python loop); ``tests/protocol/test_subjects.py`` keeps a
literal port of the Go loops and checks the two agree, and runs nats-server's
own table ``TestMQTTTopicAndSubjectConversion`` / ``TestMQTTFilterConversion``
from ``server/mqtt_test.go``.

Refused (``SubjectError``), where nats-server refuses only the space:

* ASCII whitespace (space, TAB, LF, VT, FF, CR): nats-server's
  ``IsValidSubject`` rejects ``"\\t\\n\\f\\r "`` and the NATS wire protocol
  (``PUB <subject> ...\\r\\n``) splits on them; VT is refused with them;
* NUL and DEL: control characters a subject must not carry (U+0000 is already
  illegal in MQTT strings, v5 [MQTT-1.5.4-2]);
* a level that is exactly ``*`` or ``>``: it would become a NATS wildcard
  token, which is not a valid publish subject (nats-server's
  ``IsValidLiteralSubject``); nats-server's MQTT passes it through unchanged;
* ``+`` / ``#`` in a topic name, and the empty topic (as nats-server does).

Other characters (``*`` or ``>`` inside a longer level, ``$``, any non-ASCII
character) are ordinary subject characters and pass unchanged.
"""

from __future__ import annotations

import functools
import re

from mqttgate.protocol.reasons import MQTTError
from mqttgate.protocol.topics import parse_shared, validate_topic_filter

__all__ = [
    "SubjectError",
    "device_subject",
    "filter_to_subjects",
    "subject_to_topic",
    "topic_to_subject",
    "validate_subject_token",
]


class SubjectError(ValueError):
    """A topic, filter or subject that has no counterpart on the other side."""


# Characters no subject may carry (see the module docstring), plus the MQTT
# wildcards for topic names. A character class is one fast C scan; the level
# regex (a level that is exactly a NATS wildcard) only runs when '*' or '>'
# occurs at all, as an alternation it is several times slower.
_BAD_TOPIC_CHARS = re.compile(r"[ \t\n\x0b\x0c\r\x00\x7f+#]")
_BAD_FILTER_CHARS = re.compile(r"[ \t\n\x0b\x0c\r\x00\x7f]")
_WILDCARD_LEVEL = re.compile(r"(?:^|/)[*>](?:/|$)")
_BAD_TOKEN = re.compile(r"[ \t\n\x0b\x0c\r\x00\x7f.*>]")


def _refuse(text: str, what: str, bad_chars: re.Pattern[str]) -> None:
    bad = bad_chars.search(text)
    if bad is None and ("*" in text or ">" in text):
        bad = _WILDCARD_LEVEL.search(text)
    if bad is not None:
        raise SubjectError(f"{what} {text!r} has no NATS subject: {bad.group()!r}")


def _level_to_token(level: str) -> str:
    # Per level form of mqttToNATSSubjectConversion: an empty level is the
    # token '/', a '.' is '//'.
    return level.replace(".", "//") if level else "/"


def topic_to_subject(topic: str) -> str:
    """The NATS subject nats-server would publish an MQTT topic name on.

    ``a/b`` -> ``a.b``, ``/a`` -> ``/.a``, ``a/`` -> ``a./``, ``a//b`` ->
    ``a./.b``, ``a.b`` -> ``a//b``. Raises :class:`SubjectError`.
    """
    if not topic:
        raise SubjectError("empty topic (nats-server: 'topic cannot be empty')")
    _refuse(topic, "topic", _BAD_TOPIC_CHARS)
    # Fast path, the common case: no '.', no empty level -> only '/' -> '.'.
    if "." not in topic and "//" not in topic and topic[0] != "/" and topic[-1] != "/":
        return topic.replace("/", ".")
    return ".".join([_level_to_token(level) for level in topic.split("/")])


def subject_to_topic(subject: str) -> str:
    """The MQTT topic name of a subject made by :func:`topic_to_subject`.

    The inverse of ``natsSubjectToMQTTTopic``; a subject that
    :func:`topic_to_subject` cannot produce (a wildcard, an empty token, a
    lone ``/`` inside a token...) raises :class:`SubjectError`, so
    ``topic_to_subject(subject_to_topic(s)) == s`` whenever it returns.
    """
    if not subject:
        raise SubjectError("empty subject")
    if "/" not in subject:
        topic = subject.replace(".", "/")
    else:
        topic = "/".join(
            ["" if token == "/" else token.replace("//", ".") for token in subject.split(".")]
        )
    try:
        back = topic_to_subject(topic)
    except SubjectError:
        back = None
    if back != subject:
        raise SubjectError(f"subject {subject!r} is not the image of an MQTT topic")
    return topic


def filter_to_subjects(topic_filter: str) -> tuple[str, ...]:
    """The NATS subjects a (non-shared) MQTT filter subscribes to, like nats-server.

    ``+`` -> ``*``, ``#`` -> ``>``; a filter ending in ``/#`` also needs its
    parent, because ``a/#`` matches ``a`` (v5 section 4.7.1.2) while ``a.>``
    does not match ``a``: ``a/#`` -> ``("a.>", "a")`` (nats-server's
    ``mqttNeedSubForLevelUp`` adds the same second subscription).

    The ``$`` rule (v5 [MQTT-4.7.2-1]) has no NATS equivalent: ``>`` and
    ``*.x`` also match subjects starting with ``$``.
    """
    try:
        validate_topic_filter(topic_filter)
        shared = parse_shared(topic_filter)
    except MQTTError as error:
        raise SubjectError(error.message) from None
    if shared is not None:
        # A share group is a NATS queue group, not part of the subject.
        raise SubjectError(
            f"shared filter {topic_filter!r}: convert {shared.topic_filter!r} and use a queue group"
        )
    _refuse(topic_filter, "filter", _BAD_FILTER_CHARS)
    subject = ".".join(
        [
            "*" if level == "+" else ">" if level == "#" else _level_to_token(level)
            for level in topic_filter.split("/")
        ]
    )
    # mqttNeedSubForLevelUp: more than one token and ending in ".>".
    if len(subject) >= 3 and subject.endswith(".>"):
        return (subject, subject[:-2])
    return (subject,)


def validate_subject_token(token: str, what: str = "subject token") -> None:
    """Check that ``token`` is one literal NATS token (no ``.``, wildcards,
    whitespace, NUL or DEL); raise :class:`SubjectError` otherwise."""
    if not token:
        raise SubjectError(f"empty {what}")
    bad = _BAD_TOKEN.search(token)
    if bad is not None:
        raise SubjectError(f"{what} {token!r} contains {bad.group()!r}")


def device_subject(prefix: str, device_id: str, topic: str) -> str:
    """``{prefix}.{device_id}.{topic as subject}``, the subject a device's
    message is forwarded on; consumers filter with ``{prefix}.{device_id}.>``.

    ``prefix`` may have several tokens (``org.mqtt``); ``device_id`` must be
    exactly one.
    """
    return _device_prefix(prefix, device_id) + topic_to_subject(topic)


@functools.lru_cache(maxsize=4096)
def _device_prefix(prefix: str, device_id: str) -> str:
    # Validated once per (prefix, device): device_subject runs per message.
    if not prefix:
        raise SubjectError("empty subject prefix")
    for token in prefix.split("."):
        validate_subject_token(token, "subject prefix token")
    validate_subject_token(device_id, "device id")
    return f"{prefix}.{device_id}."
