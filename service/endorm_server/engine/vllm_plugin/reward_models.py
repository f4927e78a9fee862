"""vLLM model classes that return per-token [c_i, v_i] instead of sampling.

``EndoReward<Arch>`` subclasses vLLM's stock ``<Arch>`` (any ``*ForCausalLM``),
so it keeps the LM head and the logits processor (soft-capping, scaling, tied
embeddings all come for free), and adds a pooler that turns the hidden states
of every token scheduled in an engine step into [c_i, v_i] in one batched pass.
Classes are created on first attribute access (PEP 562), which is how the
plugin registers every architecture without a hand-written list.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from typing import Any

import torch

from endorm_server.engine.vllm_plugin import batch_invariant, cpu_gemm
from endorm_server.engine.vllm_plugin.chunked_stats import DEFAULT_CHUNK_ROWS, chunked_token_stats
from endorm_server.engine.vllm_plugin.row_assembly import EXTRA_KEY, FIRST_KEY, RowAssembly

# These classes run in vLLM's engine process, where only vLLM's "vllm" logger has a handler.
log = logging.getLogger("vllm.endorm.reward_models")
CLASS_PREFIX = "EndoReward"
ALPHA_KEY = "endorm_alpha"  # hf_config attribute set through hf_overrides
CHUNK_KEY = "endorm_chunk_rows"


class _PoolerMixin:
    """Implements vLLM's Pooler interface (mixed into Pooler at class creation)."""

    _model: Any  # the causal LM (set with object.__setattr__, so it is not a submodule)

    def __init__(self, model: torch.nn.Module, *, alpha: float, chunk_rows: int, fixed_tile: int = 0) -> None:
        super().__init__()
        # A plain attribute would register the model as a submodule of itself.
        object.__setattr__(self, "_model", model)
        self.alpha = float(alpha)
        self.chunk_rows = int(chunk_rows)
        self.fixed_tile = int(fixed_tile)  # --batch-invariant: every LM-head call on this many rows
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
        token_ids = pooling_metadata.get_prompt_token_ids_cpu()
        states = [_assembly(s, p) for s, p in zip(pooling_metadata.pooling_states, pooling_metadata.pooling_params)]

        # Scheduled rows of request j are positions [end - n, end) (end - n = k on a
        # prefix-cache hit of k). The LM head runs only on positions >= first
        # (= P - 1: V(s_0) = v_{P-1} is the first value the rewards read), plus
        # one row per requested extra target. Row at p is scored against x_{p+1}.
        sel: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        has_next: list[torch.Tensor] = []
        plan: list[tuple[int, int, int, list[int]]] = []  # per request: (start, end, n_rows, extra indices)
        row = 0
        for ids, n, end, asm in zip(token_ids, n_sched, ends, states):
            start = end - n
            lo = max(start, asm.first)
            if end > lo:
                sel.append(torch.arange(row + lo - start, row + n))
                nxt = torch.zeros(end - lo, dtype=torch.long)
                stop = min(end, len(ids) - 1)  # positions lo .. stop-1 have a next token
                if stop > lo:
                    nxt[: stop - lo] = ids[lo + 1 : stop + 1].long()
                targets.append(nxt)
                has_next.append(torch.arange(lo, end) < stop)
            extra = [i for i, (p, _) in enumerate(asm.extra_targets) if lo <= p < end]
            if extra:
                sel.append(torch.tensor([row + asm.extra_targets[i][0] - start for i in extra]))
                targets.append(torch.tensor([asm.extra_targets[i][1] for i in extra], dtype=torch.long))
                has_next.append(torch.ones(len(extra), dtype=torch.bool))
            plan.append((start, end, max(0, end - lo), extra))
            row += n

        device = hidden_states.device
        empty = torch.zeros(0, dtype=torch.long)
        index = torch.cat(sel) if sel else empty
        stats = self._stats(
            hidden_states.index_select(0, index.to(device)), (torch.cat(targets) if targets else empty).to(device)
        )
        mask = (torch.cat(has_next) if has_next else empty.bool()).to(device)
        stats[:, 0] = torch.where(mask, stats[:, 0], torch.nan)  # c_{N-1} undefined

        outputs: list[torch.Tensor | None] = []
        finished = cursor.get_finished_mask()
        at = 0
        for state, asm, (start, end, n_rows, extra), done in zip(
            pooling_metadata.pooling_states, states, plan, finished
        ):
            rows = stats[at : at + n_rows]
            extra_c = {i: float(stats[at + n_rows + j, 0]) for j, i in enumerate(extra)}
            at += n_rows + len(extra)
            asm.add(start, end, rows, extra_c)  # chunked prefill: keep rows until the last step
            if done:
                outputs.append(asm.result(end))
                state.endorm_rows = None
                state.clean()
            else:
                outputs.append(None)
        return outputs

    def _stats(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._vocab_parallel is not None:
            return self._vocab_parallel.stats(hidden_states, targets, alpha=self.alpha, chunk_rows=self.chunk_rows)
        if self.fixed_tile:
            return batch_invariant.fixed_tile_stats(
                hidden_states, targets, self._model.compute_logits, alpha=self.alpha, tile=self.fixed_tile
            )
        return chunked_token_stats(
            hidden_states, targets, self._model.compute_logits, alpha=self.alpha, chunk_rows=self.chunk_rows
        )


def _assembly(state: Any, params: Any) -> RowAssembly:
    """The request's RowAssembly, kept on vLLM's per-request PoolingStates (survives preemption)."""
    asm = getattr(state, "endorm_rows", None)
    if asm is None:
        kw = params.extra_kwargs or {}
        extra = [(int(p), int(t)) for p, t in kw.get(EXTRA_KEY, ())]
        asm = RowAssembly(first=int(kw.get(FIRST_KEY, 0)), extra_targets=extra)
        state.endorm_rows = asm
    return asm


class _VocabParallelLogits:
    """Tensor-parallel path: each rank's logits shard, reduced across ranks.

    vLLM's ``compute_logits`` gathers the vocabulary to rank 0 only; here the
    model's own logits processor is asked to skip that gather, and the
    logsumexp / chosen logit are all-reduced instead (2 floats per token).
    """

    def __init__(self, model: Any, group: Any) -> None:
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
    def maybe(cls, model: torch.nn.Module) -> _VocabParallelLogits | None:
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
                logits,
                targets[a:b],
                lambda x: x,
                alpha=alpha,
                chunk_rows=b - a,
                vocab_start=self.shard[0],
                group=self.group,
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
            dtype = vllm_config.model_config.dtype
            kernel = cpu_gemm.apply(self, getattr(hf_config, cpu_gemm.GEMM_KEY, "auto"), dtype)
            if kernel is not None:
                log.info("CPU matrix products of the model body: %s (dtype %s)", kernel, dtype)
            tile = int(getattr(hf_config, batch_invariant.ATTENTION_TILE_KEY, 0))
            if tile:  # --batch-invariant on CPU, batching kept
                batch_invariant.install_fixed_attention(tile)
                n = batch_invariant.pad_small_gemms(self)
                log.info("batch-invariant: attention in fixed %d-position pieces, %d linear layers padded", tile, n)
            self.pooler = pooler_cls(
                self,
                alpha=float(getattr(hf_config, ALPHA_KEY, 1.0)),
                chunk_rows=int(getattr(hf_config, CHUNK_KEY, DEFAULT_CHUNK_ROWS)),
                fixed_tile=int(getattr(hf_config, batch_invariant.BATCH_INVARIANT_KEY, 0)),
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
