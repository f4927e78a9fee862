"""The GPU image's dependency set (`.[gpu]`, vllm==0.32.0 CUDA build) resolves (issue 22).

Runs scripts/check_gpu_extra.sh: pip's resolver in a clean Python 3.11 venv against PyPI, so a
pin conflict is found here. Slow (pip fetches several GB of CUDA wheels' metadata and wheels).
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_extra_resolves(tmp_path: Path) -> None:
    if shutil.which("python3.11") is None:
        pytest.skip("no python3.11 (the GPU image's Python) on this machine")
    try:
        urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=30).close()
    except OSError as e:
        pytest.skip(f"PyPI (where the CUDA vllm 0.32.0 wheel is) is unreachable: {e}")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_gpu_extra.sh"), str(tmp_path / "r.json")],
        text=True,
        capture_output=True,
        timeout=3000,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
