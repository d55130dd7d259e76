"""The one nursery that runs mqttgate.

Theory of operation
-------------------
``run(config)`` opens one trio-asyncio loop (asyncpg and nats-py live there),
then starts the components in dependency order, each with ``nursery.start`` so
that it reports readiness (and the addresses it bound) before the next starts:

    store (PostgreSQL)  ->  forwarder (NATS)  ->  broker (MQTT)  ->  API (HTTP)

After the last one a single ``ready`` event lists the bound addresses.

Shutdown has one trigger, the ``shutdown`` event (SIGTERM/SIGINT set it, tests
set it themselves), and one deadline, ``shutdown_timeout`` after the trigger.
The front components (broker, API) return by themselves once it is set: the
broker stops accepting, tells v5 clients DISCONNECT 0x8B and lets in-flight
QoS 1/2 forwards finish. Then the forwarder is closed and flushes what the
broker already acknowledged, then the store closes. Whatever has not finished
when the deadline passes is cancelled.

A crash of any component cancels its siblings and propagates out of ``run``;
``__main__`` logs it and exits non-zero so the orchestrator restarts us.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import trio
import trio_asyncio

from mqttgate.auth import AnonymousAuth, Authenticator
from mqttgate.config import Config, ConfigError
from mqttgate.forward import Forwarder, NullForwarder
from mqttgate.logs import get_logger

log = get_logger("supervisor")


@attrs.frozen
class Endpoints:
    """What the daemon bound, reported to tests through ``task_status``."""

    mqtt: list[str]
    http: list[str]


async def watch_signals(shutdown: trio.Event) -> None:
    """Turn the first SIGTERM/SIGINT into ``shutdown``; return when it is set."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def wait_signal() -> None:
                async for signum in signals:
                    log.info("shutdown_requested", signal=signal.Signals(signum).name)
                    shutdown.set()
                    return

            async def wait_shutdown() -> None:
                await shutdown.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_signal)
            nursery.start_soon(wait_shutdown)


async def ignore_sighup() -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.info("sighup_ignored", detail="nothing to reload: no TLS listener")


@contextlib.asynccontextmanager
async def _open_services(config: Config) -> AsyncIterator[dict[str, Any]]:
    """Store, authenticator and forwarder, opened in order and closed in reverse.

    Each piece is optional: anonymous mode with forwarding off needs neither
    PostgreSQL nor NATS (the conformance and benchmark mode).
    """
    services: dict[str, Any] = {"store": None}
    async with contextlib.AsyncExitStack() as stack:
        if config.database_url:
            from mqttgate.store import Store

            services["store"] = await stack.enter_async_context(Store.open(config))
        elif not config.allow_anonymous:
            raise ConfigError(
                "MQTTGATE_DATABASE_URL",
                "required (the device registry) unless MQTTGATE_ALLOW_ANONYMOUS=true",
            )
        authenticator: Authenticator
        if config.allow_anonymous:
            log.warning(
                "anonymous_access_enabled",
                detail="any client may connect without credentials and with no ACL; development only",
            )
            authenticator = AnonymousAuth()
        else:
            from mqttgate.credentials import DeviceAuth

            device_auth = DeviceAuth(services["store"], config)
            await device_auth.start()
            authenticator = device_auth
        forwarder: Forwarder = NullForwarder()
        if config.forward:
            from mqttgate.forwarder import open_forwarder

            forwarder = await stack.enter_async_context(open_forwarder(config))
        else:
            log.warning("forwarding_disabled", detail="device messages are not sent to NATS")
        services["authenticator"] = authenticator
        services["forwarder"] = forwarder
        yield services


async def run(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    install_signal_handlers: bool = True,
    task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until ``shutdown`` is set (or a signal arrives)."""
    from mqttgate.api.app import create_app
    from mqttgate.api.server import serve_http
    from mqttgate.broker import Broker

    shutdown = shutdown if shutdown is not None else trio.Event()
    log.info("starting", config=config.public_dict())
    if config.mqtts_listen is not None:
        # A bad certificate is a configuration error: fail before opening anything.
        from mqttgate.tls import build_context

        build_context(config.tls_cert_file, config.tls_key_file)
    async with trio_asyncio.open_loop():
        with trio.CancelScope() as deadline_scope:
            async with trio.open_nursery() as root:

                async def arm_deadline() -> None:
                    await shutdown.wait()
                    log.info("shutdown_started", timeout_s=config.shutdown_timeout)
                    deadline_scope.deadline = trio.current_time() + config.shutdown_timeout

                root.start_soon(arm_deadline)
                if install_signal_handlers:
                    root.start_soon(watch_signals, shutdown)
                    if config.mqtts_listen is None:
                        # SIGHUP reloads TLS certificates (tls.py); without
                        # TLS it must not end the daemon (its default action).
                        root.start_soon(ignore_sighup)
                async with contextlib.AsyncExitStack() as embedded:
                    if config.embedded:
                        # Private NATS and PostgreSQL as child processes; they
                        # stop after the services below have closed.
                        from mqttgate.embedded import open_embedded

                        config = await embedded.enter_async_context(open_embedded(config))
                    async with _open_services(config) as services:
                        broker = Broker(config, services["authenticator"], services["forwarder"])
                        if services["store"] is not None:
                            # Other replicas' rotate/disable/delete cut the
                            # device's sessions here too (docs/api.md).
                            services["store"].watch_revocations(broker)
                        async with trio.open_nursery() as front:
                            mqtt = await front.start(broker.serve, shutdown)
                            app = create_app(config, broker=broker, **services)
                            http = await front.start(
                                partial(serve_http, max_connections=config.http_max_connections),
                                app, config.http_listen, shutdown,
                            )
                            endpoints = Endpoints(mqtt=mqtt, http=http)
                            log.info("ready", mqtt=mqtt, http=http)
                            task_status.started(endpoints)
                        log.info("front_stopped")
                root.cancel_scope.cancel()
    if deadline_scope.cancelled_caught:
        log.warning("shutdown_deadline_exceeded", timeout_s=config.shutdown_timeout)
    log.info("stopped")
