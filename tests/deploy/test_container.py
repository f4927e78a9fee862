"""The CPU image, built here and run the way deploy/ runs the pod (issue 22).

Built with podman on the Debian base of scripts/build_base_image.sh and the package indexes
reachable here; run as uid 10001 with a read-only root filesystem, /models a volume, the
ConfigMap's environment and the Deployment's probes. Skipped, with the reason, where podman,
runc or mmdebstrap are missing or a container cannot start (failed under CI=true: tests/tools.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.freeze import processes_frozen
from tests.tools import require_tool, tool_missing

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "scripts" / "containers.conf"
TORCH_WHEEL_DIR = Path("/opt/wheels")
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF)}
PORT = 18622


def _podman(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=ENV, check=check, text=True, capture_output=True, timeout=timeout)


def _inputs_hash(build_args: dict[str, str]) -> str:
    """A tag from the build's inputs, so a rerun with nothing changed reuses the image."""
    h = hashlib.sha256(json.dumps(build_args, sort_keys=True).encode())
    files = [ROOT / "Dockerfile.cpu", ROOT / "pyproject.toml", ROOT / "README.md"]
    files += sorted(p for p in (ROOT / "service").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _torch_index(tmp: Path) -> Path:
    """A file:// simple index for torch over the local CPU wheel (download.pytorch.org is unreachable)."""
    wheels = sorted(TORCH_WHEEL_DIR.glob("torch-2.13.0+cpu-cp311-*.whl"))
    if not wheels:
        pytest.skip(f"no torch 2.13.0+cpu wheel in {TORCH_WHEEL_DIR}, and the PyTorch index is unreachable")
    d = tmp / "simple" / "torch"
    d.mkdir(parents=True)
    links = "".join(f'<a href="file:///wheels/files/{w.name}">{w.name}</a>\n' for w in wheels)
    (d / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    return tmp


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    for tool in ("podman", "runc", "mmdebstrap"):
        require_tool(tool)
    base = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_base_image.sh")], env=ENV, text=True, capture_output=True
    )
    if base.returncode != 0:
        tool_missing("mmdebstrap", f"cannot build the base image: {base.stderr[-2000:]}")
    base_image = base.stdout.strip().splitlines()[-1]
    build_args = {
        "BASE_IMAGE": base_image,
        "PIP_INDEX_URL": os.environ.get("ENDORM_TEST_PIP_INDEX_URL", "https://pypi.org/simple"),
        "TORCH_INDEX_URL": "file:///wheels/simple",
        "PIP_CERT": "/etc/ssl/build-ca.crt",
    }
    tag = f"localhost/endorm-server:test-{_inputs_hash(build_args)}"
    if _podman("image", "exists", tag, check=False).returncode == 0:
        print(f"\nreusing {tag}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            idx = _torch_index(Path(tmp))
            cmd = [
                "build",
                "--network=host",
                "-f",
                "Dockerfile.cpu",
                "-t",
                tag,
                "-v",
                f"{idx / 'simple'}:/wheels/simple:ro",
                "-v",
                f"{TORCH_WHEEL_DIR}:/wheels/files:ro",
                "-v",
                "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/build-ca.crt:ro",
            ]
            for k, v in build_args.items():
                cmd += ["--build-arg", f"{k}={v}"]
            t0 = time.monotonic()
            r = subprocess.run(["podman", *cmd, str(ROOT)], env=ENV, text=True, capture_output=True, timeout=3600)
            if r.returncode != 0:
                pytest.fail(f"podman build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            print(f"\nbuilt {tag} in {time.monotonic() - t0:.0f} s")
    size = _podman("image", "inspect", tag, "--format", "{{.Size}}").stdout.strip()
    print(f"image size: {int(size) / 1e9:.2f} GB ({size} bytes)")
    yield tag


def _deployment() -> dict:
    docs = yaml.safe_load_all((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    return next(d for d in docs if d and d.get("kind") == "Deployment")


def _container_env() -> dict[str, str]:
    cm = yaml.safe_load((ROOT / "deploy" / "base" / "configmap.yaml").read_text())
    return {str(k): str(v) for k, v in cm["data"].items()}


def _get(path: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


class Pod:
    """One container run as the Deployment's pod runs (uid, read-only root, volumes, env)."""

    def __init__(self, image: str, volume: Path, name: str) -> None:
        self.name = name
        spec = _deployment()["spec"]["template"]["spec"]
        self.grace = int(spec["terminationGracePeriodSeconds"])
        c = spec["containers"][0]
        self.ready, self.live = c["readinessProbe"], c["livenessProbe"]
        cmd = [
            "run",
            "-d",
            "--name",
            name,
            "--user",
            "10001:10001",
            "--read-only",
            "--network=host",
            "-v",
            f"{volume}:/models",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/home/endorm",
            "--shm-size",
            "1g",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
        ]
        for k, v in _container_env().items():
            cmd += ["-e", f"{k}={v}"]
        cmd += [image, *c["args"]]
        cmd[cmd.index("8000") if "8000" in cmd else -1] = str(PORT)
        r = _podman(*cmd, check=False)
        if r.returncode != 0:
            tool_missing("podman", f"a container cannot start here: {r.stderr[-1500:]}")

    def engine_processes(self) -> list[psutil.Process]:
        """The server's engine processes (EngineCore and its workers), seen from the host."""
        pid = int(_podman("inspect", self.name, "--format", "{{.State.Pid}}").stdout.strip())
        procs = psutil.Process(pid).children(recursive=True)
        assert procs, "no engine process in the container"
        return procs

    def logs(self) -> str:
        r = _podman("logs", self.name, check=False)
        return r.stdout + r.stderr

    def running(self) -> bool:
        r = _podman("inspect", self.name, "--format", "{{.State.Running}}", check=False)
        return r.stdout.strip() == "true"

    def wait_ready(self, deadline_s: float = 900) -> None:
        """Poll readiness and liveness at the Deployment's periods, as the kubelet does."""
        end = time.monotonic() + deadline_s
        next_live = time.monotonic()
        while time.monotonic() < end:
            assert self.running(), f"container exited:\n{self.logs()[-4000:]}"
            if time.monotonic() >= next_live:
                code, _ = _get(self.live["httpGet"]["path"], self.live["timeoutSeconds"])
                # /health answers once the HTTP server is up; before that the startup probe gates it.
                next_live += self.live["periodSeconds"]
            code, _ = _get(self.ready["httpGet"]["path"], self.ready["timeoutSeconds"])
            if code == 200:
                live, _ = _get(self.live["httpGet"]["path"], self.live["timeoutSeconds"])
                assert live == 200, "ready but not live"
                return
            time.sleep(self.ready["periodSeconds"])
        pytest.fail(f"not ready within {deadline_s} s:\n{self.logs()[-4000:]}")

    def remove(self) -> None:
        _podman("rm", "-f", "-t", "0", self.name, check=False)


def _score(timeout: float = 300) -> tuple[int, dict]:
    body = json.dumps({"items": [{"prompt": "2+2=", "response": "4"}, {"prompt": "2+2=", "response": "5"}]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/score", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def _in_flight() -> float:
    _, text = _get("/metrics", 10)
    for line in text.splitlines():
        if line.startswith("endorm_in_flight_requests"):
            return float(line.split()[-1])
    return 0.0


def test_image_runs_as_the_pod_drains_and_reuses_the_cache(image: str, tmp_path: Path) -> None:
    vol = tmp_path / "models"
    vol.mkdir()
    os.chown(vol, 10001, 10001)
    pod = Pod(image, vol, f"endorm-test-{os.getpid()}-a")
    try:
        pod.wait_ready()
        status, out = _score()
        assert status == 200, out
        assert [r["index"] for r in out["results"]] == [0, 1], out
        first_log = pod.logs()
        converted = sorted(p.name for p in (vol / "endorm").iterdir())
        assert converted, "no converted model in ENDORM_CACHE_DIR"
        # SIGTERM with requests in flight: every one completes (200) within the grace period. The engine is
        # frozen until all 8 are in the server, so all of them are in flight at SIGTERM, whatever the speed.
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(_score()[0])) for _ in range(8)]
        engine = pod.engine_processes()
        with processes_frozen(engine):
            for t in threads:
                t.start()
            end = time.monotonic() + 120
            while _in_flight() < len(threads) and time.monotonic() < end:  # a guard against a hang
                time.sleep(0.05)
            assert _in_flight() == len(threads), "the requests never all reached the server"
            _podman("kill", "-s", "TERM", pod.name)
            t0 = time.monotonic()
            end = time.monotonic() + 60
            while _get("/ready", 5)[0] == 200 and time.monotonic() < end:  # the drain has begun: /ready is 503
                time.sleep(0.05)
        r = _podman("wait", pod.name, timeout=pod.grace + 60)
        drained_s = time.monotonic() - t0
        for t in threads:
            t.join(timeout=60)
        print(f"drain: {results} in {drained_s:.1f} s, exit {r.stdout.strip()}, grace {pod.grace} s")
        assert results == [200] * len(threads), results
        assert drained_s < pod.grace, f"drain took {drained_s:.1f} s > grace {pod.grace} s"
    finally:
        pod.remove()
    # A second pod on the same volume: the converted model is reused, not converted again.
    mtimes = {p.name: p.stat().st_mtime for p in (vol / "endorm").rglob("*") if p.is_file()}
    pod2 = Pod(image, vol, f"endorm-test-{os.getpid()}-b")
    try:
        pod2.wait_ready()
        assert _score()[0] == 200
        after = {p.name: p.stat().st_mtime for p in (vol / "endorm").rglob("*") if p.is_file()}
        assert after == mtimes, "the second container rewrote the model cache"
        print(f"first log (conversion lines): {[ln for ln in first_log.splitlines() if 'onver' in ln][:3]}")
        print(f"second log (conversion lines): {[ln for ln in pod2.logs().splitlines() if 'onver' in ln][:3]}")
    finally:
        pod2.remove()
