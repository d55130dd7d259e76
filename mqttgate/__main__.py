"""The ``mqttgate`` command: ``serve``, ``migrate``, ``logs`` and ``--version``.

Exit status: 0 after a clean shutdown, 1 when a component crashed, 2 for a bad
command line or configuration (one line naming the flag or variable, no
traceback).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence

import trio

from mqttgate import __version__
from mqttgate import config as cfg
from mqttgate.config import Config, ConfigError


def _add_settings(parser: argparse.ArgumentParser) -> None:
    for field in cfg.settings():
        # Booleans work as bare switches too: --embedded means --embedded true.
        switch = field.metadata["parse"] is cfg.parse_bool
        parser.add_argument(
            cfg.flag_name(field.name),
            dest=field.name,
            metavar="BOOL" if switch else "VALUE",
            nargs="?" if switch else None,
            const="true" if switch else None,
            default=None,
            help=f"{field.metadata['help']} [env {cfg.env_name(field.name)}; default {cfg.shown_default(field)}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqttgate", description="MQTT device gateway: broker, provisioning API, NATS forwarder."
    )
    parser.add_argument("--version", action="version", version=f"mqttgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon. Every option can also be set by its environment variable; "
        "flags win over the environment, which wins over the defaults.",
    )
    _add_settings(serve)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _add_settings(migrate)
    _extra_commands(commands)
    return parser


def _extra_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands contributed by other modules (``mqttgate logs``)."""
    import importlib

    try:
        logtool = importlib.import_module("mqttgate.logtool")
    except ImportError:  # pragma: no cover - logtool is part of the package
        return
    logtool.add_parser(commands)


def load_config(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    flags = {field.name: getattr(args, field.name, None) for field in cfg.settings()}
    return cfg.load(flags, environ)


def _fail(message: str) -> int:
    print(f"mqttgate: error: {message}", file=sys.stderr)
    return 2


def _serve(config: Config) -> int:
    from mqttgate import logs, supervisor

    logs.configure(config.log_level, config.log_format)
    log = logs.get_logger("supervisor")
    _tune_gc()
    try:
        trio.run(supervisor.run, config)
    except KeyboardInterrupt:
        return 130
    except BaseException as error:
        leaves = list(_leaves(error))
        config_errors = [leaf for leaf in leaves if isinstance(leaf, ConfigError)]
        if config_errors:
            return _fail(str(config_errors[0]))
        for leaf in leaves:
            log.error("crashed", error=repr(leaf), exc_info=leaf)
        return 1
    return 0


def _tune_gc() -> None:
    """Collect the young generation every 50,000 allocations instead of 700.

    Every message allocates a few short-lived, acyclic objects (packet,
    message, ticket), so the default threshold runs a gen-0 collection every
    hundred or so messages, for nothing: 3-4 % of forwarded QoS 1 throughput
    (bench/forward.py). Reference counting still frees those objects at once;
    only garbage cycles wait longer. What was allocated at start-up (modules,
    settings) is moved out of the collector's way for good.
    """
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


def _leaves(error: BaseException) -> list[BaseException]:
    """The individual exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _migrate(config: Config) -> int:
    from mqttgate import logs

    logs.configure(config.log_level, config.log_format)
    try:
        from mqttgate.store import migrate_command
    except ImportError:
        return _fail("migrate: the device store is not available in this build")
    result: int = trio.run(migrate_command, config)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[Config], int]] = {"serve": _serve, "migrate": _migrate}
    if args.command in handlers:
        try:
            config = load_config(args, dict(os.environ))
        except ConfigError as error:
            return _fail(str(error))
        return handlers[args.command](config)
    if args.command is not None and hasattr(args, "run"):
        result: int = args.run(args)
        return result
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
