"""Engines: turn token sequences into per-token (c_i, v_i). No HTTP here."""

from __future__ import annotations

from endorm_server.config import Settings
from endorm_server.engine.base import EngineError, EngineInfo, SequenceStats, TokenStatsEngine


def create_engine(settings: Settings, model_path: str) -> TokenStatsEngine:
    if settings.engine == "transformers":
        from endorm_server.engine.transformers_engine import TransformersEngine

        return TransformersEngine(settings, model_path)
    from endorm_server.engine.vllm_engine import VllmEngine

    return VllmEngine(settings, model_path)


__all__ = ["EngineError", "EngineInfo", "SequenceStats", "TokenStatsEngine", "create_engine"]
