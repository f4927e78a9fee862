"""The served model: engine, tokenizer, group scheduler, front-end pool and admission budget.

Its ``score`` / ``compare`` are the Python API: they run the same ScoreJob (core/job.py) as the HTTP
routes, so ``endorm score``, ``endorm batch`` and a notebook get the routes' results and backpressure.
No FastAPI here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from endorm_server.config import Settings
from endorm_server.core.admission import AdmissionController
from endorm_server.core.job import JobSpec, ScoreJob
from endorm_server.engine import EngineInfo, TokenStatsEngine, batch_invariant, create_engine
from endorm_server.engine.dtype import DtypeChoice, engine_dtype, machine_head_dtype
from endorm_server.inputs.step_inputs import encode_with_steps
from endorm_server.inputs.tokenization import EncodedPair, PairEncoder
from endorm_server.models.fingerprint import fingerprint_inputs, fingerprint_of
from endorm_server.models.sources import resolve_model_path
from endorm_server.scoring import rewards
from endorm_server.scoring.grouping import GroupScheduler
from endorm_server.scoring.results import ScoredItem, ScoreOptions

__all__ = ["Scorer", "ScoreOptions", "ScoredItem", "admission_from", "system_fingerprint"]

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_FRONTEND_WORKERS = 4
DEFAULT_MAX_INFLIGHT_TOKENS = 262_144
UNBOUNDED_WAIT_S = 1e9  # the Python API waits for room rather than failing


def admission_from(settings: Settings, *, wait: bool = False) -> AdmissionController:
    """The settings' token budget; ``wait``: wait for room without bound (offline callers) instead of 429."""
    max_wait_s = UNBOUNDED_WAIT_S if wait else settings.queue_timeout_s
    return AdmissionController(settings.max_inflight_tokens, max_wait_s, retry_after_s=settings.retry_after_s)


def system_fingerprint(settings: Settings, model_path: str, choice: DtypeChoice | None = None) -> str:
    """The ``system_fingerprint`` a server started with ``settings`` on this machine reports, known without
    starting an engine (``endorm eval --cached-only`` keys its cache by it)."""
    return fingerprint_of(system_fingerprint_inputs(settings, model_path, choice))


def system_fingerprint_inputs(settings: Settings, model_path: str, choice: DtypeChoice | None = None) -> dict:
    """What goes into that fingerprint (GET /v1/models shows it): models/fingerprint.py."""
    choice = choice or engine_dtype(settings.dtype, model_path, settings.engine)
    head = machine_head_dtype(settings.head_dtype, choice.dtype, settings.engine)
    return fingerprint_inputs(
        model_path,
        settings.alpha,
        settings.cache_dir,
        choice.dtype,
        settings.engine,
        head,
        batch_invariant=batch_invariant.resolve_settings(settings, model_path, choice.dtype),
        tensor_parallel_size=settings.tensor_parallel_size,
        cpu_gemm=settings.cpu_gemm,
    )


