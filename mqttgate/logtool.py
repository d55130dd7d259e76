"""``mqttgate logs``: filter and read the daemon's JSON log lines.

Answers an ops question without a ``jq`` program::

    kubectl logs deploy/mqttgate | mqttgate logs --device X --event connect_denied

Input is standard input (or ``-``) and/or files, read line by line as they
arrive (so ``kubectl logs -f ... | mqttgate logs`` works). A line may carry a
prefix before its JSON object, as ``kubectl logs --prefix`` (``[pod/x/c] {...}``)
and ``docker compose logs`` (``mqttgate-1  | {...}``) add; the prefix is kept in
the readable output.

Lines that are not JSON log records (Python tracebacks of a crash before
logging was configured, shell noise) are **skipped** by default and their count
is reported on standard error, because a filter cannot say whether they match;
``--keep-other`` prints them unchanged instead (only when no filter is given
would that be unambiguous, so it is a flag, not a default).

Filters combine with AND; a repeated filter (``--event a --event b``, or
``--event a,b``) matches any of its values. The exit status is 0 whether or not
anything matched (2 for a bad command line), so it composes in pipelines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import attrs

from mqttgate.config import parse_duration

#: Level order; anything else (an unknown level) ranks as info.
LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}

#: Keys printed in the fixed columns of the readable format, not as key=value.
_HEAD_KEYS = ("ts", "level", "event", "component")


@attrs.frozen
class Record:
    """One parsed line: the JSON object and any prefix in front of it."""

    fields: dict[str, Any]
    prefix: str
    line: str

    @property
    def time(self) -> datetime.datetime | None:
        value = self.fields.get("ts")
        return parse_timestamp(value) if isinstance(value, str) else None


def parse_timestamp(text: str) -> datetime.datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime (naive ones are taken as UTC)."""
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


def parse_line(line: str) -> Record | None:
    """The record on ``line``, or None when it holds no JSON object."""
    text = line.rstrip("\r\n")
    start = text.find("{")
    if start < 0:
        return None
    try:
        fields = json.loads(text[start:])
    except ValueError:
        return None
    if not isinstance(fields, dict) or "event" not in fields:
        return None
    return Record(fields=fields, prefix=text[:start].rstrip(), line=text)


