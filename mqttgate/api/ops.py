"""Operations routes: ``/readyz``, ``/metrics``, ``/clients``.

``create_app`` calls ``register(app, config, services)`` after its own routes
(it keeps ``/healthz``, the liveness probe, itself). ``services`` is the app's
``extensions["mqttgate"]`` dict: ``broker``, ``store``, ``authenticator``,
``forwarder`` and the effective ``api_token``; any of them may be missing.

Access (docs/operations.md, "Probes" and "Metrics"):

* ``/readyz`` needs no token: Kubernetes probes carry no credentials, and the
  answer only names failing checks (never addresses or secrets).
* ``/metrics`` needs the API token (``Authorization: Bearer ...``): connection
  counts, denial reasons and client numbers are reconnaissance material, and a
  second listener would be one more port to expose and secure. Prometheus
  sends the token with ``authorization: {credentials_file: ...}``.
* ``/clients`` needs the API token.

Metrics are read at scrape time from the components' plain counters by one
custom collector (no prometheus objects on the hot path). The components are
written by other people and change, so the collector reads them defensively:
known fields get stable names and help texts; any other ``int``/``float``
field of a ``stats`` object is still exported (``mqttgate_<component>_<field>``)
so that a new counter is visible before it is documented; and any attribute
with a ``collect()`` method (a prometheus-client metric made with
``registry=None``, e.g. a latency ``Histogram``) is exported as it is.
"""

from __future__ import annotations

import datetime
import hmac
import inspect
import json
from collections.abc import Iterator
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from quart import Quart, Response, request
from quart_schema import hide

from mqttgate import __version__
from mqttgate.api.errors import ApiError
from mqttgate.config import Config

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upper bound of one readiness check; the probe's timeoutSeconds is above it.
READY_CHECK_TIMEOUT_S = 2.0
PREFIX = "mqttgate_"

# ---------------------------------------------------------------- metrics

#: BrokerStats scalar fields -> (metric name, kind, help). Counters get
#: ``_total`` appended by prometheus-client's exposition.
BROKER_SCALARS: dict[str, tuple[str, str, str]] = {
    "connections_current": ("connections", "gauge", "MQTT connections open now (after CONNACK)"),
    "connects_total": ("connects", "counter", "CONNECTs accepted"),
    "publish_denied": ("publish_denied", "counter", "PUBLISHes refused by the ACL"),
    "subscribe_denied": ("subscribe_denied", "counter", "SUBSCRIBE filters refused by the ACL"),
    "outbox_overflows": (
        "outbox_overflows", "counter", "Subscribers disconnected (v5 0x97) because their QoS 1/2 queue overflowed",
    ),
    "forward_failed": (
        "forward_failed", "counter", "QoS 1/2 messages JetStream did not store before the forward deadline",
    ),
    "protocol_errors": ("protocol_errors", "counter", "Connections closed for a protocol violation"),
    "keepalive_timeouts": ("keepalive_timeouts", "counter", "Connections closed because keep alive expired"),
    "takeovers": ("takeovers", "counter", "Sessions taken over by a new connection with the same client id"),
    "wills_published": ("wills_published", "counter", "Will messages published"),
    "retained_count": ("retained_messages", "gauge", "Retained messages held"),
    "retained_bytes": ("retained_bytes", "gauge", "Payload bytes of the retained messages held"),
    "sessions_count": ("sessions", "gauge", "Sessions held (connected and persistent offline)"),
}

#: BrokerStats drop counters -> the ``reason`` label of mqttgate_messages_dropped_total.
BROKER_DROPS: dict[str, str] = {
    "dropped_qos0": "subscriber_outbox_full",
    "queue_dropped": "session_queue_full",
    "queued_bytes_dropped": "queued_bytes_limit",
    "too_large_dropped": "too_large_for_client",
    "messages_expired": "expired",
    "forward_dropped": "forward_queue_full",
    "retained_dropped": "retained_limit",
}


