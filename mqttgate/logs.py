"""Structured logs: one JSON object a line on stdout, with stable event names.

Every record has ``ts`` (RFC 3339, UTC), ``level``, ``event`` (snake_case, listed
in docs/logging.md, kept in step by tests/test_logging_doc.py) and
``component``. Context keys such as ``conn_id``, ``client_id``, ``device_id``
and ``peer`` are bound by the caller. Secrets and payloads are never logged: a
processor removes any key that looks like one, as a last line of defence.

Call sites use the event name as the first positional argument, a literal:
``log.info(EVENT_NAME, client_id=...)`` with a string literal. The doc test relies on it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: Keys never written, whatever a call site passes.
_FORBIDDEN_KEYS = frozenset(
    {"password", "mqtt_password", "api_token", "token", "secret", "payload", "authorization"}
)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _drop_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in _FORBIDDEN_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def _key_order(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # ts, level, event, component first: what people scan for in a terminal.
    ordered: dict[str, Any] = {k: event_dict.pop(k) for k in ("ts", "level", "event", "component") if k in event_dict}
    ordered.update(event_dict)
    return ordered


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process (called once by the CLI)."""
    out = stream if stream is not None else sys.stdout
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _drop_secrets,
            structlog.processors.format_exc_info,
            _key_order,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(component: str, **context: Any) -> Any:
    """A logger bound to ``component`` (broker, api, forwarder, store, supervisor...)."""
    # A lazy proxy: module-level loggers created at import time still pick up
    # the configuration that the CLI installs later.
    return structlog.get_logger(component=component, **context)
