"""Every API error is JSON ``{"error": code, "detail": ...}`` with its status.

One place turns exceptions into responses (the HTTP twin of the broker's
``except MQTTError``): :class:`ApiError` raised by the routes, the registry's
exceptions, and Werkzeug's HTTP exceptions (404 for unknown paths, 405, 413
from ``MAX_CONTENT_LENGTH``). Anything else is a bug: it is logged with its
traceback and answered 500 with no detail, never a traceback to the client.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, jsonify
from werkzeug.exceptions import HTTPException

from mqttgate.logs import get_logger
from mqttgate.store import DeviceExists, DeviceNotFound, StoreUnavailable

log = get_logger("api")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response:
    response = jsonify({"error": error, "detail": detail})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


#: Werkzeug exception status -> our error code.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    501: "not_implemented",
}


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error_response(error.status, error.error, error.detail, error.headers)

    @app.errorhandler(DeviceNotFound)
    async def not_found(error: DeviceNotFound) -> Response:
        return error_response(404, "device_not_found", "no device with this id")

    @app.errorhandler(DeviceExists)
    async def exists(error: DeviceExists) -> Response:
        return error_response(409, "conflict", "generated identifiers collided; retry")

    @app.errorhandler(StoreUnavailable)
    async def unavailable(error: StoreUnavailable) -> Response:
        return error_response(
            503, "store_unavailable", "the device registry (PostgreSQL) is unavailable; retry later",
            {"Retry-After": "5"},
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        detail = error.description if status != 413 else "the request body is too large"
        response = error_response(status, code, detail)
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    async def bug(error: Exception) -> Response:
        log.error("api_internal_error", error=repr(error), exc_info=error)
        return error_response(500, "internal_error", None)
