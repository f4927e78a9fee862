"""The programs some tests start (podman, runc, mmdebstrap, HAProxy, Chromium, Prometheus, promtool,
kubectl, hadolint): found, or the test skips with the reason, except under ``CI=true``, where it
fails instead, so a green CI means the containers, the replicas, the browser and the dashboard were
really tested. ``make test`` installs them (scripts/install-test-tools.sh, apt as root; hadolint
with the dev extra).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest

INSTALLED_BY = "make test installs it (scripts/install-test-tools.sh: apt-get as root; hadolint: the dev extra)"


def in_ci() -> bool:
    """``CI`` set to true (GitHub Actions, GitLab CI and most others set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def tool_missing(name: str, reason: str) -> NoReturn:
    """Skip the test because ``name`` is missing or unusable here (``reason`` says how); under CI, fail."""
    message = f"{name}: {reason}"
    if in_ci():
        pytest.fail(f"CI=true and a test tool is missing, so this test cannot run: {message}", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, reason: str = INSTALLED_BY, *, candidates: Iterable[str | Path] = ()) -> str:
    """The executable ``name`` on PATH, else the first executable of ``candidates``; otherwise
    ``tool_missing`` (skip locally, fail under CI) with "not found" and ``reason``."""
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if Path(path).is_file() and os.access(path, os.X_OK):
            return str(path)
    tool_missing(name, f"not found ({reason})")