def parse_when(text: str, now: datetime.datetime) -> datetime.datetime:
    """``--since``/``--until``: RFC 3339 (``2026-11-29T08:00:00Z``) or an age (``10m``)."""
    stamp = parse_timestamp(text)
    if stamp is not None:
        return stamp
    try:
        return now - datetime.timedelta(seconds=parse_duration(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time (2026-11-29T08:00:00Z) nor an age (30s, 10m, 2h, 1d)"
        ) from None


def _as_set(values: Iterable[str] | None) -> frozenset[str]:
    """Repeated and comma-separated values, flattened."""
    out: set[str] = set()
    for value in values or ():
        out.update(part.strip() for part in value.split(",") if part.strip())
    return frozenset(out)


@attrs.frozen
class Filter:
    events: frozenset[str] = frozenset()
    components: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    client_ids: frozenset[str] = frozenset()
    min_level: int = 0
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None

    @property
    def active(self) -> bool:
        return self != Filter()

    def matches(self, record: Record) -> bool:
        fields = record.fields
        if self.events and fields.get("event") not in self.events:
            return False
        if self.components and fields.get("component") not in self.components:
            return False
        if self.min_level and _level_of(fields) < self.min_level:
            return False
        # A device is known by its id once connected, by its MQTT user name
        # before (connect_denied records carry mqtt_user only).
        if self.devices and not (
            {str(fields.get("device_id")), str(fields.get("mqtt_user"))} & self.devices
        ):
            return False
        if self.client_ids and str(fields.get("client_id")) not in self.client_ids:
            return False
        if self.since is not None or self.until is not None:
            when = record.time
            if when is None:
                return False
            if self.since is not None and when < self.since:
                return False
            if self.until is not None and when > self.until:
                return False
        return True


def _level_of(fields: dict[str, Any]) -> int:
    return LEVELS.get(str(fields.get("level", "info")).lower(), LEVELS["info"])


def _value(value: Any) -> str:
    if isinstance(value, str):
        if value and not any(c.isspace() or c in '"=' for c in value):
            return value
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def format_record(record: Record) -> str:
    """``ts LEVEL component event key=value ...``, one line."""
    fields = record.fields
    parts = [record.prefix] if record.prefix else []
    parts.append(str(fields.get("ts", "-")))
    parts.append(f"{str(fields.get('level', '-')).upper():<7}")
    parts.append(f"{fields.get('component', '-')!s:<10}")
    parts.append(str(fields.get("event")))
    extra = [
        f"{key}={_value(value)}"
        for key, value in fields.items()
        if key not in _HEAD_KEYS and key != "exception"
    ]
    line = " ".join([*parts, *extra])
    exception = fields.get("exception")
    if isinstance(exception, str) and exception:
        line += "\n" + "\n".join("    " + row for row in exception.rstrip().splitlines())
    return line


@attrs.define
class Summary:
    read: int = 0
    matched: int = 0
    other: int = 0


def filter_lines(
    lines: Iterable[str],
    flt: Filter,
    *,
    as_json: bool = False,
    keep_other: bool = False,
    summary: Summary | None = None,
) -> Iterator[str]:
    """The output lines for ``lines`` (without newlines); counts go to ``summary``."""
    summary = summary if summary is not None else Summary()
    for line in lines:
        summary.read += 1
        record = parse_line(line)
        if record is None:
            if line.strip():
                summary.other += 1
                if keep_other:
                    yield line.rstrip("\r\n")
            continue
        if not flt.matches(record):
            continue
        summary.matched += 1
        if as_json:
            # The object as the daemon wrote it, without any prefix, so the
            # output is valid JSON lines for jq.
            yield json.dumps(record.fields, ensure_ascii=False)
        else:
            yield format_record(record)


def _inputs(files: list[str], stdin: TextIO) -> Iterator[str]:
    for name in files or ["-"]:
        if name == "-":
            yield from stdin
        else:
            with open(name, encoding="utf-8", errors="replace") as handle:
                yield from handle


def build_filter(args: argparse.Namespace, now: datetime.datetime | None = None) -> Filter:
    now = now or datetime.datetime.now(datetime.UTC)
    return Filter(
        events=_as_set(args.event),
        components=_as_set(args.component),
        devices=_as_set(args.device),
        client_ids=_as_set(args.client_id),
        min_level=LEVELS[args.level] if args.level else 0,
        since=parse_when(args.since, now) if args.since else None,
        until=parse_when(args.until, now) if args.until else None,
    )


def run(
    args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    try:
        flt = build_filter(args)
    except ValueError as error:
        print(f"mqttgate logs: error: {error}", file=stderr)
        return 2
    summary = Summary()
    try:
        lines = _inputs(args.files, stdin)
        for out in filter_lines(
            lines, flt, as_json=args.json, keep_other=args.keep_other, summary=summary
        ):
            stdout.write(out + "\n")
            stdout.flush()  # follow mode: show each line as it arrives
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        return 0
    except OSError as error:
        print(f"mqttgate logs: error: {error}", file=stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    if summary.other and not args.keep_other:
        print(
            f"mqttgate logs: skipped {summary.other} line(s) that are not JSON log records "
            "(--keep-other prints them)",
            file=stderr,
        )
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mqttgate logs`` to the command's sub-parsers."""
    parser = commands.add_parser(
        "logs",
        help="filter and pretty-print the daemon's JSON log lines",
        description="Read mqttgate's JSON log lines from FILES (or standard input) and print "
        "those matching every given filter, readably or as JSON. Example: "
        "kubectl logs deploy/mqttgate | mqttgate logs --device X --event connect_denied",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="log files ('-' or none: standard input)")
    parser.add_argument(
        "--event", action="append", metavar="NAME",
        help="only these events (repeatable or comma-separated; see docs/logging.md)",
    )
    parser.add_argument(
        "--level", choices=["debug", "info", "warning", "error"], help="only this level and above"
    )
    parser.add_argument(
        "--device", action="append", metavar="ID",
        help="only records of this device (its device_id or its mqtt_user; repeatable)",
    )
    parser.add_argument("--client-id", action="append", metavar="ID", help="only this MQTT client id (repeatable)")
    parser.add_argument(
        "--component", action="append", metavar="NAME",
        help="only this component: supervisor, broker, api, auth, store, forwarder, embedded (repeatable)",
    )
    parser.add_argument(
        "--since", metavar="WHEN", help="from this time: RFC 3339 (2026-11-29T08:00:00Z) or an age (10m, 2h)"
    )
    parser.add_argument("--until", metavar="WHEN", help="up to this time: RFC 3339 or an age")
    parser.add_argument("--json", action="store_true", help="print matching records as JSON lines (for jq)")
    parser.add_argument(
        "--keep-other", action="store_true", help="print lines that are not JSON log records unchanged"
    )
    parser.set_defaults(run=run)
