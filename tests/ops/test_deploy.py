"""Container and Kubernetes files, validated without Docker or a cluster:
manifests against the Kubernetes schemas (kubernetes-validate ships them, so
this runs offline), the Dockerfile with hadolint, the compose file's shape, and
every MQTTGATE_* name against the real settings."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import trio
import yaml

from mqttgate.config import env_name, parse_duration, settings
from tests.conftest import StartDaemon, make_config, port_of

ROOT = pathlib.Path(__file__).parent.parent.parent
DEPLOY = ROOT / "deploy"
VENV_BIN = pathlib.Path(sys.executable).parent
SETTINGS = {env_name(field.name) for field in settings()}
#: Oldest version we support (lifecycle.preStop.sleep is on by default from 1.30) and the newest shipped.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
ENV_NAME = re.compile(r"\bMQTTGATE_[A-Z0-9_]+\b")


def manifest_files() -> list[pathlib.Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_resources() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (doc["kind"], doc["metadata"]["name"]): doc for path in manifest_files() for doc in documents(path)
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_matches_the_kubernetes_schema(path: pathlib.Path, version: str) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        # Raises ValidationError naming the bad field; strict rejects unknown fields.
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomizations_list_existing_files_and_the_namespace() -> None:
    main = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert main["namespace"] == "scadable-io"
    listed = set(main["resources"])
    for name in listed:
        assert (DEPLOY / name).is_file(), name
    # Everything at the top level is in the kustomization (nothing forgotten).
    assert listed == {p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"}
    nginx = yaml.safe_load((DEPLOY / "ingress-nginx" / "kustomization.yaml").read_text())
    assert nginx["namespace"] == "ingress-nginx"
    assert nginx["resources"] == ["tcp-services.yaml"]
    tcp = documents(DEPLOY / "ingress-nginx" / "tcp-services.yaml")[0]
    assert tcp["data"] == {"1883": "scadable-io/mqttgate:1883"}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container["env"]}


def test_deployment_probes_security_and_shutdown_budget() -> None:
    resources = all_resources()
    deployment = resources[("Deployment", "mqttgate")]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    # Service links would inject MQTTGATE_PORT etc., which config.load refuses.
    assert pod["enableServiceLinks"] is False
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = _env(container)
    shutdown = parse_duration(env["MQTTGATE_SHUTDOWN_TIMEOUT"]["value"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown
    # Secrets come from the Secret, never inline.
    for name in ("MQTTGATE_DATABASE_URL", "MQTTGATE_API_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mqttgate"
    secret = resources[("Secret", "mqttgate")]
    for name in ("MQTTGATE_DATABASE_URL", "MQTTGATE_API_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"mqtt": 1883, "http": 9091}


def test_service_pdb_ingress_and_statefulsets() -> None:
    resources = all_resources()
    service = resources[("Service", "mqttgate")]
    assert {p["port"] for p in service["spec"]["ports"]} == {1883, 9091}
    selector = resources[("Deployment", "mqttgate")]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert resources[("PodDisruptionBudget", "mqttgate")]["spec"]["selector"]["matchLabels"] == selector
    backend = resources[("Ingress", "mqttgate")]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"] == {"name": "mqttgate", "port": {"name": "http"}}
    postgres = resources[("StatefulSet", "postgres")]
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    nats = resources[("StatefulSet", "nats")]
    assert "--jetstream" in _container(nats)["args"]
    # The URLs the gateway uses name these Services.
    env = _env(_container(resources[("Deployment", "mqttgate")]))
    assert env["MQTTGATE_NATS_URL"]["value"] == "nats://nats:4222"
    assert "@postgres:5432/" in resources[("Secret", "mqttgate")]["stringData"]["database-url"]


def test_every_env_var_name_is_a_setting() -> None:
    """Names in the files' content (comments excluded: they may mention
    Kubernetes' injected MQTTGATE_PORT or a family like MQTTGATE_NATS_*)."""
    texts = {"Dockerfile": "\n".join(
        line for line in dockerfile().splitlines() if not line.lstrip().startswith("#")
    )}
    for path in [ROOT / "docker-compose.yml", *DEPLOY.rglob("*.yaml")]:
        texts[path.name] = json.dumps(list(yaml.safe_load_all(path.read_text())))
    used: dict[str, set[str]] = {}
    for file, text in texts.items():
        for name in ENV_NAME.findall(text):
            used.setdefault(name, set()).add(file)
    unknown = {name: files for name, files in used.items() if name not in SETTINGS}
    assert not unknown, f"not settings of mqttgate.config: {unknown}"
    assert {"MQTTGATE_DATABASE_URL", "MQTTGATE_API_TOKEN", "MQTTGATE_NATS_URL"} <= set(used)


