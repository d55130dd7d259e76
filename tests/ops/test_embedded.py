"""Embedded mode: private PostgreSQL + nats-server as children, reused data."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest
import trio

from mqttgate.config import Address, ConfigError
from mqttgate.embedded import (
    EmbeddedError,
    Paths,
    RunAs,
    banner,
    find_nats_server,
    find_postgres_bindir,
    load_or_create_token,
    nats_config_text,
    open_embedded,
    postgres_identity,
    prepare_dirs,
)
from mqttgate.supervisor import Endpoints, run
from tests.conftest import make_config, port_of
from tests.registry.http import request


@pytest.fixture
def data_dir() -> Iterator[str]:
    """A data directory the ``postgres`` user can reach when we run as root
    (pytest's tmp_path sits under a 0700 directory)."""
    base = tempfile.mkdtemp(prefix="mqttgate-emb-", dir="/tmp")
    os.chmod(base, 0o711)
    yield os.path.join(base, "data")
    shutil.rmtree(base, ignore_errors=True)


def test_token_is_created_once_with_mode_0600(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "api-token")
    token, created = load_or_create_token(path)
    assert created
    assert len(token) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created_again = load_or_create_token(path)
    assert (again, created_again) == (token, False)


def test_banner_shows_the_token_once_and_reads_it_from_the_file_after() -> None:
    config = make_config(http_listen=Address("0.0.0.0", 9091), mqtt_listen=Address("0.0.0.0", 1883))
    first = banner(config, "/d/api-token", new_token="SECRET")
    assert "SECRET" in first
    assert "http://127.0.0.1:9091" in first
    assert "curl -s -X POST http://127.0.0.1:9091/devices" in first
    assert 'Bearer $(cat /d/api-token)' in first
    assert "mosquitto_pub -h 127.0.0.1 -p 1883" in first
    later = banner(config, "/d/api-token")
    assert "SECRET" not in later
    assert "in /d/api-token" in later
    given = banner(config, None)
    assert "Bearer $MQTTGATE_API_TOKEN" in given


def test_nats_config_limits_jetstream_and_uses_a_random_loopback_port() -> None:
    text = nats_config_text(Paths("/data"))
    assert "host: 127.0.0.1" in text
    assert "port: -1" in text
    assert 'store_dir: "/data/nats"' in text
    assert "max_file_store:" in text and "max_memory_store:" in text


def test_binaries_are_found() -> None:
    assert os.access(find_nats_server(), os.X_OK)
    bindir = find_postgres_bindir()
    assert os.access(os.path.join(bindir, "initdb"), os.X_OK)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to the postgres user")
def test_root_refuses_a_data_dir_postgres_cannot_reach(data_dir: str) -> None:
    hidden = os.path.join(os.path.dirname(data_dir), "private")
    os.makedirs(hidden, mode=0o700)
    os.chmod(hidden, 0o700)
    run_as = postgres_identity()
    assert run_as.name == "postgres"
    with pytest.raises(ConfigError) as caught:
        prepare_dirs(Paths(os.path.join(hidden, "data")), run_as)
    assert caught.value.source == "MQTTGATE_DATA_DIR"
    assert f"cannot enter {hidden};" in caught.value.message


def test_non_root_does_not_switch_user() -> None:
    assert RunAs(1000, 1000, None).popen_options() == {}


async def nats_info(url: str) -> dict[str, object]:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        data = b""
        while b"\r\n" not in data:
            data += await stream.receive_some(4096)
    line = data.split(b"\r\n", 1)[0].decode()
    assert line.startswith("INFO ")
    info: dict[str, object] = json.loads(line[5:])
    return info


@pytest.mark.slow
async def test_embedded_services_run_stop_and_keep_their_data(data_dir: str) -> None:
    config = make_config(
        data_dir=data_dir, allow_anonymous=False, forward=True, api_token=None
    )
    out = io.StringIO()
    with trio.fail_after(60):
        async with open_embedded(config, announce=out) as effective:
            token = effective.api_token
            assert token
            assert token in out.getvalue()  # shown once, at creation
            assert effective.database_url and effective.database_url.startswith("postgresql://")
            info = await nats_info(effective.nats_url)
            assert info.get("jetstream") is True

            # The daemon on top (forwarding off: that path belongs to the forwarder).
            daemon_config = make_config(
                data_dir=data_dir, allow_anonymous=False, forward=False,
                database_url=effective.database_url, api_token=token,
            )
            # The daemon must stop before the services, as in the supervisor:
            # run it in a nested nursery inside the context.
            async with trio.open_nursery() as nursery:
                shutdown = trio.Event()
                async def runner(*, task_status: trio.TaskStatus[Endpoints]) -> None:
                    await run(daemon_config, shutdown=shutdown, install_signal_handlers=False, task_status=task_status)

                endpoints: Endpoints = await nursery.start(runner)
                http = port_of(endpoints.http)
                ready = await request(http, "GET", "/readyz")
                assert ready.status == 200, ready.body
                assert ready.json()["checks"]["store"] == "ok"
                created = await request(http, "POST", "/devices", token=token, json_body={"type": "sensor"})
                assert created.status == 201, created.body
                device_id = created.json()["id"]
                shutdown.set()
            nats_url = effective.nats_url
    pgdata = Paths(data_dir).postgres
    # Both children are gone: PostgreSQL removed its socket and pid file, NATS refuses.
    assert not {".s.PGSQL.5432", "postmaster.pid"} & set(os.listdir(pgdata))
    with pytest.raises(OSError):
        await nats_info(nats_url)

    # Second start: same token (not shown again), same database content.
    out2 = io.StringIO()
    with trio.fail_after(60):
        async with open_embedded(config, announce=out2) as again:
            assert again.api_token == token
            assert token not in out2.getvalue()
            daemon_config = make_config(
                allow_anonymous=False, forward=False, database_url=again.database_url, api_token=token
            )
            async with trio.open_nursery() as nursery:
                shutdown = trio.Event()
                async def runner2(*, task_status: trio.TaskStatus[Endpoints]) -> None:
                    await run(daemon_config, shutdown=shutdown, install_signal_handlers=False, task_status=task_status)

                endpoints = await nursery.start(runner2)
                http = port_of(endpoints.http)
                fetched = await request(http, "GET", f"/devices/{device_id}", token=token)
                assert fetched.status == 200, fetched.body
                shutdown.set()


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


@pytest.mark.slow
async def test_a_dying_child_stops_the_daemon(data_dir: str) -> None:
    import glob
    import signal

    config = make_config(data_dir=data_dir, forward=True)
    with trio.fail_after(60), pytest.raises(BaseExceptionGroup) as caught:
        async with open_embedded(config, announce=io.StringIO()):
            [ports] = glob.glob(os.path.join(Paths(data_dir).nats, "*.ports"))
            pid = int(ports.rsplit("_", 1)[1].removesuffix(".ports"))
            os.kill(pid, signal.SIGKILL)
            await trio.sleep_forever()  # cancelled by the child's crash
    leaves = _leaves(caught.value)
    assert any(isinstance(leaf, EmbeddedError) and "nats" in str(leaf) for leaf in leaves), leaves
    # PostgreSQL was stopped on the way out.
    assert "postmaster.pid" not in os.listdir(Paths(data_dir).postgres)


DRIVER = """
import sys, trio
from mqttgate import logs, supervisor
from mqttgate.config import Address, Config

config = Config(data_dir=sys.argv[1], mqtt_listen=Address("127.0.0.1", 0),
                http_listen=Address("127.0.0.1", 0), forward=True, allow_anonymous=True,
                shutdown_timeout=5.0, embedded=True)
logs.configure("info", "json")
trio.run(supervisor.run, config)
"""


@pytest.mark.slow
async def test_ctrl_c_to_the_process_group_stops_daemon_then_children(data_dir: str) -> None:
    """The terminal sends SIGINT to the whole foreground group: the children,
    in their own session, must not die first (the daemon would see a crash)."""
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", DRIVER, data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    assert proc.stdout is not None
    buffer = b""
    with trio.fail_after(60):
        while b'"event": "ready"' not in buffer:
            chunk = await proc.stdout.receive_some(65536)
            assert chunk, buffer.decode(errors="replace")
            buffer += chunk
    os.killpg(proc.pid, signal.SIGINT)
    with trio.fail_after(30):
        async for chunk in proc.stdout:
            buffer += chunk
        code = await proc.wait()
    text = buffer.decode(errors="replace")
    assert code == 0, text
    assert "embedded_child_exited" not in text
    events = [json.loads(line)["event"] for line in text.splitlines() if line.startswith("{")]
    # The services (forwarder flush, store) close before the children stop.
    assert events.index("front_stopped") < events.index("embedded_stopping")
    assert events.index("forwarder_drained") < events.index("embedded_stopping")
    assert "postmaster.pid" not in os.listdir(Paths(data_dir).postgres)
