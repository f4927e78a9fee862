"""One settings object for the whole service: CLI flags and ENDORM_* env vars.

Every field is settable as ``ENDORM_<FIELD>`` (e.g. ``ENDORM_MAX_MODEL_LEN``)
and as ``endorm serve --<field-with-dashes>``; the CLI overrides the env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENDORM_", extra="ignore", populate_by_name=True)

    # --- model and engine ---
    model: str | None = Field(
        None,
        description="HF model directory, .gguf file, hub id, or a bundled model: smollm2-135m-instruct "
        "(the default) or endorm-demo (the arithmetic toy)",
    )
    served_model_name: str | None = Field(
        None, description="Name reported in responses; default: the model path's name"
    )
    engine: Literal["vllm", "transformers"] = Field("vllm", description="vllm (default) or the transformers fallback")
    alpha: float = Field(1.0, gt=0, description="Entropy coefficient alpha of the soft Bellman operator")
    dtype: str = Field(
        "auto",
        description="Compute dtype: auto, float32, bfloat16, float16 (transformers: also float64). auto: the "
        "fastest this device computes natively (CPU: bfloat16 with AMX-BF16 / AVX512-BF16, else float32; GPU: the "
        "checkpoint's, bfloat16 for float32 checkpoints where supported; transformers engine: float64)",
    )
    max_model_len: int | None = Field(None, gt=1, description="Longest prompt+response in tokens")
    max_num_batched_tokens: int = Field(8192, gt=0, description="Engine step token budget (chunked prefill above it)")
    max_num_seqs: int = Field(256, gt=0, description="Most sequences in one engine step")
    tensor_parallel_size: int = Field(1, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_gb: float | None = Field(
        None, gt=0, description="KV cache size in GiB (default: gpu_memory_utilization on GPU, 2 GiB on CPU)"
    )
    logits_chunk_rows: int = Field(
        64,
        gt=0,
        description="Rows of logits materialised at once (memory = rows x vocab x 4 B; 64 keeps them in cache "
        "between the LM head and the logsumexp)",
    )
    enforce_eager: bool = Field(False, description="Disable graph capture / compilation (faster start)")
    cpu_gemm: Literal["auto", "onednn", "torch"] = Field(
        "auto",
        description="CPU only: kernel for the model body's matrix products. auto: torch's (as exact as a "
        "plain float32 forward) when the engine computes in float32, vLLM's oneDNN otherwise (faster for 16-bit)",
    )
    head_dtype: Literal["auto", "float32", "model"] = Field(
        "auto",
        description="vLLM engine: dtype of the LM head's logits. float32, or model (the compute dtype: logits "
        "rounded to it). auto: model on CPU with a 16-bit --dtype (a float32 head costs about as much as the "
        "model body there), float32 otherwise (engine/dtype.py)",
    )
    batch_invariant: bool | Literal["auto"] = Field(
        "auto",
        description="Every reward of an item bit-identical whatever it was batched with (its neighbours, "
        "chunked prefill, prefix cache). CPU: attention fed pieces cut at fixed absolute positions, every GEMM "
        "given a fixed minimum of rows, the LM head on fixed tiles (where the attention kernel was checked; else one "
        "sequence per engine step); GPU: vLLM's own VLLM_BATCH_INVARIANT kernels (docs/exactness.md). Unset "
        "(auto): on where the CPU kernels path applies (it costs no throughput there), off on GPU and elsewhere",
    )
    trust_remote_code: bool = False

    # --- HTTP ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Bearer keys; empty = no auth"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    frontend_workers: int = Field(
        4,
        gt=0,
        description="Threads for the front end's CPU work (tokenization, chat templates, detokenization, "
        "per-token results), off the event loop that feeds the engine",
    )

    # --- limits and timeouts ---
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive whole within this long after its headers, else 408"
    )
    max_items_per_request: int = Field(256, gt=0)
    max_inflight_tokens: int = Field(262_144, gt=0, description="Admission limit: tokens admitted and not finished")
    queue_timeout_s: float = Field(2.0, ge=0, description="How long a request may wait for admission before 429")
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline per request (504 past it)")
    drain_timeout_s: float = Field(30.0, ge=0, description="Grace period for in-flight requests on SIGTERM")
    engine_death_grace_s: float = Field(
        2.0, ge=0, description="After the engine dies, answer 503 this long, then exit 1"
    )
    retry_after_s: int = Field(1, ge=0)
    idempotency_ttl_s: float = Field(
        600.0, ge=0, description="How long an Idempotency-Key's 200 answer is replayed (0: not kept)"
    )
    idempotency_max_entries: int = Field(10_000, ge=0, description="Idempotency store: answers kept at most")
    idempotency_max_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="Idempotency store: bytes of answers kept at most (LRU past it)"
    )
    log_level: str = "info"
    cache_dir: Path = Field(
        Path.home() / ".cache" / "endorm", description="Where generated and converted (GGUF) models are kept"
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        from endorm_server.models.sources import DEFAULT_MODEL

        if not self.model:
            return DEFAULT_MODEL
        name = Path(self.model).name
        # a hub id's pinned revision (org/name@commit) is not part of the name clients ask for
        return name if Path(self.model).exists() else name.partition("@")[0]
