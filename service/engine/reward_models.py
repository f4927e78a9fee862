"""vLLM model classes that return per-token [c_i, v_i] instead of sampling.

``EndoReward<Arch>`` subclasses vLLM's stock ``<Arch>`` (any ``*ForCausalLM``),
so it keeps the LM head and the logits processor (soft-capping, scaling, tied
embeddings all come for free), and adds a pooler that turns the hidden states
of every token scheduled in an engine step into [c_i, v_i] in one batched pass.
Classes are created on first attribute access (PEP 562), which is how the
plugin registers every architecture without a hand-written list.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

import torch

from service.engine.token_stats import DEFAULT_CHUNK_ROWS, chunked_token_stats

CLASS_PREFIX = "EndoReward"
ALPHA_KEY = "endorm_alpha"  # hf_config attribute set through hf_overrides
CHUNK_KEY = "endorm_chunk_rows"


def _pooler_base():
    from vllm.model_executor.layers.pooler import Pooler

    return Pooler


class _PoolerMixin:
    """Implements vLLM's Pooler interface (mixed into Pooler at class creation)."""

    def __init__(self, model: torch.nn.Module, *, alpha: float, chunk_rows: int) -> None:
        super().__init__()
        # A plain attribute would register the model as a submodule of itself.
        object.__setattr__(self, "_model", model)
        self.alpha = float(alpha)
        self.chunk_rows = int(chunk_rows)
        self._vocab_parallel = _VocabParallelLogits.maybe(model)

    def get_supported_tasks(self) -> Set[str]:
        return {"token_classify"}

    def get_pooling_updates(self, task: str):
        from vllm.model_executor.layers.pooler import PoolingParamsUpdate

        return PoolingParamsUpdate(requires_token_ids=True)

    def forward(self, hidden_states: torch.Tensor, pooling_metadata: Any) -> list[torch.Tensor | None]:
        cursor = pooling_metadata.get_pooling_cursor()
        n_sched = cursor.num_scheduled_tokens_cpu.tolist()
        ends = cursor.seq_lens_cpu.tolist()
        prompt_lens = pooling_metadata.prompt_lens.tolist()
        token_ids = pooling_metadata.get_prompt_token_ids_cpu()

        # Scheduled rows of request j are positions [end - n, end); row at
        # position p is scored against x_{p+1} when it exists (p < P - 1).
        targets = torch.zeros(sum(n_sched), dtype=torch.long)
        has_next = torch.zeros(sum(n_sched), dtype=torch.bool)
        row = 0
        for ids, n, end, plen in zip(token_ids, n_sched, ends, prompt_lens):
            start = end - n
            stop = min(end, plen - 1, len(ids) - 1)
            if stop > start:
                targets[row : row + stop - start] = ids[start + 1 : stop + 1].long()
                has_next[row : row + stop - start] = True
            row += n

        device = hidden_states.device
        stats = self._stats(hidden_states[:row], targets.to(device))
        stats[:, 0] = torch.where(has_next.to(device), stats[:, 0], torch.nan)  # c_{N-1} undefined

        outputs: list[torch.Tensor | None] = []
        finished = cursor.get_finished_mask()
        for state, part, done in zip(pooling_metadata.pooling_states, torch.split(stats, n_sched), finished):
            # Chunked prefill: keep partial rows until the request's last step.
            state.hidden_states_cache.append(part)
            if done:
                cache = state.hidden_states_cache
                outputs.append(cache[0] if len(cache) == 1 else torch.cat(cache))
                state.clean()
            else:
                outputs.append(None)
        return outputs

    def _stats(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._vocab_parallel is not None:
            return self._vocab_parallel.stats(hidden_states, targets, alpha=self.alpha, chunk_rows=self.chunk_rows)
        return chunked_token_stats(
            hidden_states, targets, self._model.compute_logits, alpha=self.alpha, chunk_rows=self.chunk_rows
        )


class _VocabParallelLogits:
    """Tensor-parallel path: each rank's logits shard, reduced across ranks.

    vLLM's ``compute_logits`` gathers the vocabulary to rank 0 only; here the
    model's own logits processor is asked to skip that gather, and the
    logsumexp / chosen logit are all-reduced instead (2 floats per token).
    """

    def __init__(self, model: torch.nn.Module, group: Any) -> None:
        self.model = model
        self.group = group
        self.shard: tuple[int, int] | None = None  # (vocab_start, n_real) of this rank
        processor = model.logits_processor
        original = processor._get_logits

        def local_logits(hidden_states, lm_head, embedding_bias, skip_gather=False):
            logits = original(hidden_states, lm_head, embedding_bias, skip_gather=True)
            si = lm_head.shard_indices
            self.shard = (si.org_vocab_start_index, si.org_vocab_end_index - si.org_vocab_start_index)
            return logits[..., : self.shard[1]]  # drop this shard's padding rows

        processor._get_logits = local_logits

    @classmethod
    def maybe(cls, model: torch.nn.Module) -> "_VocabParallelLogits | None":
        from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group

        if get_tensor_model_parallel_world_size() == 1:
            return None
        return cls(model, get_tp_group().device_group)

    def stats(self, hidden_states: torch.Tensor, targets: torch.Tensor, *, alpha: float, chunk_rows: int):
        out = torch.empty(hidden_states.shape[0], 2, dtype=torch.float32, device=hidden_states.device)
        for a in range(0, hidden_states.shape[0], chunk_rows):
            b = min(a + chunk_rows, hidden_states.shape[0])
            logits = self.model.compute_logits(hidden_states[a:b])
            assert self.shard is not None
            part = chunked_token_stats(
                logits, targets[a:b], lambda x: x, alpha=alpha, chunk_rows=b - a,
                vocab_start=self.shard[0], group=self.group,
            )
            out[a:b] = part
        return out


_CLASSES: dict[str, type] = {}


def make_reward_class(base: type) -> type:
    """Subclass a vLLM ``*ForCausalLM`` into a pooling model with our pooler."""
    from vllm.model_executor.layers.pooler import Pooler

    pooler_cls = type("EndoRewardPooler", (_PoolerMixin, Pooler), {})

    class EndoRewardModel(base):  # type: ignore[misc, valid-type]
        is_pooling_model = True
        default_tok_pooling_type = "ALL"

        def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any) -> None:
            super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
            hf_config = vllm_config.model_config.hf_config
            self.pooler = pooler_cls(
                self,
                alpha=float(getattr(hf_config, ALPHA_KEY, 1.0)),
                chunk_rows=int(getattr(hf_config, CHUNK_KEY, DEFAULT_CHUNK_ROWS)),
            )

    EndoRewardModel.__name__ = EndoRewardModel.__qualname__ = CLASS_PREFIX + base.__name__
    return EndoRewardModel


def __getattr__(name: str) -> type:
    if not name.startswith(CLASS_PREFIX):
        raise AttributeError(name)
    if name not in _CLASSES:
        from vllm.model_executor.models.registry import ModelRegistry

        arch = name[len(CLASS_PREFIX) :]
        base = ModelRegistry._try_load_model_cls(arch)
        if base is None:
            raise AttributeError(f"vLLM has no model class {arch!r} to wrap")
        _CLASSES[name] = make_reward_class(base)
    return _CLASSES[name]