class Scorer:
    def __init__(
        self,
        engine: TokenStatsEngine,
        encoder: PairEncoder,
        model_name: str,
        system_fingerprint: str | None = None,
        frontend_workers: int = DEFAULT_FRONTEND_WORKERS,
        admission: AdmissionController | None = None,
    ) -> None:
        self.engine = engine
        # the in-flight token budget every caller shares: HTTP routes, `endorm batch`, the Python API
        self.admission = admission or AdmissionController(DEFAULT_MAX_INFLIGHT_TOKENS, max_wait_s=UNBOUNDED_WAIT_S)
        self.encoder = encoder
        self.model_name = model_name
        self.groups = GroupScheduler(engine)  # shared prompts computed once (service/endorm_server/scoring/grouping.py)
        # files, alpha, dtypes, engine, versions, device, ... (models/fingerprint.py; the inputs: fingerprint_inputs)
        self.system_fingerprint = system_fingerprint
        self.fingerprint_inputs: dict[str, Any] | None = None
        # The front end's CPU work (tokenization and chat templates, detokenization, offsets, reward math and
        # per-token results) runs in this bounded pool, never on the event loop that feeds the engine and
        # serves every other request: a long tokenization delays only the requests queued behind it here.
        self._pool = ThreadPoolExecutor(max_workers=frontend_workers, thread_name_prefix="endorm-frontend")

    @classmethod
    async def start(cls, settings: Settings, admission: AdmissionController | None = None) -> Scorer:
        """Resolve the model, start the engine (with warm-up), load the tokenizer.

        ``admission``: the server's (bounded wait, 429); offline callers default to the same token budget
        with an unbounded wait, so ``endorm score`` is paced by the budget instead of failing."""
        from transformers import AutoTokenizer

        path = await asyncio.to_thread(resolve_model_path, settings.model, settings.cache_dir)
        # reads the model's config and resolves --dtype auto for this device (engine/dtype.py): file I/O,
        # off the loop, which answers /health and /ready while the model loads
        engine = await asyncio.to_thread(create_engine, settings, path)
        choice = engine.dtype_choice
        log.info("compute dtype %s: %s (--dtype %s)", choice.dtype, choice.reason, settings.dtype)
        inputs = await asyncio.to_thread(system_fingerprint_inputs, settings, path, choice)
        fingerprint = fingerprint_of(inputs)
        tokenizer = await asyncio.to_thread(
            AutoTokenizer.from_pretrained, path, trust_remote_code=settings.trust_remote_code
        )
        await engine.start()
        assert engine.info is not None  # set by start()
        encoder = PairEncoder(tokenizer, vocab_size=engine.info.vocab_size)
        log.info("engine ready: %s, system_fingerprint %s", engine.info, fingerprint)
        scorer = cls(
            engine,
            encoder,
            settings.served_model_name or settings.model_name,
            fingerprint,
            frontend_workers=settings.frontend_workers,
            admission=admission or admission_from(settings, wait=True),
        )
        scorer.fingerprint_inputs = inputs  # what the fingerprint hashes (GET /v1/models)
        return scorer

    @property
    def info(self) -> EngineInfo:
        assert self.engine.info is not None, "the engine is started before a Scorer is built"
        return self.engine.info

    async def off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the front end's bounded worker pool; the event loop stays free meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # --- inputs -> token ids -------------------------------------------------

    def encode(self, item: dict[str, Any], *, add_eos: bool = True) -> EncodedPair:
        """One item -> exact token ids, with its step spans (not yet fitted to max_model_len: the job fits groups)."""
        return encode_with_steps(self.encoder, item, lambda it: self.encoder.encode(add_eos=add_eos, **it))

    # --- the Python API: the same job (admission, duplicates, groups) as the HTTP routes ----------

    async def score(
        self,
        items: Sequence[dict[str, Any]],
        options: ScoreOptions | None = None,
        *,
        contrast: bool = False,
        baseline_system: str | None = None,
        add_eos: bool = True,
    ) -> list[ScoredItem]:
        """Rewards for ``items`` (dicts in the /score item form); the first bad item raises its RequestError."""
        spec = JobSpec(
            items=list(items),
            options=options or ScoreOptions(),
            add_eos=add_eos,
            contrast=contrast,
            baseline_system=baseline_system,
        )
        result = await ScoreJob.plan(self, spec)
        return [o for o in await result.run() if isinstance(o, ScoredItem)]

    async def compare(
        self, prompt: dict[str, Any], responses: Sequence[dict[str, Any]], options: ScoreOptions | None = None
    ):
        """Scores, ranking (best first) and Bradley-Terry matrix P[i, j] = sigmoid(R_i - R_j)."""
        scored = await self.score([{**prompt, **r} for r in responses], options)
        scores = np.array([s.score for s in scored])
        return scored, rewards.ranking(scores), rewards.preference_probabilities(scores)

    async def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.engine.shutdown()
