"""Settings as command-line flags: every Settings field is a flag (``--max-model-len``) and an env
var (``ENDORM_MAX_MODEL_LEN``); flags win. Shared by every ``endorm`` subcommand."""

from __future__ import annotations

import argparse
import logging
import sys
import typing

from pydantic import ValidationError

from endorm_server.config import Settings

_ALIASES = {"api_keys": ["--api-key"], "cors_origins": ["--cors-origin"]}


def _is_list(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_list(typing.get_args(annotation)[0])
    return origin is list


def _is_bool(annotation) -> bool:
    """bool, or bool | Literal["auto"] (a switch whose absence means auto)."""
    return annotation is bool or bool in typing.get_args(annotation)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also ENDORM_<NAME>)")
    for name, field in Settings.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"] + _ALIASES.get(name, [])
        help_text = field.description or ""
        if _is_list(field.annotation):
            group.add_argument(*flags, dest=name, action="extend", nargs="+", default=None, help=help_text)
        elif _is_bool(field.annotation):
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(*flags, dest=name, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> Settings:
    """The Settings of flags over env vars. With ``parser``, an invalid value is argparse's one-line
    error line and exit status 2 (``endorm serve: error: --port (or ENDORM_PORT): ...``), not a pydantic dump."""
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        if parser is None:
            raise
        parser.exit(2, f"{parser.prog}: error: {'; '.join(_describe(error) for error in exc.errors())}\n")


def _describe(error: typing.Any) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "settings"
    where = f"--{name.replace('_', '-')} (or ENDORM_{name.upper()})" if name in Settings.model_fields else name
    value = error.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
    return f"{where}: {error['msg']}{shown}"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s", stream=sys.stderr)