#: ForwarderStats values the generic export cannot see (properties read
#: through callables, a flag) or would type wrongly (a by-QoS dict) ->
#: (metric name, kind, help). ``forwarded_total`` is a counter by ``qos``.
FORWARDER_VALUES: dict[str, tuple[str, str, str]] = {
    "queue_depth": ("forward_queue_depth", "gauge", "Messages waiting in the forward queue now"),
    "pending_acks": (
        "forward_pending_acks", "gauge", "QoS 1/2 messages sent to JetStream, not yet acked or failed",
    ),
    "connected": ("forward_connected", "gauge", "1 while connected to NATS, else 0"),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _fields(obj: Any) -> dict[str, Any]:
    """Public attributes of a stats object (attrs, dataclass, slots or plain)."""
    if attrs.has(type(obj)):
        return {f.name: getattr(obj, f.name) for f in attrs.fields(type(obj))}
    names = getattr(obj, "__dict__", None)
    if isinstance(names, dict):
        return {k: v for k, v in names.items() if not k.startswith("_")}
    return {
        name: getattr(obj, name)
        for name in getattr(type(obj), "__slots__", ())
        if not name.startswith("_") and hasattr(obj, name)
    }


def _collectable(value: Any) -> bool:
    return callable(getattr(value, "collect", None)) and not isinstance(value, type)


def _histogram(name: str, text: str, histogram: Any) -> Metric:
    """A Prometheus histogram from per-bucket (non-cumulative) counts."""
    family = HistogramMetricFamily(name, text)
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        running += count
        buckets.append((repr(float(bound)), float(running)))
    buckets.append(("+Inf", float(histogram.count)))
    family.add_metric([], buckets, sum_value=float(histogram.total))
    return family


class MqttgateCollector(Collector):
    """Reads broker, forwarder and authenticator counters at scrape time."""

    def __init__(self, services: dict[str, Any]) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        # One family per name, first wins: the generic export derives names
        # from field names, and a repeated family (the broker's forward_failed
        # and the forwarder's failed_total were both mqttgate_forward_failed)
        # makes Prometheus reject the whole scrape.
        seen: set[str] = set()
        for family in self._families():
            if family.name not in seen:
                seen.add(family.name)
                yield family

    def _families(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(PREFIX + "build_info", "mqttgate version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        broker = self._services.get("broker")
        stats = getattr(broker, "stats", None)
        if stats is not None:
            yield from self._broker(stats)
        budget = getattr(broker, "queue_budget", None)
        used = _number(getattr(budget, "used", None))
        if used is not None:
            yield GaugeMetricFamily(
                PREFIX + "queued_bytes", "Bytes of the QoS 1/2 messages queued in all sessions", value=used
            )
        forwarder = self._services.get("forwarder")
        fstats = getattr(forwarder, "stats", None)
        if fstats is not None:
            yield from _forwarder(fstats)
            latency = getattr(fstats, "ack_latency", None)
            if latency is not None:
                yield _histogram(
                    PREFIX + "forward_ack_latency_seconds",
                    "QoS 1/2 submit to JetStream ack latency",
                    latency,
                )
        authenticator = self._services.get("authenticator")
        if authenticator is not None:
            yield from self._auth(authenticator)
        # The HTTP connection gate (api/http_limits.py), added by serve_http.
        http_connections: Any = self._services.get("http_connections")
        if _collectable(http_connections):
            yield from http_connections.collect()

    def _broker(self, stats: Any) -> Iterator[Metric]:
        fields = _fields(stats)
        for field, (name, kind, text) in BROKER_SCALARS.items():
            value = _number(fields.get(field))
            if value is None:
                continue
            yield _scalar(kind, PREFIX + name, text, value)
        denied = fields.get("connects_denied")
        if isinstance(denied, dict):
            family = CounterMetricFamily(
                PREFIX + "connects_denied", "CONNECTs refused, by MQTT reason code name", labels=["reason"]
            )
            for reason, count in sorted(denied.items()):
                if _number(count) is not None:
                    family.add_metric([str(reason)], float(count))
            yield family
        for field, name, text in (
            ("messages_in", "messages_received", "PUBLISH packets received from clients, by QoS"),
            ("messages_out", "messages_sent", "PUBLISH packets sent to clients, by QoS (no retransmissions)"),
        ):
            by_qos = fields.get(field)
            if isinstance(by_qos, list | tuple):
                family = CounterMetricFamily(PREFIX + name, text, labels=["qos"])
                for qos, count in enumerate(by_qos):
                    if _number(count) is not None:
                        family.add_metric([str(qos)], float(count))
                yield family
        drops = CounterMetricFamily(
            PREFIX + "messages_dropped", "Messages dropped, by reason (docs/operations.md)", labels=["reason"]
        )
        for field, reason in BROKER_DROPS.items():
            value = _number(fields.get(field))
            if value is not None:
                drops.add_metric([reason], value)
        yield drops
        known = {*BROKER_SCALARS, *BROKER_DROPS, "connects_denied", "messages_in", "messages_out"}
        yield from _generic("broker", stats, skip=known)

    def _auth(self, authenticator: Any) -> Iterator[Metric]:
        cache = getattr(authenticator, "cache", None)
        hasher = getattr(authenticator, "hasher", None)
        verify_seconds = getattr(hasher, "verify_seconds", None)
        if verify_seconds is not None:
            yield _histogram(
                PREFIX + "auth_argon2_verify_seconds",
                "argon2id password verification time, waiting for a thread included",
                verify_seconds,
            )
        values = {
            "auth_cache_hits": (getattr(cache, "hits", None), "counter", "Logins answered from the verified-credential cache"),
            "auth_cache_misses": (getattr(cache, "misses", None), "counter", "Logins that needed an argon2 verification"),
            "auth_verifications": (getattr(hasher, "verifications", None), "counter", "argon2 verifications run"),
            "auth_shared_verifications": (
                getattr(authenticator, "shared_verifications", None), "counter",
                "Logins that waited for an identical verification already running",
            ),
        }
        if cache is not None:
            try:
                values["auth_cache_entries"] = (len(cache), "gauge", "Verified credentials cached")
            except TypeError:
                pass
        for name, (raw, kind, text) in values.items():
            value = _number(raw)
            if value is None:
                continue
            yield _scalar(kind, PREFIX + name, text, value)
        for owner in (authenticator, hasher, getattr(authenticator, "stats", None)):
            if owner is None:
                continue
            for value in _fields(owner).values():
                if _collectable(value):
                    yield from value.collect()


def _forwarder(stats: Any) -> Iterator[Metric]:
    for field, (name, kind, text) in FORWARDER_VALUES.items():
        raw = getattr(stats, field, None)
        value = float(raw) if isinstance(raw, bool) else _number(raw)
        if value is not None:
            yield _scalar(kind, PREFIX + name, text, value)
    by_qos = getattr(stats, "forwarded_total", None)
    if isinstance(by_qos, dict):
        family = CounterMetricFamily(
            PREFIX + "forward_forwarded",
            "Messages JetStream acknowledged (QoS 1/2) or handed to NATS (QoS 0), by QoS",
            labels=["qos"],
        )
        for qos, count in sorted(by_qos.items()):
            if _number(count) is not None:
                family.add_metric([str(qos)], float(count))
        yield family
    yield from _generic("forward", stats, skip={*FORWARDER_VALUES, "forwarded_total"})


def _scalar(kind: str, name: str, text: str, value: float) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, text, value=value)
    return GaugeMetricFamily(name, text, value=value)


def _generic(component: str, stats: Any, *, skip: set[str] | tuple[str, ...]) -> Iterator[Metric]:
    """Every numeric field of ``stats`` not mapped explicitly, under a derived name."""
    for field, value in _fields(stats).items():
        if field in skip:
            continue
        if _collectable(value):
            yield from value.collect()
            continue
        name = PREFIX + (field if field.startswith(component + "_") else f"{component}_{field}")
        number = _number(value)
        if number is not None:
            if field.endswith("_total"):
                yield CounterMetricFamily(name.removesuffix("_total"), f"{component} {field}", value=number)
            else:
                yield GaugeMetricFamily(name, f"{component} {field}", value=number)
        elif isinstance(value, dict) and value and all(_number(v) is not None for v in value.values()):
            family = GaugeMetricFamily(name, f"{component} {field}, by key", labels=["key"])
            for key, count in sorted(value.items()):
                family.add_metric([str(key)], float(count))
            yield family


def build_registry(services: dict[str, Any]) -> CollectorRegistry:
    """A private registry (never the global one, so several apps can coexist)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MqttgateCollector(services))
    ProcessCollector(namespace="mqttgate", registry=registry)
    return registry


# ---------------------------------------------------------------- routes


def _check_token(services: dict[str, Any], config: Config) -> None:
    token = services.get("api_token", config.api_token)
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # Constant-time compare; an unset token never matches.
    if (
        not token
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip().encode(), str(token).encode())
    ):
        raise ApiError(
            401, "unauthorized", "missing or wrong bearer token",
            {"WWW-Authenticate": 'Bearer realm="mqttgate"'},
        )


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def readiness(services: dict[str, Any]) -> dict[str, str]:
    """Each check's outcome: ``ok``, ``disabled`` or why it failed."""
    checks: dict[str, str] = {}
    broker = services.get("broker")
    if broker is None:
        checks["broker"] = "not_running"
    elif getattr(broker, "shutting_down", False):
        # Fail readiness while draining so the Service stops sending new clients.
        checks["broker"] = "shutting_down"
    else:
        checks["broker"] = "ok"

    store = services.get("store")
    if store is None:
        checks["store"] = "disabled"
    elif callable(getattr(store, "ping", None)):
        checks["store"] = await _bounded("store", store.ping)
    else:
        checks["store"] = "ok"

    forwarder = services.get("forwarder")
    ready = getattr(forwarder, "ready", None)
    if forwarder is None or not callable(ready):
        checks["forwarder"] = "disabled" if forwarder is None or type(forwarder).__name__ == "NullForwarder" else "ok"
    else:
        checks["forwarder"] = await _bounded("forwarder", ready)
    return checks


async def _bounded(name: str, check: Any) -> str:
    with trio.move_on_after(READY_CHECK_TIMEOUT_S):
        try:
            result = await _maybe_await(check())
        except Exception as error:
            return f"failed: {type(error).__name__}"
        if result is None or result is True:
            return "ok"
        if result is False:
            return "not_ready"
        # A reason string ("queue_above_high_water", "disconnected")
        return "ok" if result == "ok" else str(result)
    return "timeout"


def _client_json(client: Any) -> dict[str, Any]:
    out: dict[str, Any] = attrs.asdict(client) if attrs.has(type(client)) else dict(vars(client))
    connected_at = out.get("connected_at")
    if isinstance(connected_at, int | float):
        out["connected_since"] = (
            datetime.datetime.fromtimestamp(connected_at, datetime.UTC).isoformat().replace("+00:00", "Z")
        )
    return out


def register(app: Quart, config: Config, services: dict[str, Any]) -> None:
    """Add ``/readyz``, ``/metrics``, ``GET /clients`` and ``DELETE /clients/<id>``."""
    registry = build_registry(services)

    @app.get("/readyz")
    @hide
    async def readyz() -> Response:
        checks = await readiness(services)
        failing = {name: state for name, state in checks.items() if state not in ("ok", "disabled")}
        if failing:
            # The API's error shape plus the full check list.
            return _json(
                {"status": "not_ready", "error": "not_ready", "detail": failing, "checks": checks}, 503
            )
        return _json({"status": "ready", "checks": checks}, 200)

    @app.get("/metrics")
    @hide
    async def metrics() -> Response:
        _check_token(services, config)
        return Response(generate_latest(registry), status=200, content_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/clients")
    @hide
    async def list_clients() -> Response:
        _check_token(services, config)
        broker = _broker(services)
        clients = sorted((_client_json(c) for c in broker.clients()), key=lambda c: str(c.get("client_id")))
        return _json({"clients": clients, "count": len(clients)}, 200)

    # <path:...>: MQTT client ids may contain "/" (send it percent-encoded).
    @app.delete("/clients/<path:client_id>")
    @hide
    async def kick_client(client_id: str) -> Response:
        _check_token(services, config)
        broker = _broker(services)
        if not broker.kick(client_id):
            raise ApiError(404, "client_not_found", "no connected client with this id")
        # The broker logs client_kicked with the connection id.
        return Response("", status=204)


def _broker(services: dict[str, Any]) -> Any:
    broker = services.get("broker")
    if broker is None:
        raise ApiError(503, "no_broker", "the MQTT broker is not running")
    return broker


def _json(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
