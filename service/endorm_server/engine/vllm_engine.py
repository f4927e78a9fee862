"""The production engine: vLLM's AsyncLLM running the EndoReward pooling model.

Every concurrent caller submits its own request; vLLM's scheduler batches all
of them (continuous batching, chunked prefill), and the plugin's pooler
returns [c_i, v_i] for all tokens of a step at once. Only 2 floats per token
leave the engine process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any, Sequence

from endorm_server.config import Settings
from endorm_server.engine import batch_invariant, cpu_threads
from endorm_server.engine.base import EngineError, EngineInfo, SequenceStats, check_token_ids
from endorm_server.engine.dtype import DtypeChoice, engine_dtype, machine_head_dtype
from endorm_server.engine.vllm_plugin import cpu_gemm
from endorm_server.engine.vllm_plugin.batch_invariant import ATTENTION_TILE_KEY, BATCH_INVARIANT_KEY
from endorm_server.engine.vllm_plugin.cpu_gemm import GEMM_KEY
from endorm_server.engine.vllm_plugin.plugin import reward_architecture
from endorm_server.engine.vllm_plugin.reward_models import ALPHA_KEY, CHUNK_KEY
from endorm_server.engine.vllm_plugin.row_assembly import EXTRA_KEY, FIRST_KEY, parse_result
from endorm_server.errors import InternalError

log = logging.getLogger(__name__)


def hf_config(model: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)


def config_architecture(model: str, config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    if not archs:
        raise ValueError(f"{model}: config.json names no architecture")
    return archs[0]


CPU_DEFAULT_KV_CACHE_GB = 2.0
# How long the engine-core process gets to exit before it is killed. By then nothing is in
# flight (the server has drained), and vLLM's teardown ends in a full gc.collect() of the
# engine's heap that took 5 s on CPU (vLLM's own default wait) while saving nothing we keep.
ENGINE_EXIT_GRACE_S = 1.0

# vLLM gives one engine step (an RPC to the worker process) 300 s, then declares the engine dead.
# On a CPU the first steps compile kernels, and on a busy 2-core machine `make serve` of
# SmolLM2-135M died that way during warm-up (vLLM's "RPC call to execute_model timed out").
# A slow step is not a dead engine: requests have their own deadline (--request-timeout-s).
CPU_STEP_TIMEOUT_ENV = "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"
CPU_STEP_TIMEOUT_S = 3600


def apply_cpu_step_timeout() -> None:
    """The CPU default for vLLM's per-step timeout (the worker inherits it); a user's value wins."""
    os.environ.setdefault(CPU_STEP_TIMEOUT_ENV, str(CPU_STEP_TIMEOUT_S))


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VllmEngine:
    def __init__(self, settings: Settings, model_path: str) -> None:
        self.settings = settings
        self.model_path = model_path
        self._engine: Any = None  # vLLM's AsyncLLM, built by start()
        self._ids = itertools.count()
        self.info: EngineInfo | None = None  # set by start()
        self.determinism: batch_invariant.Receipt | None = None  # set by start(): what GET /v1/models reports
        self.invariance = batch_invariant.Plan("off")  # resolved by engine_args()
        # --dtype auto resolved from this device (never vLLM's own auto: float16 on CPU)
        self.dtype_choice: DtypeChoice = engine_dtype(settings.dtype, model_path, "vllm")
        self.head_dtype = machine_head_dtype(settings.head_dtype, self.dtype_choice.dtype)
        head = self.dtype_choice.dtype if self.head_dtype == "model" else self.head_dtype
        log.info("LM head dtype: %s (--head-dtype %s)", head, settings.head_dtype)

    def engine_args(self):
        from vllm.engine.arg_utils import AsyncEngineArgs

        s = self.settings
        kv_gb = s.kv_cache_gb
        if kv_gb is None and _on_cpu():
            kv_gb = CPU_DEFAULT_KV_CACHE_GB  # not a fraction of the whole machine's RAM
        if _on_cpu():
            cpu_threads.apply_default_binding(s.tensor_parallel_size)  # an explicit user setting wins
            apply_cpu_step_timeout()
        config = hf_config(self.model_path, s.trust_remote_code)
        arch = config_architecture(self.model_path, config)
        batching: dict[str, Any] = {
            "max_num_batched_tokens": s.max_num_batched_tokens,
            "max_num_seqs": min(s.max_num_seqs, s.max_num_batched_tokens),  # vLLM requires seqs <= tokens
            "enable_chunked_prefill": True,
        }
        on_cpu = _on_cpu()
        invariant = batch_invariant.resolve(
            s.batch_invariant, on_cpu=on_cpu, dtype=self.dtype_choice.dtype, config=config
        )
        batch_invariant.apply_gpu_environment(invariant, on_cpu)
        longest = s.max_model_len or int(getattr(config, "max_position_embeddings", 0) or s.max_num_batched_tokens)
        self.invariance = batch_invariant.plan(
            invariant, on_cpu, self.dtype_choice.dtype, config, longest, s.max_num_batched_tokens
        )
        batching.update(self.invariance.engine_overrides or {})
        return AsyncEngineArgs(
            model=self.model_path,
            runner="pooling",
            skip_tokenizer_init=True,  # the service tokenizes; the engine sees ids only
            dtype=self.dtype_choice.dtype,
            max_model_len=s.max_model_len,
            **batching,
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            kv_cache_memory_bytes=None if kv_gb is None else int(kv_gb * 2**30),
            enforce_eager=s.enforce_eager,
            trust_remote_code=s.trust_remote_code,
            hf_overrides={
                "architectures": [reward_architecture(arch)],
                ALPHA_KEY: s.alpha,
                CHUNK_KEY: s.logits_chunk_rows,
                GEMM_KEY: s.cpu_gemm,
                BATCH_INVARIANT_KEY: batch_invariant.HEAD_TILE_ROWS if invariant else 0,
                ATTENTION_TILE_KEY: self.invariance.attention_tile,
                "head_dtype": self.head_dtype,  # vLLM's own key: "float32" or "model"
            },
        )

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        # Building the engine (engine-core process, model load, KV-cache profiling) blocks for seconds to
        # minutes: in a worker thread, so the event loop keeps answering probes meanwhile. AsyncLLM starts
        # its output handler lazily on the first request when built off the loop.
        self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, self.engine_args())
        model_config = self._engine.model_config
        self.info = EngineInfo(
            name="vllm",
            model=self.model_path,
            max_model_len=int(model_config.max_model_len),
            alpha=self.settings.alpha,
            vocab_size=int(model_config.get_vocab_size()),
            dtype=str(model_config.dtype).removeprefix("torch."),
        )
        self.determinism = self._receipt()
        await self.warm_up()

    def _receipt(self) -> batch_invariant.Receipt:
        gemm = None
        if _on_cpu():
            gemm = cpu_gemm.resolve(self.settings.cpu_gemm, self._engine.vllm_config.model_config.dtype)
        head = self.dtype_choice.dtype if self.head_dtype == "model" else self.head_dtype
        return batch_invariant.receipt(self.invariance, gemm=gemm, head_dtype=head)

    async def warm_up(self) -> None:
        """First requests compile kernels (tens of seconds on CPU): pay it before ready."""
        assert self.info is not None
        lengths = [8, min(self.info.max_model_len, self.settings.max_num_batched_tokens + 16)]
        seqs = [[i % self.info.vocab_size for i in range(n)] for n in lengths]
        await asyncio.gather(*(self.token_stats(s) for s in seqs))

    supports_prefix_reuse = True  # token_stats takes first / read_cache / extra_targets

    async def token_stats(
        self,
        token_ids: Sequence[int],
        *,
        first: int = 0,
        read_cache: bool = False,
        extra_targets: Sequence[tuple[int, int]] = (),
    ) -> SequenceStats:
        """Rows for positions first .. N-1 (the LM head runs on no earlier row).

        With ``read_cache`` the request reads vLLM's prefix cache: a hit of k
        tokens skips computing positions < k, so the result may start after
        ``first`` (its ``offset`` says where); without it the result is complete.
        """
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        engine = self._engine
        if engine is None or engine.errored:
            raise EngineError("engine is not running")
        assert self.info is not None  # set by start(), before the engine takes requests
        check_token_ids(token_ids, self.info.vocab_size)
        if not 0 <= first < len(token_ids):
            raise ValueError(f"first position {first} outside the sequence of {len(token_ids)} tokens")
        extra_kwargs: dict[str, Any] = {FIRST_KEY: int(first)}
        if extra_targets:
            extra_kwargs[EXTRA_KEY] = [[int(p), int(t)] for p, t in extra_targets]
        params = PoolingParams(
            task="token_classify", skip_reading_prefix_cache=not read_cache, extra_kwargs=extra_kwargs
        )
        request_id = f"endorm-{next(self._ids)}"
        final = None
        try:
            async for out in engine.encode(
                TokensPrompt(prompt_token_ids=list(token_ids)), params, request_id=request_id
            ):
                final = out
        except asyncio.CancelledError:
            raise  # AsyncLLM.encode has already aborted the request in the engine
        except Exception as exc:
            if engine.errored:
                raise EngineError("engine died") from exc
            raise
        if final is None:
            raise EngineError("engine returned no output")
        offset, c, v, extra_c = parse_result(final.outputs.data)
        if offset != first and not read_cache:
            raise InternalError(f"engine computed positions from {offset}, not {first}, without reading the cache")
        return SequenceStats(c=c, v=v, offset=offset, extra_c=extra_c, cached_tokens=int(final.num_cached_tokens or 0))

    def num_unfinished(self) -> int:
        if self._engine is None:
            return 0
        return int(self._engine.get_num_unfinished_requests())

    @property
    def healthy(self) -> bool:
        return self._engine is not None and not self._engine.errored

    async def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix, so that benchmarks compare requests that each start cold."""
        assert self._engine is not None
        return bool(await self._engine.reset_prefix_cache())

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown(timeout=ENGINE_EXIT_GRACE_S)
            self._engine = None
