"""The provisioning API: ``/devices`` (docs/api.md has the contract).

Every route needs ``Authorization: Bearer <MQTTGATE_API_TOKEN>`` (compared in
constant time). Bodies are parsed here, by hand, so that every bad input gets
its precise JSON error (quart-schema only documents the models).

Deleting, disabling or rotating a device also cuts its live MQTT sessions
(``broker.revoke_device``) and drops its verified-credential cache entry; the
cache is tied to the stored hash anyway, so another replica's cache cannot
admit the old password either. Other replicas cut the sessions they hold when
the change's notification reaches them (migration 003, ``Broker.device_revoked``);
this replica skips its own notification, having acted here at commit.
"""

from __future__ import annotations

import datetime
import hmac
import inspect
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from quart import Blueprint, Response, current_app, jsonify, request
from quart_schema import (
    document_querystring,
    document_request,
    document_response,
    security_scheme_blueprint,
    tag_blueprint,
)

from mqttgate.api.errors import ApiError
from mqttgate.credentials import Hasher, new_password
from mqttgate.logs import get_logger
from mqttgate.store import Device, DeviceExists, Store

log = get_logger("api")

#: Longest device type, in characters (also a CHECK in 001_devices.sql).
MAX_TYPE_LENGTH = 64
#: Page size of GET /devices when no limit is given, and the largest allowed.
DEFAULT_PAGE, MAX_PAGE = 100, 1000
#: Attempts at drawing unused random identifiers before answering 409.
ID_ATTEMPTS = 3

_DEVICE_ID = re.compile(r"^[0-9a-f]{24}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")



# ---------------------------------------------------------------- documented models


@dataclass
class DeviceCreate:
    """Provisioning request: the device type (1-64 characters, no control characters)."""

    type: str


@dataclass
class DeviceCreated:
    """The new device and its MQTT credentials. The password is shown only this once."""

    id: str
    type: str
    mqtt_user: str
    mqtt_password: str
    created_at: str


@dataclass
class DeviceView:
    """A device, without secrets."""

    id: str
    type: str
    mqtt_user: str
    created_at: str
    updated_at: str
    disabled: bool
    disabled_at: str | None


@dataclass
class DevicePage:
    """One page of devices in id order; pass next_cursor as ``cursor`` for the next."""

    devices: list[DeviceView]
    next_cursor: str | None


@dataclass
class CredentialsRotated:
    """New MQTT credentials. The old password stops working at once."""

    id: str
    type: str
    mqtt_user: str
    mqtt_password: str
    created_at: str
    updated_at: str


@dataclass
class ListQuery:
    """Query string of GET /devices."""

    type: str | None = None
    cursor: str | None = None
    limit: int | None = None


@dataclass
class Error:
    """An error: a stable code and a human-readable detail."""

    error: str
    detail: Any = None


