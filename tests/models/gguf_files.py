"""Small GGUF files for the model-source tests, made from the bundled SmolLM2 GGUF.

``shrink_gguf`` keeps the real metadata, tokenizer and chat template and the first
``layers`` transformer blocks (their quantized bytes copied as they are), so the
result is a valid, much smaller Llama GGUF that converts in seconds; ``arch`` rewrites
the architecture name to make an unsupported file.
"""

from __future__ import annotations

from pathlib import Path

import gguf


def shrink_gguf(src: Path, dst: Path, *, layers: int = 1, arch: str | None = None) -> Path:
    reader = gguf.GGUFReader(src)
    old_arch = str(reader.fields["general.architecture"].contents())
    new_arch = arch or old_arch
    writer = gguf.GGUFWriter(dst, new_arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        name = (
            field.name.replace(f"{old_arch}.", f"{new_arch}.", 1)
            if field.name.startswith(f"{old_arch}.")
            else field.name
        )
        value = layers if name == f"{new_arch}.block_count" else field.contents()
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, val_type, sub_type=sub_type)
    kept = [t for t in reader.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < layers]
    for t in kept:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in kept:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return dst


def tiny_gguf(dst: Path, *, arch: str) -> Path:
    """A complete, well-formed GGUF file with one small tensor, for architecture ``arch``."""
    import numpy as np

    writer = gguf.GGUFWriter(dst, arch)
    writer.add_name(f"tiny {arch}")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``src``'s bytes: a cut-off download."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst
