"""Micro-benchmark of the router's hot path: TopicTrie.match per PUBLISH.

10,000 subscriptions on a device-shaped topic space (70% exact filters, 20%
with '+', 10% with '#'), then match() on random device topics; also the
retained index (match per SUBSCRIBE) and the topic -> NATS subject mapping
(once per forwarded message).

    .venv/bin/python bench/topics.py [--subs 10000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

from mqttgate.protocol.subjects import device_subject
from mqttgate.protocol.topics import RetainedIndex, TopicTrie

KINDS = ["temp", "humidity", "pressure", "battery", "status", "gps", "door", "light"]


def build_trie(
    n_subs: int, n_devices: int, rng: random.Random, *, broad: bool = True
) -> TopicTrie[int, int]:
    """70% exact, 20% '+', 10% '#' filters. ``broad`` adds filters spanning all
    devices of a site (``+`` on the device level, ``site/N/#``), which make
    every PUBLISH match dozens of subscribers; without it the wildcards are
    per device and a PUBLISH matches a handful."""
    trie: TopicTrie[int, int] = TopicTrie()
    client = 0
    while len(trie) < n_subs:
        client += 1
        d = rng.randrange(n_devices)
        k = rng.choice(KINDS)
        r = rng.random()
        if r < 0.7:
            f = f"site/{d % 10}/devices/d{d}/sensors/{k}"
        elif r < 0.8:
            f = f"site/{d % 10}/devices/+/sensors/{k}" if broad else f"site/+/devices/d{d}/+/{k}"
        elif r < 0.9:
            f = f"site/+/devices/d{d}/sensors/+"
        elif r < 0.97 or not broad:
            f = f"site/{d % 10}/devices/d{d}/#"
        else:
            f = f"site/{d % 10}/#"
        trie.subscribe(f, client, rng.randrange(3))
    return trie


def rate(fn: Callable[[str], object], inputs: Sequence[str], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for x in inputs:
            fn(x)
        n += len(inputs)
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subs", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    rng = random.Random(42)

    topics = [
        f"site/{d % 10}/devices/d{d}/sensors/{rng.choice(KINDS)}"
        for d in (rng.randrange(args.devices) for _ in range(1000))
    ]
    for broad in (False, True):
        trie = build_trie(args.subs, args.devices, rng, broad=broad)
        fanout = sum(len(trie.match(t)) for t in topics) / len(topics)
        matches_per_s = rate(trie.match, topics, args.seconds)
        print(
            f"TopicTrie.match      {matches_per_s:>12,.0f} matches/s  "
            f"({len(trie):,} subscriptions, {fanout:.1f} matching subscriptions per topic)"
        )

    retained: RetainedIndex[int] = RetainedIndex()
    for d in range(args.devices):
        for k in KINDS:
            retained.set(f"site/{d % 10}/devices/d{d}/sensors/{k}", d)
    filters = [
        rng.choice(
            [
                f"site/{d % 10}/devices/d{d}/sensors/+",
                f"site/{d % 10}/devices/d{d}/#",
                f"site/+/devices/d{d}/sensors/temp",
            ]
        )
        for d in (rng.randrange(args.devices) for _ in range(200))
    ]
    retained_per_s = rate(retained.match, filters, args.seconds)
    print(
        f"RetainedIndex.match  {retained_per_s:>12,.0f} matches/s  "
        f"({len(retained):,} retained topics, per-device filters)"
    )

    subjects_per_s = rate(lambda t: device_subject("mqtt", "dev42", t), topics, args.seconds)
    print(f"device_subject       {subjects_per_s:>12,.0f} conversions/s")


if __name__ == "__main__":
    main()
