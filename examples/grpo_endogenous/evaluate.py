"""Held-out accuracy of a policy: greedy and sampled, exact match of the answer.

Greedy accuracy is what the model "knows"; sampled accuracy (temperature 1, the
distribution GRPO trains on) also moves when training only sharpens the distribution
around answers it already prefers. Sampling uses its own seeded generator state, so an
evaluation in the middle of training leaves the training run's random stream untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from task import PROMPT_STYLES, Question, in_words, is_correct

__all__ = ["Accuracy", "evaluate"]


@dataclass
class Accuracy:
    greedy: float
    sampled: float
    greedy_by_style: dict[str, float]
    sampled_by_style: dict[str, float]
    greedy_length: float  # mean response tokens (end-of-turn token included when generated)
    sampled_length: float
    words_share_by_style: dict[str, float] | None = None  # sampled answers written in words, per prompt style

    def to_dict(self) -> dict:
        return asdict(self)


def _generate(
    model, tokenizer, questions: list[Question], *, samples: int, max_new_tokens: int, batch_size: int
) -> list[tuple[str, int]]:
    """(text, length in tokens) of ``samples`` responses per question, in question order."""
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [tokenizer.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False) for q in questions]
    prompts = [p for p in prompts for _ in range(samples)]
    out: list[tuple[str, int]] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=samples > 1 or None,
                temperature=1.0 if samples > 1 else None,
                top_p=None,
                top_k=None,
                eos_token_id=eot,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                n = row.index(eot) + 1 if eot in row else len(row)
                out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    finally:
        tokenizer.padding_side = side
    return out


def _score(questions: list[Question], gens: list[tuple[str, int]], samples: int) -> tuple[float, dict, float]:
    right = [
        is_correct(text, questions[i // samples].problem.value, questions[i // samples].style)
        for i, (text, _) in enumerate(gens)
    ]
    by_style = {}
    for style in PROMPT_STYLES:
        rows = [r for i, r in enumerate(right) if questions[i // samples].style == style]
        if rows:
            by_style[style] = sum(rows) / len(rows)
    return sum(right) / len(right), by_style, sum(n for _, n in gens) / len(gens)


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    questions: list[Question],
    *,
    samples: int = 4,
    seed: int = 1234,
    max_new_tokens: int = 56,
    batch_size: int = 64,
) -> Accuracy:
    was_training = model.training
    model.eval()
    try:
        greedy = _generate(model, tokenizer, questions, samples=1, max_new_tokens=max_new_tokens, batch_size=batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sampled = _generate(
                model, tokenizer, questions, samples=samples, max_new_tokens=max_new_tokens, batch_size=batch_size
            )
    finally:
        model.train(was_training)
    g, g_style, g_len = _score(questions, greedy, 1)
    s, s_style, s_len = _score(questions, sampled, samples)
    words = {}
    for style in PROMPT_STYLES:
        rows = [in_words(text) for i, (text, _) in enumerate(sampled) if questions[i // samples].style == style]
        if rows:
            words[style] = sum(rows) / len(rows)
    return Accuracy(g, s, g_style, s_style, g_len, s_len, words)
