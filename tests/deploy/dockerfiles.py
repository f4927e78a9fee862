"""A small Dockerfile reader: instructions (continuations joined) and comments."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Dockerfile:
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments), continuations joined
    comments: list[tuple[int, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        """Arguments of each ``name``, with ``$ARG`` / ``${ARG}`` replaced by the ARG's default
        as the build would see it without ``--build-arg``: in FROM the ARGs declared before the
        first FROM, elsewhere those declared earlier in the same stage."""
        found, scope = [], {}
        for instr, args in self.instructions:
            if instr == "FROM":
                found += [_expand(args, self.global_args)] if name == "FROM" else []
                scope = {}
            elif instr == "ARG":
                key, _, default = args.partition("=")
                scope[key.strip()] = default.strip()
            if instr == name and instr != "FROM":
                found.append(_expand(args, scope))
        return found

    @property
    def global_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        for instr, value in self.instructions:
            if instr == "FROM":
                break
            if instr == "ARG":
                key, _, default = value.partition("=")
                args[key.strip()] = default.strip()
        return args

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
        return env


def _expand(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    instructions, comments, buffer = [], [], ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append((number, stripped))
            continue
        if not stripped and not buffer:
            continue
        buffer += " " + stripped.removesuffix("\\") if buffer else stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            instr, _, args = buffer.strip().partition(" ")
            instructions.append((instr.upper(), args.strip()))
            buffer = ""
    return Dockerfile(instructions, comments)


def dockerfile_user(dockerfile: Dockerfile) -> int:
    """The numeric uid of the final USER (runAsNonRoot can only verify numbers)."""
    users = dockerfile.all("USER")
    assert users, "no USER: the image runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]} is not numeric: Kubernetes cannot verify runAsNonRoot"
    return int(uid)
