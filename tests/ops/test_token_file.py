"""MQTTGATE_API_TOKEN_FILE: the API token read from a file, created once when missing."""

from __future__ import annotations

import multiprocessing
import os
import stat
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from mqttgate.api.app import api_token
from mqttgate.config import ConfigError
from mqttgate.tokenfile import load_or_create_token
from tests.conftest import StartDaemon, make_config, port_of
from tests.registry.conftest import registry_config
from tests.registry.http import request


def test_missing_file_is_created_private_and_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "api-token"
    config = make_config(api_token=None, api_token_file=str(path))
    token = api_token(config, has_registry=True)
    assert token and len(token) >= 32
    assert path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    err = capsys.readouterr().err
    assert str(path) in err and token not in err  # shown where it is, never the secret itself
    assert api_token(config, has_registry=True) == token
    assert capsys.readouterr().err == ""  # nothing announced when it already existed


def test_existing_file_is_used_and_the_variable_wins(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("from-the-file\n")
    assert api_token(make_config(api_token=None, api_token_file=str(path)), has_registry=True) == "from-the-file"
    assert api_token(make_config(api_token="from-env", api_token_file=str(path)), has_registry=True) == "from-env"
    assert path.read_text() == "from-the-file\n"


def test_a_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, logged: list[MutableMapping[str, Any]]
) -> None:
    path = tmp_path / "api-token"
    path.write_text("shared\n")
    os.chmod(path, 0o644)
    assert api_token(make_config(api_token=None, api_token_file=str(path)), has_registry=True) == "shared"
    warnings = [e for e in logged if e["event"] == "api_token_file_readable"]
    assert [(w["path"], w["mode"]) for w in warnings] == [(str(path), "0o644")]
    os.chmod(path, 0o600)
    api_token(make_config(api_token=None, api_token_file=str(path)), has_registry=True)
    assert len([e for e in logged if e["event"] == "api_token_file_readable"]) == 1


def test_empty_file_gets_a_token(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text("")
    token = api_token(make_config(api_token=None, api_token_file=str(path)), has_registry=True)
    assert token and path.read_text().strip() == token


def _start_at_once(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        results.put(("ok", load_or_create_token(path)[0]))
    except Exception as error:  # reported to the test body, asserted there
        results.put(("error", repr(error)))


def test_processes_starting_at_once_all_get_the_one_token_in_the_file(tmp_path: Path) -> None:
    """Regression: the file was created empty (O_EXCL) and written after; a
    second process that found it empty took it for an interrupted start,
    deleted it and wrote its own, so the first ran with a token that was
    not in the file (about 4 rounds in 10 with 6 processes), or failed."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(30):
        path = str(tmp_path / f"api-token-{round_}")
        barrier, results = fork.Barrier(6), fork.Queue()
        workers = [fork.Process(target=_start_at_once, args=(path, barrier, results)) for _ in range(6)]
        for worker in workers:
            worker.start()
        got = [results.get(timeout=10) for _ in workers]
        for worker in workers:
            worker.join(timeout=10)
        in_file = Path(path).read_text().strip()
        assert got == [("ok", in_file)] * 6, (round_, got, in_file)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == sorted(f"api-token-{i}" for i in range(30))  # no temporary files left


def test_unusable_path_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    config = make_config(api_token=None, api_token_file=str(tmp_path / "no-such-dir" / "api-token"))
    with pytest.raises(ConfigError) as caught:
        api_token(config, has_registry=True)
    assert "MQTTGATE_API_TOKEN_FILE" in str(caught.value)


async def test_daemon_protects_the_api_with_the_file_token(
    start_daemon: StartDaemon, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "api-token"
    config = registry_config(database_url, api_token=None, api_token_file=str(path))
    port = port_of((await start_daemon(config)).http)
    token = path.read_text().strip()
    assert (await request(port, "POST", "/devices", json_body={"type": "t"})).status == 401
    assert (await request(port, "POST", "/devices", token="wrong", json_body={"type": "t"})).status == 401
    created = await request(port, "POST", "/devices", token=token, json_body={"type": "t"})
    assert created.status == 201, created.body
