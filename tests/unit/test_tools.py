"""tests/tools.py: a missing test tool skips locally and fails under CI=true."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.tools import in_ci, require_tool, tool_missing

ABSENT = "endorm-no-such-tool-3f9c"


@pytest.fixture()
def local(monkeypatch):
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture()
def ci(monkeypatch):
    monkeypatch.setenv("CI", "true")


def test_ci_is_read_from_the_environment(monkeypatch):
    for value, expected in [("true", True), ("TRUE", True), ("1", True), ("false", False), ("", False)]:
        monkeypatch.setenv("CI", value)
        assert in_ci() is expected, value
    monkeypatch.delenv("CI")
    assert not in_ci()


def test_a_missing_tool_skips_locally_with_its_reason(local):
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT}: not found \\(apt it\\)"):
        require_tool(ABSENT, "apt it")


def test_a_missing_tool_fails_under_ci(ci):
    with pytest.raises(pytest.fail.Exception, match=f"CI=true.*{ABSENT}: not found"):
        require_tool(ABSENT)
    with pytest.raises(pytest.fail.Exception, match="podman: cannot start a container"):
        tool_missing("podman", "cannot start a container")


def test_a_tool_is_found_on_path_or_among_the_candidates(ci, tmp_path: Path, monkeypatch):
    exe = tmp_path / ABSENT
    exe.write_text("#!/bin/sh\n")
    not_executable = tmp_path / "plain"
    not_executable.write_text("")
    with pytest.raises(pytest.fail.Exception):
        require_tool(ABSENT, candidates=[not_executable])  # a file, but not executable
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    assert require_tool(ABSENT, candidates=[tmp_path / "nothing", exe]) == str(exe)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert require_tool(ABSENT) == str(exe)
