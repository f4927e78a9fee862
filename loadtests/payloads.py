"""Request bodies for /score and /compare, drawn from the configured distributions.

Lengths are in tokens. With ``input=ids`` a body carries token ids, so the server
puts exactly the drawn number of tokens into the engine; with ``input=text`` it
carries words (about one token each with real tokenizers; the tiny test models'
tokenizers split rarer words into several), which adds the server's tokenization
work; ``mixed`` alternates at random. Id sequences never exceed the server's
``max_model_len`` (the prompt is shortened first); text items are budgeted at
``max_model_len / 3`` words and sent with ``truncate: true``, so a long tokenization
drops the start of the prompt instead of failing with 413.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from loadtests.config import LoadConfig

# Plain words for text payloads (common English, so real tokenizers map most to one token).
WORDS = (
    "the of and to in is that it for on with as was he she they we you at by this from or but not are be "
    "have has had one all there what which when their will would can could should about more time people "
    "year way day thing man woman world life hand part place case week point number group problem fact "
    "reward model response prompt policy value token score helpful concise correct clear answer question "
    "explain simple result because first then after before small large good better best"
).split()
RESERVED_IDS = 16  # ids below this are often special tokens (pad/bos/eos/chat markers): avoid them


@dataclass
class Payload:
    path: str  # "/score" or "/compare"
    body: dict
    tokens: int  # prompt + response tokens the server will put into the engine (ids input; estimate for text)
    items: int


class PayloadFactory:
    def __init__(self, cfg: LoadConfig, *, vocab_size: int, max_model_len: int, seed: int | None = None) -> None:
        if vocab_size <= RESERVED_IDS:
            raise ValueError(f"vocab_size {vocab_size} too small for id payloads")
        self.cfg = cfg
        self.vocab_size = vocab_size
        # Text responses get an end-of-turn token appended; chat/BOS may add a few: keep a margin.
        self.max_len = max(2, max_model_len - 8)
        self.rng = random.Random(cfg.seed if seed is None else seed)

    # ------------------------------------------------------------------ pieces

    def _lengths(self, text: bool = False) -> tuple[int, int]:
        limit = max(2, self.max_len // 3) if text else self.max_len
        p = max(1, self.cfg.prompt_tokens.sample(self.rng))
        r = max(1, self.cfg.response_tokens.sample(self.rng))
        r = min(r, limit - 1)
        p = min(p, limit - r)
        return p, r

    def _ids(self, n: int) -> list[int]:
        rnd = self.rng.randrange
        return [rnd(RESERVED_IDS, self.vocab_size) for _ in range(n)]

    def _text(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def _as_text(self) -> bool:
        mode = self.cfg.input
        return mode == "text" or (mode == "mixed" and self.rng.random() < 0.5)

    def _options(self) -> dict:
        return {"return_tokens": self.rng.random() < self.cfg.return_tokens}

    # ---------------------------------------------------------------- requests

    def score(self) -> Payload:
        n = max(1, min(self.cfg.batch.sample(self.rng), self.cfg.max_items))
        items, tokens = [], 0
        text = self._as_text()
        for _ in range(n):
            p, r = self._lengths(text)
            if text:
                items.append({"prompt": self._text(p), "response": self._text(r)})
            else:
                items.append({"prompt_ids": self._ids(p), "response_ids": self._ids(r)})
            tokens += p + r
        body = {"items": items, **self._options()}
        if text:
            body["truncate"] = True
        return Payload("/score", body, tokens, n)

    def compare(self) -> Payload:
        n = max(2, min(self.cfg.compare_n.sample(self.rng), self.cfg.max_items))
        text = self._as_text()
        limit = max(2, self.max_len // 3) if text else self.max_len
        p, _ = self._lengths(text)
        lengths = [min(max(1, self.cfg.response_tokens.sample(self.rng)), limit - p) for _ in range(n)]
        body: dict = self._options()
        if text:
            body.update(prompt=self._text(p), responses=[self._text(r) for r in lengths], truncate=True)
        else:
            body.update(prompt_ids=self._ids(p), responses_ids=[self._ids(r) for r in lengths])
        return Payload("/compare", body, n * p + sum(lengths), n)


def request_mix(score_weight: int, compare_weight: int, start: int = 0) -> Iterator[str]:
    """A user's request kinds ("score"/"compare"): the weights as an exact repeating cycle, each user
    starting at its own place in it (``start``: its number), so a run's mix depends neither on luck
    nor on how many requests it gets through: the first requests of ``score_weight +
    compare_weight`` users already cover both kinds."""
    cycle = ["score"] * score_weight + ["compare"] * compare_weight
    return itertools.islice(itertools.cycle(cycle), start % len(cycle), None)