# ---------------------------------------------------------------- helpers


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _credentials_response(device: Device, password: str, **extra: Any) -> Response:
    """The one answer that carries a password: creation and rotation. The
    original's shape, so its clients keep working; never cached by proxies."""
    response = jsonify(
        {
            "id": device.id,
            "type": device.type,
            "mqtt_user": device.mqtt_user,
            "mqtt_password": password,
            "created_at": _iso(device.created_at),
            **extra,
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def device_view(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "type": device.type,
        "mqtt_user": device.mqtt_user,
        "created_at": _iso(device.created_at),
        "updated_at": _iso(device.updated_at),
        "disabled": device.disabled,
        "disabled_at": _iso(device.disabled_at),
    }


def _services() -> dict[str, Any]:
    services: dict[str, Any] = current_app.extensions["mqttgate"]
    return services


def _store() -> Store:
    store: Store = _services()["store"]
    return store


def _hasher() -> Hasher:
    hasher: Hasher = _services()["hasher"]
    return hasher


def _check_id(device_id: str) -> None:
    if not _DEVICE_ID.match(device_id):
        # Not an id we could have issued: no need to ask the database.
        raise ApiError(404, "device_not_found", "no device with this id")


async def _json_object() -> dict[str, Any]:
    raw = await request.get_data(as_text=False)  # 413 past MAX_CONTENT_LENGTH
    # The body is read as JSON whatever its Content-Type: `curl -d` and many
    # device-side scripts send JSON as form data or with no type, and nothing
    # is gained by refusing them (cross-site forms cannot carry the bearer
    # token). A body that is not a JSON object is 400 (issue 5: "400 for a
    # bad body ... wrong JSON"; an empty body is a missing type).
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    except RecursionError:
        # json's C scanner gives up on deep nesting ("[" * 16000 fits in 16 KiB).
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return data


def _device_type(data: dict[str, Any]) -> str:
    if "type" not in data:
        raise ApiError(400, "invalid_type", "field 'type' is required")
    value = data["type"]
    if not isinstance(value, str):
        raise ApiError(400, "invalid_type", "field 'type' must be a string")
    if not value.strip():
        raise ApiError(400, "invalid_type", "field 'type' must not be empty")
    if len(value) > MAX_TYPE_LENGTH:
        raise ApiError(
            400, "invalid_type", f"field 'type' is longer than {MAX_TYPE_LENGTH} characters"
        )
    if _CONTROL.search(value):
        raise ApiError(400, "invalid_type", "field 'type' must not contain control characters")
    if _SURROGATE.search(value):
        # JSON may carry an escaped lone surrogate: not UTF-8, PostgreSQL cannot store it.
        raise ApiError(400, "invalid_type", "field 'type' must not contain lone surrogates")
    return value


async def _after_change(device: Device, action: str) -> int:
    """Drop the cached verification and cut the device's live sessions."""
    services = _services()
    authenticator = services.get("authenticator")
    invalidate = getattr(authenticator, "invalidate", None)
    if invalidate is not None:
        invalidate(device.mqtt_user)
    broker = services.get("broker")
    # The broker's one revocation path, shared with the other replicas'
    # notifications (the reason per change is REVOCATION_REASONS').
    revoke = getattr(broker, "revoke_device", None)
    if revoke is None:
        return 0
    result = revoke(device.id, action)
    if inspect.isawaitable(result):
        result = await result
    return int(result or 0)


# ---------------------------------------------------------------- blueprint

blueprint = Blueprint("devices", __name__, url_prefix="/devices")
security_scheme_blueprint(blueprint, [{"bearer": []}])
tag_blueprint(blueprint, ["devices"])


@blueprint.before_request
async def _guard() -> None:
    services = _services()
    if services.get("store") is None:
        raise ApiError(
            503, "no_registry", "this daemon runs without a device registry (no database configured)"
        )
    token: str | None = services.get("api_token")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # Constant-time compare; an unset token never matches.
    if (
        token is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.strip().encode(), token.encode())
    ):
        raise ApiError(
            401, "unauthorized", "missing or wrong bearer token",
            {"WWW-Authenticate": 'Bearer realm="mqttgate"'},
        )


@blueprint.post("")
@document_request(DeviceCreate)
@document_response(DeviceCreated, 201)
@document_response(Error, 400)
@document_response(Error, 401)
@document_response(Error, 413)
@document_response(Error, 503)
async def create_device() -> Response:
    """Provision a device; returns its MQTT credentials once (201, Location)."""
    device_type = _device_type(await _json_object())
    password = new_password()
    password_hash = await _hasher().hash(password)
    for attempt in range(ID_ATTEMPTS):
        try:
            device = await _store().create_device(
                secrets.token_hex(12), device_type, "dev_" + secrets.token_hex(8), password_hash
            )
            break
        except DeviceExists:
            if attempt == ID_ATTEMPTS - 1:
                raise
    log.info("device_created", device_id=device.id, device_type=device.type)
    response = _credentials_response(device, password)
    response.status_code = 201
    response.headers["Location"] = f"/devices/{device.id}"
    return response


@blueprint.get("")
@document_querystring(ListQuery)
@document_response(DevicePage, 200)
@document_response(Error, 400)
@document_response(Error, 401)
@document_response(Error, 503)
async def list_devices() -> Response:
    """List devices, optionally of one type; cursor pagination in id order."""
    args = request.args
    device_type = args.get("type") or None
    if device_type is not None and _CONTROL.search(device_type):
        # No device has such a type, and PostgreSQL refuses U+0000 in a query.
        raise ApiError(400, "invalid_type", "the type filter must not contain control characters")
    cursor = args.get("cursor") or None
    if cursor is not None and not _DEVICE_ID.match(cursor):
        raise ApiError(400, "invalid_cursor", "cursor must be a next_cursor value from a previous page")
    limit_text = args.get("limit")
    limit = DEFAULT_PAGE
    if limit_text is not None:
        # isdigit() alone admits "²", which int() refuses: ASCII digits only.
        digits = limit_text.isascii() and limit_text.isdigit()
        if not digits or not 1 <= int(limit_text) <= MAX_PAGE:
            raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_PAGE}")
        limit = int(limit_text)
    # One extra row tells whether there is a next page.
    devices = await _store().list_devices(device_type=device_type, after=cursor, limit=limit + 1)
    next_cursor = devices[limit - 1].id if len(devices) > limit else None
    return jsonify(
        {"devices": [device_view(d) for d in devices[:limit]], "next_cursor": next_cursor}
    )


