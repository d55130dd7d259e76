"""MQTT topic <-> NATS subject: nats-server's own tables, a literal port of its
Go loops as a second implementation, and round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttgate.protocol.subjects import (
    SubjectError,
    device_subject,
    filter_to_subjects,
    subject_to_topic,
    topic_to_subject,
)
from mqttgate.protocol.topics import validate_topic_name

# nats-server server/mqtt_test.go, TestMQTTTopicAndSubjectConversion:
# (MQTT topic, NATS subject), each checked both ways by nats-server too.
NATS_TOPIC_TABLE = [
    ("/", "/./"),
    ("//", "/././"),
    ("///", "/./././"),
    ("////", "/././././"),
    ("foo", "foo"),
    ("/foo", "/.foo"),
    ("//foo", "/./.foo"),
    ("///foo", "/././.foo"),
    ("///foo/", "/././.foo./"),
    ("///foo//", "/././.foo././"),
    ("///foo///", "/././.foo./././"),
    ("//.foo.//", "/././/foo//././"),
    ("foo/bar", "foo.bar"),
    ("/foo/bar", "/.foo.bar"),
    ("/foo/bar/", "/.foo.bar./"),
    ("foo/bar/baz", "foo.bar.baz"),
    ("/foo/bar/baz", "/.foo.bar.baz"),
    ("/foo/bar/baz/", "/.foo.bar.baz./"),
    ("bar/", "bar./"),
    ("bar//", "bar././"),
    ("bar///", "bar./././"),
    ("foo//bar", "foo./.bar"),
    ("foo///bar", "foo././.bar"),
    ("foo////bar", "foo./././.bar"),
    (".", "//"),
    ("..", "////"),
    ("...", "//////"),
    ("./", "//./"),
    (".//.", "//././/"),
    ("././.", "//.//.//"),
    ("././/.", "//.//././/"),
    (".foo", "//foo"),
    ("foo.", "foo//"),
    (".foo.", "//foo//"),
    ("foo../bar/", "foo////.bar./"),
    ("foo../bar/.", "foo////.bar.//"),
    ("/foo/", "/.foo./"),
    ("./foo/.", "//.foo.//"),
    ("foo.bar/baz", "foo//bar.baz"),
]

# The same test's error rows: wildcards in a topic name, and a space.
NATS_TOPIC_ERRORS = ["foo/+", "foo/#", "foo bar"]

# nats-server server/mqtt_test.go, TestMQTTFilterConversion: (filter, subject).
NATS_FILTER_TABLE = [
    ("+", "*"),
    ("/+", "/.*"),
    ("+/", "*./"),
    ("/+/", "/.*./"),
    ("foo/+", "foo.*"),
    ("foo/+/", "foo.*./"),
    ("foo/+/bar", "foo.*.bar"),
    ("foo/+/+", "foo.*.*"),
    ("foo/+/+/", "foo.*.*./"),
    ("foo/+/+/bar", "foo.*.*.bar"),
    ("foo//+", "foo./.*"),
    ("foo//+/", "foo./.*./"),
    ("foo//+//", "foo./.*././"),
    ("foo//+//bar", "foo./.*./.bar"),
    ("foo///+///bar", "foo././.*././.bar"),
    ("foo.bar///+///baz", "foo//bar././.*././.baz"),
    ("#", ">"),
    ("/#", "/.>"),
    ("/foo/#", "/.foo.>"),
    ("foo/#", "foo.>"),
    ("foo//#", "foo./.>"),
    ("foo///#", "foo././.>"),
    ("foo/bar/#", "foo.bar.>"),
    ("foo/bar.baz/#", "foo.bar//baz.>"),
]


# --------------------------------------------------------------------------
# A literal port of nats-server's loops (server/mqtt.go), kept here as the
# second implementation the per-level code in subjects.py is compared with.
# --------------------------------------------------------------------------


def go_mqtt_to_nats_subject_conversion(mt: str, wc_ok: bool) -> str:
    """mqttToNATSSubjectConversion(mt, wcOk), char by char (one char per slot,
    so ``res[-1]`` is Go's ``res[j-1]``)."""
    res: list[str] = []
    end = len(mt) - 1
    for i, ch in enumerate(mt):
        if ch == "/":
            if i == 0 or res[-1] == ".":
                res.extend("/.")
            elif i == end or mt[i + 1] == "/":
                res.extend("./")
            else:
                res.append(".")
        elif ch == " ":
            raise SubjectError("characters ' ' not supported")
        elif ch == ".":
            res.extend("//")
        elif ch in "+#":
            if not wc_ok:
                raise SubjectError("wildcards not allowed in publish's topic")
            res.append("*" if ch == "+" else ">")
        else:
            res.append(ch)
    if res and res[-1] == ".":
        res.append("/")
    return "".join(res)


def go_nats_subject_to_mqtt_topic(subject: str) -> str:
    """natsSubjectToMQTTTopic(subject), char by char."""
    topic: list[str] = []
    end = len(subject) - 1
    i = 0
    while i < len(subject):
        ch = subject[i]
        if ch == "/":
            if i < end and subject[i + 1] in "./":
                topic.append("/" if subject[i + 1] == "." else ".")
                i += 1
        elif ch == ".":
            topic.append("/")
        else:
            topic.append(ch)
        i += 1
    return "".join(topic)


def test_the_port_reproduces_the_nats_table() -> None:
    # Guards the port itself before it is used as an oracle.
    for topic, subject in NATS_TOPIC_TABLE:
        assert go_mqtt_to_nats_subject_conversion(topic, False) == subject
        assert go_nats_subject_to_mqtt_topic(subject) == topic
    for topic_filter, subject in NATS_FILTER_TABLE:
        assert go_mqtt_to_nats_subject_conversion(topic_filter, True) == subject


# --------------------------------------------------------------------------
# nats-server's tables
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "subject"), NATS_TOPIC_TABLE)
def test_nats_server_topic_table(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    assert subject_to_topic(subject) == topic


@pytest.mark.parametrize("topic", NATS_TOPIC_ERRORS)
def test_nats_server_topic_errors(topic: str) -> None:
    with pytest.raises(SubjectError):
        topic_to_subject(topic)


@pytest.mark.parametrize(("topic_filter", "subject"), NATS_FILTER_TABLE)
def test_nats_server_filter_table(topic_filter: str, subject: str) -> None:
    subjects = filter_to_subjects(topic_filter)
    assert subjects[0] == subject
    # mqttNeedSubForLevelUp: a second subscription on the parent for '.../#'.
    if len(subject) >= 3 and subject.endswith(".>"):
        assert subjects == (subject, subject[:-2])
    else:
        assert subjects == (subject,)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/#", ("a.>", "a")),
        ("#", (">",)),
        ("a/+", ("a.*",)),
        ("+/#", ("*.>", "*")),
        ("a/b", ("a.b",)),
        ("a//#", ("a./.>", "a./")),  # the parent of 'a//#' is the topic 'a/'
        ("$SYS/#", ("$SYS.>", "$SYS")),
    ],
)
def test_filter_to_subjects(topic_filter: str, expected: tuple[str, ...]) -> None:
    assert filter_to_subjects(topic_filter) == expected


