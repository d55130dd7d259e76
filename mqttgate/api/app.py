"""The Quart-Trio application factory: explicit dependencies, no globals.

``create_app(config, broker=..., store=..., authenticator=..., forwarder=...)``
builds the app; everything a route needs lives in
``app.extensions["mqttgate"]``. Routes:

* ``/healthz`` (liveness), and the ops routes (``/readyz``, ``/metrics``,
  ``/clients``) from :mod:`mqttgate.api.ops`;
* ``/devices...`` from :mod:`mqttgate.api.devices` (bearer token);
* ``/openapi.json`` and Swagger UI at ``/docs/index.html``, its JS/CSS served
  from the installed ``swagger-ui-py`` package under ``/docs/static/`` (no CDN).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

import swagger_ui
from quart import Response, send_from_directory
from quart_schema import HttpSecurityScheme, Info, QuartSchema, hide
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

from mqttgate import __version__
from mqttgate.api import devices, ops
from mqttgate.api.errors import register_error_handlers
from mqttgate.api.server import PatchedQuartTrio
from mqttgate.config import Config, ConfigError
from mqttgate.credentials import Hasher
from mqttgate.logs import get_logger
from mqttgate.tokenfile import load_or_create_token

log = get_logger("api")

#: Swagger UI 5 assets shipped by swagger-ui-py.
SWAGGER_STATIC = Path(swagger_ui.__file__).parent / "static"
#: Largest request body; a device type is 64 characters, so 16 KiB is generous.
MAX_BODY_BYTES = 16 * 1024
#: Longest wait for a request body, in seconds: 16 KiB take far less on any
#: working link, and a stalled upload must not hold its connection for ever.
BODY_TIMEOUT_S = 10


def api_token(config: Config, has_registry: bool) -> str | None:
    """The bearer token, or ConfigError when the registry API would be unprotected.

    Without ``api_token``: ``api_token_file`` is read, or created with a new
    token whose path (not the token) is printed once to stderr; in embedded
    mode without either, a token is generated and printed once to stderr.
    Tokens are never logged.
    """
    if config.api_token:
        return config.api_token
    if config.api_token_file:
        return _token_from_file(config.api_token_file)
    if config.embedded:
        token = secrets.token_urlsafe(32)
        print(f"mqttgate: generated API token (embedded mode): {token}", file=sys.stderr)
        log.warning("api_token_generated", detail="printed once to stderr")
        return token
    if has_registry:
        raise ConfigError(
            "MQTTGATE_API_TOKEN",
            "required to protect the /devices API (generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
        )
    return None


def _token_from_file(path: str) -> str:
    try:
        token, created = load_or_create_token(path)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("MQTTGATE_API_TOKEN_FILE", f"cannot read or create {path!r}: {error}") from None
    if created:
        print(f"mqttgate: API token created in {path} (mode 0600); read it from there", file=sys.stderr)
        log.info("api_token_created", path=path)
    else:
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                # Still used (refusing would take the API down over a chmod),
                # but said: anyone who can read it can provision devices.
                log.warning("api_token_file_readable", path=path, mode=oct(mode))
    return token


def create_app(config: Config, **services: Any) -> QuartTrio:
    store = services.get("store")
    token = api_token(config, has_registry=store is not None)
    hasher = getattr(services.get("authenticator"), "hasher", None)
    if not isinstance(hasher, Hasher):
        hasher = Hasher(config)

    app = PatchedQuartTrio("mqttgate")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # A client that announces a body and stops sending gets 408 (Quart's default: 60 s).
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = "/docs/static/swagger-ui-bundle.js"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = "/docs/static/swagger-ui.css"
    app.extensions["mqttgate"] = {
        "config": config,
        **services,
        "store": store,
        "api_token": token,
        "hasher": hasher,
    }
    QuartSchema(
        app,
        info=Info(title="mqttgate API", version=__version__),
        openapi_path="/openapi.json",
        swagger_ui_path="/docs/index.html",
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearer": HttpSecurityScheme(scheme="bearer")},
        conversion_preference="msgspec",
    )
    register_error_handlers(app)

    @app.get("/healthz")
    @hide
    async def healthz() -> tuple[dict[str, str], int]:
        return {"status": "ok"}, 200

    @app.get("/docs/static/<path:filename>")
    @hide
    async def docs_static(filename: str) -> Response:
        # send_from_directory refuses paths escaping the directory (404).
        try:
            return await send_from_directory(SWAGGER_STATIC, filename)
        except OSError:
            # A name the file system refuses outright (ENAMETOOLONG...): not found.
            raise NotFound() from None

    app.register_blueprint(devices.blueprint)
    ops.register(app, config, app.extensions["mqttgate"])
    return app
