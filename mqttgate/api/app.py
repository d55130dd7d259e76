"""The Quart-Trio application factory: explicit dependencies, no globals."""

from __future__ import annotations

from typing import Any

from quart_trio import QuartTrio

from mqttgate.api.server import PatchedQuartTrio
from mqttgate.config import Config


def create_app(config: Config, **services: Any) -> QuartTrio:
    app = PatchedQuartTrio("mqttgate")
    app.extensions["mqttgate"] = {"config": config, **services}

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, str], int]:
        return {"status": "ok"}, 200

    return app
