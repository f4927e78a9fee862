"""vLLM's synchronous engine with the plugin, engine core and model in this process, so a test or an
audit script can inspect (or hook) the loaded model and score one sequence through it.

Needs VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM starts (tests/conftest.py sets it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from endorm_server.config import Settings
from endorm_server.engine.vllm_engine import VllmEngine
from endorm_server.engine.vllm_plugin.row_assembly import FIRST_KEY, parse_result


class InProcessEngine:
    def __init__(self, settings: Settings, model_path: str) -> None:
        from vllm.v1.engine.llm_engine import LLMEngine

        self.engine = LLMEngine.from_engine_args(VllmEngine(settings, model_path).engine_args())

    @property
    def model(self) -> Any:
        """The loaded EndoReward model (``.model.layers`` are vLLM's decoder layers)."""
        core = self.engine.engine_core.engine_core
        return core.model_executor.driver_worker.worker.model_runner.model

    def stats(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(c, v) for every position of ``ids``, no prefix-cache read; engine steps as the settings say."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        params = PoolingParams(task="token_classify", skip_reading_prefix_cache=True, extra_kwargs={FIRST_KEY: 0})
        self.engine.add_request("inprocess", TokensPrompt(prompt_token_ids=list(ids)), params)
        final = None
        while self.engine.has_unfinished_requests():
            final = next((o for o in self.engine.step() if o.finished), final)
        _, c, v, _ = parse_result(final.outputs.data)
        return c, v

    def shutdown(self) -> None:
        self.engine.engine_core.shutdown()


@contextmanager
def inprocess_engine(settings: Settings, model_path: str) -> Iterator[InProcessEngine]:
    engine = InProcessEngine(settings, model_path)
    try:
        yield engine
    finally:
        engine.shutdown()
