"""Every repository path the docs and docstrings cite exists: a reader sent to a file that was renamed or
never written finds nothing, and no other test would notice.

A reference is a file (with an extension) or a folder (ending in ``/``) under one of the repository's
top-level folders (``results/...``, ``service/...``). Not references: paths in other trees (a trainer's
source, a data folder, a user's overlay), a Kubernetes ``service/name``, patterns (``x.{md,json}``,
``x.*``) and ignored outputs a command writes. Tests are not scanned: some name paths that must not exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP = ("clients", "deploy", "docs", "examples", "loadtests", "results", "scripts", "service", "tests")
_REFERENCE = re.compile(rf"(?<![\w/.~-])(?:{'|'.join(TOP)})/[\w./-]*+")
_FILE_OR_FOLDER = re.compile(r"(\.[A-Za-z]\w*|/)$")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines()]


def dangling(text: str) -> set[str]:
    """The references in ``text`` that name nothing in the repository."""
    found = set()
    for match in _REFERENCE.finditer(text):
        if text[match.end() : match.end() + 1] in ("{", "*", "<"):  # x.{md,json}, x.*, x/<name>: a pattern
            continue
        ref = match.group().rstrip(".")  # a sentence's full stop
        if _FILE_OR_FOLDER.search(ref) and not (REPO / ref).exists() and not _ignored(ref):
            found.add(ref)
    return found


def _ignored(ref: str) -> bool:
    """An output a command writes (loadtests/out/...): git ignores it."""
    return subprocess.run(["git", "check-ignore", "-q", ref], cwd=REPO).returncode == 0


def test_the_scanner_finds_a_dangling_reference():
    assert dangling("measured in ``results/real/bf16-quality.md``.") == {"results/real/bf16-quality.md"}
    assert dangling("see results/real/bf16/README.md and service/endorm_server/engine/dtype.py.") == set()
    assert dangling("checked out at ~/src/service/engine.py or ../shared/data/x.json") == set()
    assert (
        dangling("``results/real/analysis.{md,json}``, ``results/x/run.*``, kubectl port-forward service/endorm")
        == set()
    )
    assert dangling("in docs/no-such-folder/ and scripts/gone.py:") == {"docs/no-such-folder/", "scripts/gone.py"}


def test_every_cited_repository_path_exists():
    sources = _tracked("*.md", "*.py")
    assert len(sources) > 50, "git ls-files found too little: the test would prove nothing"
    problems = []
    for path in sources:
        rel = path.relative_to(REPO)
        if rel.parts[0] == "tests" or not path.is_file():
            continue
        for ref in sorted(dangling(path.read_text(encoding="utf-8"))):
            problems.append(f"{rel}: {ref}")
    assert not problems, "references to files that do not exist:\n" + "\n".join(problems)
