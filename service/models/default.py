"""Which model to serve when none is named."""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).parent / "demo"


def resolve_model_path(model: str | None, cache_dir: Path) -> str:
    """The named model, else the bundled demo model, else a generated tiny model.

    The generated model makes a fresh install answer /score with no download;
    its rewards are meaningless (random weights) and say so in the logs.
    """
    if model:
        return model
    if (DEMO_MODEL_DIR / "config.json").exists():
        return str(DEMO_MODEL_DIR)
    from service.models.tiny import ensure_tiny_model

    return str(ensure_tiny_model(cache_dir, "llama"))