@blueprint.get("/<device_id>")
@document_response(DeviceView, 200)
@document_response(Error, 401)
@document_response(Error, 404)
@document_response(Error, 503)
async def get_device(device_id: str) -> Response:
    """One device, without secrets."""
    _check_id(device_id)
    return jsonify(device_view(await _store().get_device(device_id)))


@blueprint.delete("/<device_id>")
@document_response(Error, 401)
@document_response(Error, 404)
@document_response(Error, 503)
async def delete_device(device_id: str) -> tuple[str, int]:
    """Delete a device (204); its live MQTT sessions are disconnected."""
    _check_id(device_id)
    device = await _store().delete_device(device_id)
    kicked = await _after_change(device, "delete")
    log.info("device_deleted", device_id=device.id, sessions_closed=kicked)
    return "", 204


@blueprint.post("/<device_id>/credentials")
@document_response(CredentialsRotated, 200)
@document_response(Error, 401)
@document_response(Error, 404)
@document_response(Error, 503)
async def rotate_credentials(device_id: str) -> Response:
    """New MQTT password (returned once); the old one stops working at once."""
    _check_id(device_id)
    password = new_password()
    password_hash = await _hasher().hash(password)
    device = await _store().set_password_hash(device_id, password_hash)
    kicked = await _after_change(device, "rotate")
    log.info("credentials_rotated", device_id=device.id, sessions_closed=kicked)
    return _credentials_response(device, password, updated_at=_iso(device.updated_at))


@blueprint.post("/<device_id>/disable")
@document_response(DeviceView, 200)
@document_response(Error, 401)
@document_response(Error, 404)
@document_response(Error, 503)
async def disable_device(device_id: str) -> Response:
    """Refuse the device's CONNECTs (0x87 / rc 5) and cut its live sessions. Idempotent."""
    _check_id(device_id)
    device = await _store().set_disabled(device_id, True)
    kicked = await _after_change(device, "disable")
    log.info("device_disabled", device_id=device.id, sessions_closed=kicked)
    return jsonify(device_view(device))


@blueprint.post("/<device_id>/enable")
@document_response(DeviceView, 200)
@document_response(Error, 401)
@document_response(Error, 404)
@document_response(Error, 503)
async def enable_device(device_id: str) -> Response:
    """Admit the device again. Idempotent."""
    _check_id(device_id)
    device = await _store().set_disabled(device_id, False)
    log.info("device_enabled", device_id=device.id)
    return jsonify(device_view(device))
