"""A ``.gguf`` file -> a cached float32 Hugging Face checkpoint the engines load.

GGUF files hold *quantized* weights (SmolLM2-135M-Instruct ships as Q4_1): transformers
(with the ``gguf`` package) dequantizes them, so the checkpoint is the quantized model
in float32, not the original bf16 release. The log and the checkpoint's
``ENDORM_SOURCE.json`` say so.

The conversion runs once per file content: the cache key is the file's SHA-256, the
build goes into a temporary sibling renamed into place (``build_into_place``), and a
file lock makes a second server starting at the same time wait for the first's build
instead of converting again. A failed build leaves nothing under the cache key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from endorm_server.models.build_cache import build_into_place
from endorm_server.models.errors import ModelSourceError
from endorm_server.models.hashing import cached_file_sha256

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# Bump when the converted files change, so old caches are not reused.
CONVERSION_VERSION = 1

# general.file_type (llama.cpp's LLAMA_FTYPE) -> name, for the log and the model card.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


def describe_gguf(path: Path) -> dict[str, str]:
    """Check that ``path`` is a complete GGUF file transformers can convert; its architecture and type.

    Raises ModelSourceError for a missing, truncated, non-GGUF or unsupported file,
    before anything is written to the cache.
    """
    _check_magic(path)
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise ModelSourceError("reading .gguf models needs the 'gguf' package (pip install gguf)") from exc
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # numpy/memmap errors on a cut-off file, struct errors on garbage
        raise ModelSourceError(f"model file {str(path)!r} is truncated or corrupt: {exc}") from exc
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if not reader.tensors or end > path.stat().st_size:
        raise ModelSourceError(f"model file {str(path)!r} is truncated: tensor data ends past the end of the file")
    arch = _field_str(reader, "general.architecture")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata sections, not models
    if arch is None or arch not in supported:
        raise ModelSourceError(
            f"model file {str(path)!r}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(supported))})"
        )
    file_type = _field_int(reader, "general.file_type")
    return {
        "architecture": arch,
        "name": _field_str(reader, "general.name") or path.stem,
        "quantization": _FILE_TYPES.get(file_type, f"file_type {file_type}") if file_type is not None else "unknown",
    }


def _check_magic(path: Path) -> None:
    if not path.is_file():
        raise ModelSourceError(f"model file {str(path)!r} does not exist")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelSourceError(f"model file {str(path)!r} is not a GGUF file (no GGUF magic bytes)")


def ensure_converted(path: str | Path, cache_dir: Path) -> Path:
    """The cached HF checkpoint for the GGUF file ``path``, converting it on first use.

    A finished build is keyed by the file's sha256, so a file that has one was checked when it was
    built: it is used without parsing the GGUF again (seconds for a 49k-token vocabulary)."""
    path = Path(path).expanduser().resolve()
    _check_magic(path)
    digest = cached_file_sha256(path, cache_dir)
    final = Path(cache_dir) / "gguf" / f"{_safe(path.stem)}-{digest[:16]}-c{CONVERSION_VERSION}"
    built = (final / "config.json").is_file()  # no lock needed (nor a writable cache) to use a finished build
    with contextlib.nullcontext() if built else _exclusive(final.with_name(final.name + ".lock")):
        if (final / "config.json").is_file():
            try:
                quantization = json.loads((final / "ENDORM_SOURCE.json").read_text())["quantization"]
            except (OSError, ValueError, KeyError):
                quantization = "an unrecorded type"
            log.warning(
                "using %s, converted from %s: the weights are DEQUANTIZED from %s, not the original unquantized model",
                final,
                path.name,
                quantization,
            )
        else:
            meta = describe_gguf(path)
            log.warning(
                "converting %s (%s, %s) to a float32 checkpoint in %s: the weights are DEQUANTIZED "
                "from %s, not the original unquantized model",
                path.name,
                meta["name"],
                meta["architecture"],
                final,
                meta["quantization"],
            )
            build_into_place(final, lambda tmp: _convert(path, tmp, {**meta, "sha256": digest}))
    return final


def _convert(path: Path, out: Path, meta: dict[str, str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ModelSourceError(f"cannot convert {str(path)!r}: {exc}") from exc
    # The GGUF quantizer only knows how to load; the saved checkpoint is plain float32.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch.nn.Module's __setattr__ typing
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        log.warning("%s carries no chat template: chat `messages` will be refused for this model", path.name)
    source = {
        "source": str(path),
        **meta,
        "dequantized": meta["quantization"] not in ("F32", "F16", "BF16"),
        "note": f"weights dequantized from {meta['quantization']} to float32; not the original model",
    }
    (out / "ENDORM_SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (released by the OS if the process dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _field_str(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def _field_int(reader, key: str) -> int | None:
    field = reader.fields.get(key)
    return None if field is None else int(field.parts[field.data[0]][0])


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64]
