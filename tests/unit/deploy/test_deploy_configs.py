"""The deployment examples hold together: compose, Kubernetes, systemd, env files.

Every YAML file is parsed; the structure is checked against the project itself (CLI
subcommands, settings names and values, Dockerfile targets, API routes, health-check
roles). Where the real validators are installed they run too: ``docker compose
config`` / ``docker-compose config``, ``kubernetes-validate`` (schemas of the
Kubernetes API, strict), ``kubectl kustomize`` and ``systemd-analyze verify``.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.support import (
    DEPLOY,
    DOCKERFILE,
    cli_accepts,
    find_tool,
    interpolate,
    load_yaml_documents,
    settings_from_env,
)

COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
COMPOSE_ENV = {"POSTGRES_PASSWORD": "not-a-real-password"}


def _healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("triage_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile_targets() -> set[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return {
        m.lower()
        for m in re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE)
    }


def _settings_names() -> set[str]:
    from worklist.core.settings import Settings

    return {f"TRIAGE_{name.upper()}" for name in Settings.model_fields} | {"TRIAGE_CONFIG"}


def _api_paths() -> set[str]:
    from fastapi.routing import iter_route_contexts
    from sqlalchemy.orm import sessionmaker

    from worklist.core.settings import Settings
    from worklist.http.app import create_app

    app = create_app(Settings(), sessionmaker())
    return {route.path or "" for route in iter_route_contexts(app.routes)}


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert COMPOSE in files and len(files) >= 8
    for path in files:
        assert load_yaml_documents(path), f"{path} holds no document"


# ---- docker compose ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_yaml_documents(COMPOSE)
    return interpolate(doc, COMPOSE_ENV)


def _node_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("cxr-triage-node:")
    }


def test_compose_has_the_services(compose) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "migrate",
        "scp",
        "api",
        "inference-worker",
        "delivery-worker",
        "orthanc",
    } <= set(services)
    assert services["orthanc"].get("profiles") == ["demo"]
    for name in ("postgres", "redis", "scp", "api", "inference-worker", "delivery-worker"):
        assert "profiles" not in services[name], f"{name} must start by default"


def test_compose_refuses_to_start_without_a_password() -> None:
    (doc,) = load_yaml_documents(COMPOSE)
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(doc, {})


def test_compose_node_services_use_dockerfile_targets_and_cli_commands(compose) -> None:
    targets = _dockerfile_targets()
    services = _node_services(compose)
    assert set(services) == {"migrate", "scp", "api", "inference-worker", "delivery-worker"}
    for name, svc in services.items():
        target = svc["build"]["target"]
        assert target in targets, f"{name}: build target {target} not in the Dockerfile"
        assert svc["image"] == f"cxr-triage-node:{target}", name
        assert cli_accepts(svc["command"]), f"{name}: `triage-node {svc['command']}` rejected"
    assert services["scp"]["command"] == ["scp"]
    assert services["api"]["command"] == ["api"]
    assert services["inference-worker"]["command"][:3] == ["worker", "--queues", "inference"]
    assert services["delivery-worker"]["command"][:3] == ["worker", "--queues", "delivery"]
    assert services["migrate"]["command"] == ["db", "upgrade"]


def test_compose_gpu_workers_reserve_an_nvidia_gpu(compose) -> None:
    worker = compose["services"]["inference-worker"]
    assert worker["build"]["target"] == "gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_spool_is_shared_and_start_order_is_safe(compose) -> None:
    services = _node_services(compose)
    for name in ("scp", "inference-worker", "delivery-worker", "api"):
        svc = services[name]
        data_dir = svc["environment"]["TRIAGE_DATA_DIR"]
        assert f"triage-data:{data_dir}" in svc["volumes"], name
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_health_checks_use_known_roles(compose) -> None:
    roles = set(_healthcheck_module().ROLES)
    for name, svc in _node_services(compose).items():
        if name == "migrate":
            continue
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/opt/triage/healthcheck.py"], name
        assert test[test.index("--role") + 1] in roles


def test_compose_environment_is_valid_settings(compose, monkeypatch) -> None:
    names = _settings_names()
    for name, svc in _node_services(compose).items():
        env = svc["environment"]
        unknown = {k for k in env if k.startswith("TRIAGE_")} - names
        assert not unknown, f"{name}: the node refuses unknown settings {unknown}"
        settings = settings_from_env(monkeypatch, env)
        assert settings.broker_url.startswith("redis://")
        assert settings.effective_database_url.startswith("postgresql")


def test_docker_compose_config_validates() -> None:
    docker = find_tool("docker")
    commands: list[list[str]] = []
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], check=False, capture_output=True, timeout=30
        ).returncode
        == 0
    ):
        commands.append([docker, "compose"])
    legacy = find_tool("docker-compose")
    if legacy:
        commands.append([legacy])
    if not commands:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    import os

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    for command in commands:
        for profile in ([], ["--profile", "demo"]):
            result = subprocess.run(
                [*command, "-f", str(COMPOSE), *profile, "config", "-q"],
                env={**base_env, **COMPOSE_ENV},
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), "config", "-q"],
            env={k: v for k, v in base_env.items() if k != "POSTGRES_PASSWORD"},
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, "compose must refuse to run without POSTGRES_PASSWORD"


# ---- Kubernetes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            doc["__file__"] = path.name
            docs.append(doc)
    return docs


def _of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def _configmap_env(k8s) -> dict[str, str]:
    return _of_kind(k8s, "ConfigMap")["triage-config"]["data"]


def test_k8s_has_the_resources(k8s) -> None:
    kinds = {(d["kind"], d.get("metadata", {}).get("name")) for d in k8s}
    assert ("Namespace", "triage") in kinds
    assert ("ConfigMap", "triage-config") in kinds
    assert ("Secret", "triage-secrets") in kinds
    assert ("PersistentVolumeClaim", "triage-spool") in kinds
    assert set(_of_kind(k8s, "Deployment")) == {
        "triage-scp",
        "triage-api",
        "triage-inference-worker",
        "triage-delivery-worker",
    }
    for doc in k8s:
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == "triage", doc["__file__"]


def test_k8s_kustomization_lists_everything_but_the_secret_example(k8s) -> None:
    (kustomization,) = [d for d in k8s if d["kind"] == "Kustomization"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.example.yaml"}


def test_k8s_secret_example_has_no_working_password(k8s) -> None:
    secret = _of_kind(k8s, "Secret")["triage-secrets"]
    assert "data" not in secret, "base64 data would hide a real value"
    for key, value in secret["stringData"].items():
        if "://" in value:
            userinfo = value.split("://", 1)[1].split("@", 1)[0]
            assert ":" in userinfo and userinfo.split(":", 1)[1] == "<password>", key


def test_k8s_deployments_are_probed_non_root_and_run_cli_commands(k8s) -> None:
    targets = _dockerfile_targets()
    roles = set(_healthcheck_module().ROLES)
    paths = _api_paths()
    for name, deployment in _of_kind(k8s, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] != 0
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
            assert cli_accepts(container["args"]), f"{where}: {container['args']}"
            tag = container["image"].rsplit(":", 1)[1]
            assert tag.rsplit("-", 1)[1] in targets, f"{where}: {tag} is no Dockerfile target"
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe_kind in ("livenessProbe", "readinessProbe"):
                probe = container.get(probe_kind)
                assert probe, f"{where} has no {probe_kind}"
                if "httpGet" in probe:
                    assert probe["httpGet"]["path"] in {"/healthz", "/readyz"}
                    assert probe["httpGet"]["path"] in paths
                    assert probe["httpGet"]["port"] in port_names
                elif "tcpSocket" in probe:
                    assert probe["tcpSocket"]["port"] in port_names
                else:
                    command = probe["exec"]["command"]
                    assert command[:2] == ["python", "/opt/triage/healthcheck.py"]
                    assert command[command.index("--role") + 1] in roles
    api = _of_kind(k8s, "Deployment")["triage-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_k8s_gpu_workers_request_gpus(k8s) -> None:
    deployment = _of_kind(k8s, "Deployment")["triage-inference-worker"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].endswith("-gpu")
    assert container["args"][:3] == ["worker", "--queues", "inference"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert "nvidia.com/gpu.present" in pod["nodeSelector"]
    assert deployment["spec"]["replicas"] >= 1
    for name, other in _of_kind(k8s, "Deployment").items():
        if name != "triage-inference-worker":
            limits = other["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert "nvidia.com/gpu" not in limits, name


def test_k8s_spool_is_read_write_many_and_mounted_at_the_data_dir(k8s) -> None:
    pvc = _of_kind(k8s, "PersistentVolumeClaim")["triage-spool"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    data_dir = _configmap_env(k8s)["TRIAGE_DATA_DIR"]
    for name, deployment in _of_kind(k8s, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "triage-spool"
        }
        mounts = {
            m["mountPath"]
            for c in pod["containers"]
            for m in c["volumeMounts"]
            if m["name"] in volumes
        }
        assert mounts == {data_dir}, name


def test_k8s_services_expose_dicom_and_http(k8s) -> None:
    services = _of_kind(k8s, "Service")
    deployments = _of_kind(k8s, "Deployment")
    ports = {}
    for service in services.values():
        selector = service["spec"]["selector"]
        (target,) = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        container_ports = {
            p["name"]: p["containerPort"]
            for c in target["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            ports[port["port"]] = container_ports[port["targetPort"]]
    settings = _configmap_env(k8s)
    assert ports == {
        11112: int(settings["TRIAGE_DICOM_PORT"]),
        8080: int(settings["TRIAGE_HTTP_PORT"]),
    }
    assert services["triage-dicom"]["spec"]["externalTrafficPolicy"] == "Local"


def test_k8s_configmap_and_secret_are_valid_settings(k8s, monkeypatch) -> None:
    env = dict(_configmap_env(k8s))
    env.update(_of_kind(k8s, "Secret")["triage-secrets"]["stringData"])
    unknown = {k for k in env if k.startswith("TRIAGE_")} - _settings_names()
    assert not unknown, f"the node refuses unknown settings {unknown}"
    settings = settings_from_env(monkeypatch, env)
    assert settings.dicom_port == 11112 and settings.http_port == 8080
    assert not settings.uses_embedded_broker


def test_k8s_schemas_with_kubernetes_validate() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    import yaml

    checked = 0
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            checked += 1
    assert checked >= 9


def test_k8s_kustomize_builds() -> None:
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("kind: Deployment") == 4


# ---- systemd -----------------------------------------------------------------------


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("triage-scp.service", ["scp"]),
        ("triage-worker@.service", ["worker", "--queues", "inference", "--concurrency", "1"]),
        ("triage-api.service", ["api"]),
        ("triage-migrate.service", ["db", "upgrade"]),
    ],
)
def test_systemd_units(unit: str, command: list[str]) -> None:
    parser = _unit(SYSTEMD / unit)
    service = parser["Service"]
    assert service["EnvironmentFile"] == "/etc/triage/triage.env"
    assert service["User"] == "triage" and service["Group"] == "triage"
    exec_start = service["ExecStart"].replace("%i", "inference")
    exec_start = exec_start.replace("${WORKER_CONCURRENCY}", "1")
    binary, *args = exec_start.split()
    assert binary == "/opt/triage/bin/triage-node"
    assert args == command and cli_accepts(args)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
        "StateDirectory": "triage",
    }.items():
        assert service.get(key) == value, f"{unit}: {key}"
    if unit != "triage-migrate.service":
        assert "triage-migrate.service" in parser["Unit"]["Requires"]
        assert service["Restart"] == "on-failure"
    if unit.startswith("triage-worker"):
        assert "PrivateDevices" not in service, "the inference worker needs /dev/nvidia*"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = find_tool("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if analyze is None or not system_units.is_dir():
        pytest.skip("systemd-analyze or the system's unit directory is absent")
    root = tmp_path / "root"
    binary = root / "opt" / "triage" / "bin" / "triage-node"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copytree(system_units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    for path in SYSTEMD.glob("*.service"):
        shutil.copy(path, units / path.name)
    names = sorted(
        str(Path("/etc/systemd/system") / p.name).replace("@.service", "@inference.service")
        for p in SYSTEMD.glob("*.service")
    )
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", *[str(root) + n for n in names]],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- env files ---------------------------------------------------------------------


def _env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_env_example_is_valid_settings(monkeypatch) -> None:
    env = _env_file(DEPLOY / "triage.env.example")
    unknown = {k for k in env if k.startswith("TRIAGE_")} - _settings_names()
    assert not unknown, f"the node refuses unknown settings {unknown}"
    settings = settings_from_env(monkeypatch, env)
    assert settings.data_dir == Path("/var/lib/triage/data")
    assert "WORKER_CONCURRENCY" in env


def test_compose_env_example_has_no_password() -> None:
    env = _env_file(DEPLOY / "compose.env.example")
    assert env["POSTGRES_PASSWORD"] == ""


def test_toml_example_is_valid_settings(clean_env) -> None:
    from worklist.core.settings import load_settings

    settings = load_settings(DEPLOY / "triage.example.toml")
    assert settings.ae_title == "TRIAGE"


# ---- health check script -----------------------------------------------------------


def test_healthcheck_reads_the_role_from_the_command_line() -> None:
    hc = _healthcheck_module()
    assert hc.parse_command(["/opt/triage/bin/python", "/opt/triage/bin/triage-node", "scp"]) == (
        "scp",
        None,
    )
    assert hc.parse_command(
        ["python3", "/opt/triage/bin/triage-node", "--config", "/etc/t.toml", "worker", "-q"]
    ) == ("worker", "/etc/t.toml")
    assert hc.parse_command(["/sbin/docker-init", "--", "triage-entrypoint", "api"]) == (
        "api",
        None,
    )
    assert hc.parse_command(["sleep", "1"]) == (None, None)
    assert [hc.role_for(c) for c in ("serve", "api", "scp", "worker", None)] == [
        "http",
        "http",
        "dicom",
        "worker",
        "http",
    ]


def test_healthcheck_http_and_tcp(port: int) -> None:
    import http.server
    import threading

    hc = _healthcheck_module()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert hc.check_http("127.0.0.1", port, "/healthz", 5.0) is None
        assert "503" in hc.check_http("127.0.0.1", port, "/readyz", 5.0)
        assert hc.check_tcp("127.0.0.1", port, 5.0) is None
    finally:
        server.shutdown()
        server.server_close()
    assert hc.check_tcp("127.0.0.1", port, 2.0) is not None
    assert hc.check_http("127.0.0.1", port, "/healthz", 2.0) is not None


def test_healthcheck_broker(port: int, tmp_path: Path) -> None:
    hc = _healthcheck_module()
    assert hc.check_broker(f"sqla+sqlite:///{tmp_path / 'broker.db'}", timeout=5.0) is None
    problem = hc.check_broker(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    assert problem is not None and problem.startswith("broker: OperationalError")