@pytest.mark.parametrize(
    "topic_filter",
    ["a/#/b", "a+", "", "a b/#", "a/*", ">", "$share/g/a/#", "$share//a", "a/\x7f/+"],
)
def test_filter_to_subjects_refuses(topic_filter: str) -> None:
    with pytest.raises(SubjectError):
        filter_to_subjects(topic_filter)


# --------------------------------------------------------------------------
# Refused characters and levels
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "",  # nats-server: "topic cannot be empty"
        "a b",  # nats-server: errMQTTUnsupportedCharacters
        "a\tb",  # IsValidSubject refuses "\t\n\f\r "
        "a\nb",
        "a\rb",
        "a\x0cb",
        "a\x0bb",
        "a\x00b",  # NUL
        "a\x7fb",  # DEL
        "a/+",  # [MQTT-3.3.2-2], nats-server "wildcards not allowed"
        "a/#",
        "*",  # a whole level '*' or '>' would be a NATS wildcard token
        "a/*",
        "*/a",
        "a/>/b",
        ">",
        "/>",
    ],
)
def test_refused_topics(topic: str) -> None:
    with pytest.raises(SubjectError):
        topic_to_subject(topic)


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("a*", "a*"),  # '*' inside a level is literal in NATS too
        ("a/b>c", "a.b>c"),
        ("$SYS/x", "$SYS.x"),
        ("ü/€", "ü.€"),
        ("a\u00a0b", "a\u00a0b"),  # non-ASCII whitespace is an ordinary subject character
    ],
)
def test_accepted_unusual_topics(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    assert subject_to_topic(subject) == topic


@pytest.mark.parametrize(
    "subject",
    ["", "a.*", "a.>", "a..b", ".a", "a.", "a/b", "a b", "a.///b", "///"],
)
def test_subject_to_topic_refuses_non_images(subject: str) -> None:
    with pytest.raises(SubjectError):
        subject_to_topic(subject)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

# Characters that stress the mapping: the separators on both sides, wildcards of
# both protocols and a few ordinary ones.
_ALPHABET = st.sampled_from(["/", ".", "a", "b", "$", "*", ">", "ü", "_"])
representable_topics = (
    st.lists(_ALPHABET, min_size=1, max_size=12)
    .map("".join)
    .filter(lambda t: all(level not in ("*", ">") for level in t.split("/")))
)


@settings(max_examples=200)
@given(topic=representable_topics)
def test_round_trip(topic: str) -> None:
    validate_topic_name(topic)
    subject = topic_to_subject(topic)
    assert subject_to_topic(subject) == topic


@settings(max_examples=200)
@given(topic=representable_topics)
def test_same_as_nats_server_loops(topic: str) -> None:
    subject = topic_to_subject(topic)
    assert subject == go_mqtt_to_nats_subject_conversion(topic, False)
    assert go_nats_subject_to_mqtt_topic(subject) == topic


@settings(max_examples=200)
@given(topic=representable_topics)
def test_subject_is_a_valid_literal_nats_subject(topic: str) -> None:
    # Non-empty tokens, no wildcard token, no whitespace: what NATS accepts on PUB.
    tokens = topic_to_subject(topic).split(".")
    assert all(tokens)
    assert all(token not in ("*", ">") for token in tokens)


@settings(max_examples=200)
@given(topic=st.text(min_size=1, max_size=20).filter(lambda t: "+" not in t and "#" not in t))
def test_any_text_round_trips_or_is_refused(topic: str) -> None:
    try:
        subject = topic_to_subject(topic)
    except SubjectError:
        return
    assert subject_to_topic(subject) == topic


@settings(max_examples=200)
@given(
    levels=st.lists(st.sampled_from(["a", "", ".", "+", "b.c"]), min_size=1, max_size=5),
    hash_=st.booleans(),
)
def test_filters_same_as_nats_server_loops(levels: list[str], hash_: bool) -> None:
    topic_filter = "/".join([*levels, "#"] if hash_ else levels) or "#"
    assert filter_to_subjects(topic_filter)[0] == go_mqtt_to_nats_subject_conversion(
        topic_filter, True
    )


# --------------------------------------------------------------------------
# device_subject
# --------------------------------------------------------------------------


def test_device_subject() -> None:
    assert device_subject("mqtt", "dev1", "sensors/temp") == "mqtt.dev1.sensors.temp"
    assert device_subject("org.mqtt", "d-2", "/a.b/") == "org.mqtt.d-2./.a//b./"


@pytest.mark.parametrize("device_id", ["", "a.b", "a*", "a>", "a b", "a\tb", "\x7f", "a\x00"])
def test_device_subject_refuses_bad_device_ids(device_id: str) -> None:
    with pytest.raises(SubjectError):
        device_subject("mqtt", device_id, "t")


@pytest.mark.parametrize("prefix", ["", ".mqtt", "mqtt.", "a..b", "mqtt.*", "mq tt"])
def test_device_subject_refuses_bad_prefixes(prefix: str) -> None:
    with pytest.raises(SubjectError):
        device_subject(prefix, "dev", "t")


def test_device_subject_refuses_bad_topics() -> None:
    with pytest.raises(SubjectError):
        device_subject("mqtt", "dev", "a b")
