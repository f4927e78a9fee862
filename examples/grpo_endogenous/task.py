"""The RL task: the demo model's arithmetic questions, with an exact-match checker.

Training prompts come from the training split of ``service/endorm_server/evaluation/demo_task.py``,
the fixed evaluation set from its held-out split (a tenth of all questions the demo
model never saw). Each prompt asks for one answer style through its system prompt, or
(style ``none``) for no style at all, so the policy may answer in any of the four.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from endorm_server.evaluation.demo_task import STYLES, SYSTEM_PROMPTS, Problem, number_to_words, sample_problem

__all__ = ["PROMPT_STYLES", "Question", "questions", "extract_answer", "in_words", "is_correct", "messages"]

# The four styles of the demo task, plus "none": no system prompt, any style accepted.
PROMPT_STYLES = (*STYLES, "none")


@dataclass(frozen=True)
class Question:
    problem: Problem
    style: str  # one of PROMPT_STYLES

    @property
    def messages(self) -> list[dict[str, str]]:
        return messages(self.problem.question, self.style)


def messages(question: str, style: str) -> list[dict[str, str]]:
    """The chat prompt: the style's system prompt (none for ``none``), then the question."""
    system = [] if style == "none" else [{"role": "system", "content": SYSTEM_PROMPTS[style]}]
    return system + [{"role": "user", "content": question}]


def questions(n_per_style: int, seed: int, *, heldout: bool, styles: tuple[str, ...] = PROMPT_STYLES) -> list[Question]:
    """``n_per_style`` questions for each prompt style, interleaved, deterministic in ``seed``."""
    rng = random.Random(seed)
    per_style = [[Question(sample_problem(rng, heldout=heldout), s) for _ in range(n_per_style)] for s in styles]
    return [q for row in zip(*per_style) for q in row]


def extract_answer(text: str) -> str:
    """The final answer of a response in any of the four styles: what follows the last
    ``which is`` or ``=`` (working styles), else the whole text (bare styles)."""
    for marker in ("which is", "="):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    return text.strip().removesuffix(".").strip()


def in_words(text: str) -> bool:
    """The final answer is a number written in words (letters, hyphens, spaces: "seventy-one")."""
    answer = extract_answer(text)
    return bool(answer) and all(ch.isalpha() or ch in "- " for ch in answer)


def is_correct(text: str, value: int, style: str) -> bool:
    """Exact match of the final answer: digits for the digit styles, words for the word
    styles, either for ``none``."""
    answer = extract_answer(text)
    digits, words = answer == str(value), answer == number_to_words(value)
    if style in ("digits", "digits_working"):
        return digits
    if style in ("words", "words_working"):
        return words
    return digits or words
