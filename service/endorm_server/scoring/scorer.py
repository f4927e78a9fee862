"""The Python API of the product: inputs in, endogenous rewards out.

    HTTP route -> schema -> Scorer.encode (tokenization) -> engine.token_stats
               -> rewards (math) -> ScoredItem

No FastAPI here; the HTTP layer and the offline ``endorm score`` both use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from endorm_server.config import Settings
from endorm_server.engine import EngineInfo, TokenStatsEngine, create_engine
from endorm_server.engine.dtype import DtypeChoice, engine_dtype, machine_head_dtype
from endorm_server.inputs.offsets import response_offsets
from endorm_server.inputs.step_inputs import encode_with_steps
from endorm_server.inputs.tokenization import EncodedPair, InputError, PairEncoder
from endorm_server.models.fingerprint import model_fingerprint
from endorm_server.models.sources import resolve_model_path
from endorm_server.scoring import rewards, steps
from endorm_server.scoring.aggregations import Aggregation, Terminal
from endorm_server.scoring.grouping import GroupScheduler

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_FRONTEND_WORKERS = 4


class SequenceTooLongError(InputError):
    """prompt + response exceed max_model_len (HTTP 413)."""


def system_fingerprint(settings: Settings, model_path: str, choice: DtypeChoice | None = None) -> str:
    """The ``system_fingerprint`` a server started with ``settings`` on this machine reports, known without
    starting an engine (``endorm eval --cached-only`` keys its cache by it)."""
    choice = choice or engine_dtype(settings.dtype, model_path, settings.engine)
    head = machine_head_dtype(settings.head_dtype, choice.dtype, settings.engine)
    return model_fingerprint(model_path, settings.alpha, settings.cache_dir, choice.dtype, settings.engine, head)


@dataclass(frozen=True)
class ScoreOptions:
    aggregation: Aggregation = "sum"
    gamma: float = 1.0
    beta: float = 0.0
    terminal: Terminal = "zero"
    return_tokens: bool = False
    truncate: bool = False  # drop the start of the prompt (never the response) to fit


@dataclass
class ScoredItem:
    score: float
    pair: EncodedPair
    token_rewards: rewards.TokenRewards
    truncated_tokens: int = 0
    token_texts: list[str] | None = field(default=None)
    token_offsets: list[tuple[int, int]] | None = field(default=None)  # char spans in the response text
    steps: list[steps.Step] | None = field(default=None)

    @property
    def num_tokens(self) -> int:
        return len(self.pair.response_ids)


class Scorer:
    def __init__(
        self,
        engine: TokenStatsEngine,
        encoder: PairEncoder,
        model_name: str,
        system_fingerprint: str | None = None,
        frontend_workers: int = DEFAULT_FRONTEND_WORKERS,
    ) -> None:
        self.engine = engine
        self.encoder = encoder
        self.model_name = model_name
        self.groups = GroupScheduler(engine)  # shared prompts computed once (service/endorm_server/scoring/grouping.py)
        # weights + config + tokenizer + chat template + alpha + dtype + engine (service/endorm_server/models/fingerprint.py)
        self.system_fingerprint = system_fingerprint
        # The front end's CPU work (tokenization and chat templates, detokenization, offsets, reward math and
        # per-token results) runs in this bounded pool, never on the event loop that feeds the engine and
        # serves every other request: a long tokenization delays only the requests queued behind it here.
        self._pool = ThreadPoolExecutor(max_workers=frontend_workers, thread_name_prefix="endorm-frontend")

    @classmethod
    async def start(cls, settings: Settings) -> Scorer:
        """Resolve the model, start the engine (with warm-up), load the tokenizer."""
        from transformers import AutoTokenizer

        path = await asyncio.to_thread(resolve_model_path, settings.model, settings.cache_dir)
        # reads the model's config and resolves --dtype auto for this device (engine/dtype.py): file I/O,
        # off the loop, which answers /health and /ready while the model loads
        engine = await asyncio.to_thread(create_engine, settings, path)
        choice = engine.dtype_choice
        log.info("compute dtype %s: %s (--dtype %s)", choice.dtype, choice.reason, settings.dtype)
        fingerprint = await asyncio.to_thread(system_fingerprint, settings, path, choice)
        tokenizer = await asyncio.to_thread(
            AutoTokenizer.from_pretrained, path, trust_remote_code=settings.trust_remote_code
        )
        await engine.start()
        assert engine.info is not None  # set by start()
        encoder = PairEncoder(tokenizer, vocab_size=engine.info.vocab_size)
        log.info("engine ready: %s, system_fingerprint %s", engine.info, fingerprint)
        return cls(
            engine,
            encoder,
            settings.served_model_name or settings.model_name,
            fingerprint,
            frontend_workers=settings.frontend_workers,
        )

    @property
    def info(self) -> EngineInfo:
        assert self.engine.info is not None, "the engine is started before a Scorer is built"
        return self.engine.info

    async def off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the front end's bounded worker pool; the event loop stays free meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # --- inputs -> token ids -------------------------------------------------

    def encode(self, item: dict[str, Any], *, add_eos: bool = True, truncate: bool = False) -> tuple[EncodedPair, int]:
        """Encode one item and fit it to max_model_len; returns (pair, tokens dropped)."""
        pair = encode_with_steps(self.encoder, item, lambda it: self.encoder.encode(add_eos=add_eos, **it))
        return self.fit(pair, truncate=truncate)

    def fit(self, pair: EncodedPair, *, truncate: bool) -> tuple[EncodedPair, int]:
        limit = self.info.max_model_len
        total = len(pair.prompt_ids) + len(pair.response_ids)
        if total <= limit:
            return pair, 0
        excess = total - limit
        if not truncate or excess >= len(pair.prompt_ids):
            why = "" if not truncate else " even after dropping the whole prompt but one token"
            raise SequenceTooLongError(
                f"prompt + response is {total} tokens, over max_model_len {limit}{why}",
                param="response" if truncate else None,
            )
        return dataclasses.replace(pair, prompt_ids=pair.prompt_ids[excess:]), excess

    # --- token ids -> rewards -------------------------------------------------

    async def score_pairs(self, pairs: Sequence[EncodedPair], options: ScoreOptions) -> list[ScoredItem]:
        """Pairs go to the engine together (one leader per shared prompt first); the engine batches them with every other caller."""
        if options.aggregation in steps.STEP_AGGREGATIONS and any(p.step_spans is None for p in pairs):
            raise InputError(
                f"aggregation {options.aggregation} needs steps: give steps, step_separator "
                "or step_ends with every response",
                "aggregation",
            )
        stats = await self.groups.stats(pairs)
        return await self.off_loop(self._finish, pairs, stats, options)

    def _finish(self, pairs: Sequence[EncodedPair], stats, options: ScoreOptions) -> list[ScoredItem]:
        """Engine stats -> rewards, scores, per-token texts and offsets (CPU work: runs in the pool)."""
        items = []
        for pair, st in zip(pairs, stats):
            # st covers positions st.offset .. N-1, so the prompt length in its indexing is P - offset
            tr = rewards.token_rewards(
                st.c, st.v, len(pair.prompt_ids) - st.offset, alpha=self.info.alpha, terminal=options.terminal
            )
            stp = None
            if pair.step_spans is not None:
                stp = steps.step_stats(tr.rewards, tr.logprobs, pair.step_spans, pair.step_texts)
            if options.aggregation in steps.STEP_AGGREGATIONS:
                rewards._check_discount(options.gamma, options.beta)  # validated whatever the aggregation
                score = steps.aggregate_steps(stp or [], options.aggregation)
            else:
                score = rewards.aggregate(tr, options.aggregation, gamma=options.gamma, beta=options.beta)
            texts = self.encoder.decode_tokens(pair.response_ids) if options.return_tokens else None
            offs = response_offsets(self.encoder, pair) if options.return_tokens else None
            items.append(
                ScoredItem(score=score, pair=pair, token_rewards=tr, token_texts=texts, token_offsets=offs, steps=stp)
            )
        return items

    async def score(self, items: Sequence[dict[str, Any]], options: ScoreOptions = ScoreOptions()) -> list[ScoredItem]:
        encoded = await self.off_loop(lambda: [self.encode(item, truncate=options.truncate) for item in items])
        scored = await self.score_pairs([pair for pair, _ in encoded], options)
        for item, (_, dropped) in zip(scored, encoded):
            item.truncated_tokens = dropped
        return scored

    async def compare(
        self, prompt: dict[str, Any], responses: Sequence[dict[str, Any]], options: ScoreOptions = ScoreOptions()
    ):
        """Scores, ranking (best first) and Bradley-Terry matrix P[i, j] = sigmoid(R_i - R_j)."""
        scored = await self.score([{**prompt, **r} for r in responses], options)
        scores = np.array([s.score for s in scored])
        return scored, rewards.ranking(scores), rewards.preference_probabilities(scores)

    async def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.engine.shutdown()
