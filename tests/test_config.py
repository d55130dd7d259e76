"""Configuration: defaults < environment < flags; bad values name their source."""

from __future__ import annotations

import pathlib

import attrs
import pytest

from mqttgate import config as cfg
from mqttgate.__main__ import build_parser, load_config
from mqttgate.config import Address, Config, ConfigError


def load(argv: list[str], env: dict[str, str] | None = None) -> Config:
    args = build_parser().parse_args(["serve", *argv])
    return load_config(args, env or {})


def test_defaults_match_the_issue_table() -> None:
    config = load([])
    assert config.mqtt_listen == Address("0.0.0.0", 1883)
    assert config.http_listen == Address("0.0.0.0", 9091)
    assert config.database_url is None
    assert config.nats_url == "nats://127.0.0.1:4222"
    assert config.api_token is None
    assert config.log_level == "info"
    assert config.log_format == "json"
    assert config.shutdown_timeout == 10.0
    assert config.allow_anonymous is False  # deny by default


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"MQTTGATE_MQTT_LISTEN": "127.0.0.1:1999", "MQTTGATE_LOG_LEVEL": "debug"}
    assert load([], env).mqtt_listen == Address("127.0.0.1", 1999)
    config = load(["--mqtt-listen", "[::1]:2000"], env)
    assert config.mqtt_listen == Address("::1", 2000)
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("7", 7.0), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert load(["--shutdown-timeout", text]).shutdown_timeout == seconds


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("256KiB", 262144), ("1MiB", 1048576)])
def test_sizes(text: str, size: int) -> None:
    assert cfg.parse_size(text) == size


@pytest.mark.parametrize(
    ("argv", "env", "source"),
    [
        (["--mqtt-listen", "nonsense"], {}, "--mqtt-listen"),
        (["--mqtt-listen", "host:99999"], {}, "--mqtt-listen"),
        ([], {"MQTTGATE_HTTP_LISTEN": ":80"}, "MQTTGATE_HTTP_LISTEN"),
        ([], {"MQTTGATE_SHUTDOWN_TIMEOUT": "soon"}, "MQTTGATE_SHUTDOWN_TIMEOUT"),
        (["--shutdown-timeout", "0s"], {}, "--shutdown-timeout"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--allow-anonymous", "maybe"], {}, "--allow-anonymous"),
        (["--max-connections", "0"], {}, "--max-connections"),
        ([], {"MQTTGATE_MAX_CONECTIONS": "5"}, "MQTTGATE_MAX_CONECTIONS"),
    ],
)
def test_bad_values_name_their_source(argv: list[str], env: dict[str, str], source: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(argv, env)
    assert caught.value.source == source
    assert str(caught.value).startswith(source + ": ")


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        load([]).log_level = "debug"  # type: ignore[misc]


def test_secrets_are_masked_in_repr_and_public_dict() -> None:
    config = load([], {"MQTTGATE_API_TOKEN": "s3cret-token", "MQTTGATE_DATABASE_URL": "postgresql://u:pw@h/db"})
    assert "s3cret" not in repr(config)
    assert "pw@" not in repr(config)
    public = config.public_dict()
    assert public["api_token"] == "set"
    with_credentials = load([], {"MQTTGATE_NATS_URL": "nats://svc:n4ts-pw@a:4222,tls://t0ken@b:4222"})
    assert with_credentials.public_dict()["nats_url"] == "nats://***@a:4222,tls://***@b:4222"
    assert public["database_url"] == "set"


def test_public_dict_shows_unset_settings_as_help_does() -> None:
    # The `starting` log event: "off" / "none" as in --help, never Python's "None".
    public = load([], {}).public_dict()
    assert public["mqtts_listen"] == "off"
    assert public["api_token_file"] == "none"
    assert "None" not in public.values()


def test_every_setting_has_help_and_follows_the_naming_pattern() -> None:
    for field in cfg.settings():
        assert field.metadata["help"], field.name
        assert cfg.env_name(field.name) == "MQTTGATE_" + field.name.upper()
        assert cfg.flag_name(field.name) == "--" + field.name.replace("_", "-")


def test_serve_help_lists_every_option_with_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in cfg.settings():
        assert cfg.flag_name(field.name) in text
        assert f"env {cfg.env_name(field.name)}" in text
        assert f"default {cfg.shown_default(field)}" in " ".join(text.split())


def test_readme_configuration_table_is_generated_from_the_config() -> None:
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert cfg.settings_table() in readme, (
        "README.md's configuration table is stale: paste the output of "
        "`python -c 'from mqttgate.config import settings_table; print(settings_table())'`"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--embedded"], True),
        (["--embedded", "--allow-anonymous"], True),
        (["--embedded", "false"], False),
        (["--embedded", "off", "--log-level", "debug"], False),
    ],
)
def test_boolean_flags_work_as_bare_switches(argv: list[str], expected: bool) -> None:
    # The README's first command is `mqttgate serve --embedded`.
    assert load(argv).embedded is expected