# ------------------------------------------------------------------ Dockerfile


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = dockerfile()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) >= 2, "multi-stage"
    assert all(base.startswith("python:3.11-slim") for base in froms)
    final = text.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build" in final
    assert not re.search(r"apt-get|gcc|build-essential", final), "no build tools in the final image"
    user = re.search(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert user and not user.group(1).startswith(("root", "0"))
    assert re.search(r"^EXPOSE\s+1883\s+9091\s*$", final, re.MULTILINE)
    assert 'ENTRYPOINT ["mqttgate"]' in final
    assert 'CMD ["serve"]' in final
    assert "HEALTHCHECK" in final


def healthcheck_command() -> list[str]:
    match = re.search(r"^\s*CMD (\[.*\])\s*$", dockerfile().split("HEALTHCHECK", 1)[1], re.MULTILINE)
    assert match
    command: list[str] = json.loads(match.group(1))
    return command


async def test_dockerfile_healthcheck_command_probes_the_daemon(start_daemon: StartDaemon) -> None:
    endpoints = await start_daemon(make_config())
    command = healthcheck_command()
    assert command[0] == "python"
    command[0] = sys.executable
    env = {**os.environ, "MQTTGATE_HTTP_LISTEN": f"0.0.0.0:{port_of(endpoints.http)}"}
    ok = await trio.run_process(command, env=env, check=False, capture_stderr=True)
    assert ok.returncode == 0, ok.stderr
    # Against a port where nothing listens it fails (non-zero exit = unhealthy).
    from tests.conftest import free_port

    env["MQTTGATE_HTTP_LISTEN"] = f"0.0.0.0:{free_port()}"
    bad = await trio.run_process(command, env=env, check=False, capture_stderr=True)
    assert bad.returncode != 0


def test_entrypoint_commands_run() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}
    # The image's ENTRYPOINT + CMD with --help: the console script exists and parses.
    helped = subprocess.run(
        [str(VENV_BIN / "mqttgate"), "serve", "--help"], capture_output=True, text=True, timeout=60, env=clean
    )
    assert helped.returncode == 0, helped.stderr
    for name in ("MQTTGATE_DATABASE_URL", "MQTTGATE_API_TOKEN", "MQTTGATE_EMBEDDED"):
        assert name in helped.stdout
    version = subprocess.run(
        [sys.executable, "-m", "mqttgate", "--version"], capture_output=True, text=True, timeout=60, env=clean
    )
    assert version.returncode == 0
    assert version.stdout.startswith("mqttgate ")


# ------------------------------------------------------------------ compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_services_health_and_order() -> None:
    data = compose()
    services = data["services"]
    assert set(services) == {"mqttgate", "postgres", "nats"}
    for name, service in services.items():
        assert "test" in service["healthcheck"], name
    gate = services["mqttgate"]
    assert gate["build"] == "."
    assert gate["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "nats": {"condition": "service_healthy"},
    }
    assert {"1883:1883", "9091:9091"} <= set(gate["ports"])
    for name in ("postgres", "nats"):
        for volume in services[name]["volumes"]:
            assert volume.split(":", 1)[0] in data["volumes"]
    assert "--jetstream" in services["nats"]["command"]
    assert parse_duration(gate["stop_grace_period"]) > parse_duration(gate["environment"]["MQTTGATE_SHUTDOWN_TIMEOUT"])


def test_compose_env_is_valid_config() -> None:
    """The mqttgate service's environment loads as a Config, as compose fills it
    when MQTTGATE_API_TOKEN is not set: the token then comes from a file on the
    service's own volume (the root file system is read-only)."""
    from mqttgate.config import load

    gate = compose()["services"]["mqttgate"]
    environment = dict(gate["environment"])
    assert set(environment) <= SETTINGS
    assert environment["MQTTGATE_API_TOKEN"] == "${MQTTGATE_API_TOKEN:-}"  # optional: no ":?"
    environment["MQTTGATE_API_TOKEN"] = ""  # what compose substitutes when it is unset
    config = load({}, environment)
    assert config.api_token is None and config.api_token_file is not None
    mounts = {volume.split(":", 1)[1]: volume.split(":", 1)[0] for volume in gate["volumes"]}
    token_dir = os.path.dirname(config.api_token_file)
    assert token_dir in mounts and mounts[token_dir] in compose()["volumes"]
    assert gate["read_only"] is True
    assert config.nats_url == "nats://nats:4222"
    assert config.database_url is not None and "@postgres:5432/" in config.database_url
    pg = compose()["services"]["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in config.database_url
    assert config.database_url.endswith("/" + pg["POSTGRES_DB"])


def test_deployment_env_is_valid_config() -> None:
    from mqttgate.config import load

    env = _env(_container(all_resources()[("Deployment", "mqttgate")]))
    values = {name: item.get("value", "from-secret") for name, item in env.items()}
    values["MQTTGATE_DATABASE_URL"] = "postgresql://u:p@postgres:5432/mqttgate"
    config = load({}, values)
    assert config.shutdown_timeout == 20.0
    assert config.argon2_threads == 2
