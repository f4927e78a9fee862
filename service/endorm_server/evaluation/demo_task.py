"""The demo task: arithmetic questions whose answers can be checked, in four styles.

The bundled demo model (``service/endorm_server/models/demo``, trained by
``scripts/train_demo_model.py``) learns this task by plain next-token prediction; the
held-out preference sets below (``scripts/demo_results.py``) measure how well its
endogenous reward separates correct from wrong answers and follows the criteria in the
system prompt.

Questions: ``a + b`` and ``a - b`` with ``0 <= a, b <= 99``, ``a * b`` with
``2 <= a <= 9`` and ``0 <= b <= 99``, phrased in a few ways ("What is 23 + 48?").
A question is *1-digit* when every operand is below 10, else *2-digit*.

Answer styles, each set by a system prompt (the reward's criteria):

=================  ==========================================================
``digits``         ``71``
``words``          ``seventy-one``
``digits_working`` ``20 + 40 = 60 and 3 + 8 = 11, so 23 + 48 = 60 + 11 = 71.``
``words_working``  ``20 + 40 = 60 and 3 + 8 = 11, so 23 + 48 = 60 + 11, which is seventy-one.``
=================  ==========================================================

Without a system prompt the style is drawn uniformly at random in training, so the
model's prior over styles is flat there.

Held-out split: a fixed tenth of all (a, op, b) triples (by a CRC32 of the triple)
never appears in training; every evaluation set is drawn from it. Everything here is
deterministic given the seed.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = [
    "CORRECTNESS_STYLES",
    "ERRORS",
    "OPS",
    "STYLES",
    "SYSTEM_PROMPTS",
    "Problem",
    "correctness_set",
    "number_to_words",
    "response",
    "sample_problem",
    "style_set",
    "training_example",
    "training_examples",
]

OPS = ("+", "-", "*")
STYLES = ("digits", "words", "digits_working", "words_working")
SYSTEM_PROMPTS = {
    "digits": "Answer with the number in digits only.",
    "words": "Answer with the number in words only.",
    "digits_working": "Show your working, then give the answer in digits.",
    "words_working": "Show your working, then give the answer in words.",
}
# RM-Bench's k = 3 responses go from concise to detailed; here: the bare number, the
# working with the answer in digits, the working with the answer in words.
CORRECTNESS_STYLES = ("digits", "digits_working", "words_working")
# Wrong answers by difficulty for the reward (easy -> hard to tell from the right one).
ERRORS = ("wild", "off by ten", "off by one")

_QUESTIONS = (
    "What is {e}?",
    "Compute {e}.",
    "{e} = ?",
    "Calculate {e}.",
    "How much is {e}?",
)
_HELDOUT_MOD = 10
_NO_SYSTEM_P = 0.15

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """English words for -999 .. 999: ``-25`` -> ``minus twenty-five``, ``161`` ->
    ``one hundred sixty-one``."""
    if not -999 <= n <= 999:
        raise ValueError(f"number_to_words covers -999..999, got {n}")
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, u = divmod(n, 10)
        return _TENS[t] + ("" if u == 0 else "-" + _ONES[u])
    h, rest = divmod(n, 100)
    return _ONES[h] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int
    template: int = 0

    @property
    def value(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b if self.op == "-" else self.a * self.b

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def question(self) -> str:
        return _QUESTIONS[self.template % len(_QUESTIONS)].format(e=self.expression)

    @property
    def size(self) -> str:
        return "1-digit" if self.a < 10 and self.b < 10 else "2-digit"

    @property
    def heldout(self) -> bool:
        return zlib.crc32(f"{self.a}{self.op}{self.b}".encode()) % _HELDOUT_MOD == 0

    def working(self) -> str:
        """The working up to (not including) the final ``= result``."""
        a, op, b = self.a, self.op, self.b
        if self.size == "1-digit":
            return f"{a} {op} {b}"
        if op == "*":
            tb, ub = divmod(b, 10)
            x, y = a * 10 * tb, a * ub
            return f"{a} * {10 * tb} = {x} and {a} * {ub} = {y}, so {a} * {b} = {x} + {y}"
        (ta, ua), (tb, ub) = divmod(a, 10), divmod(b, 10)
        t = 10 * (ta + tb) if op == "+" else 10 * (ta - tb)
        u = ua + ub if op == "+" else ua - ub
        last = f"{t} + {u}" if u >= 0 else f"{t} - {-u}"
        return f"{10 * ta} {op} {10 * tb} = {t} and {ua} {op} {ub} = {u}, so {a} {op} {b} = {last}"


def response(problem: Problem, style: str, value: int | None = None) -> str:
    """The answer to ``problem`` in ``style``; ``value`` replaces the result (a wrong
    answer keeps the working and changes only the final number)."""
    v = problem.value if value is None else value
    if style == "digits":
        return str(v)
    if style == "words":
        return number_to_words(v)
    if style == "digits_working":
        return f"{problem.working()} = {v}."
    if style == "words_working":
        return f"{problem.working()}, which is {number_to_words(v)}."
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def sample_problem(
    rng: random.Random, *, heldout: bool = False, size: str | None = None, op: str | None = None
) -> Problem:
    """A random problem from the training split (or the held-out split)."""
    while True:
        o = op or rng.choices(OPS, weights=(0.4, 0.3, 0.3))[0]
        sz = size or ("1-digit" if rng.random() < 0.35 else "2-digit")
        if o == "*":
            a = rng.randint(2, 9)
            b = rng.randint(0, 9) if sz == "1-digit" else rng.randint(10, 99)
        elif sz == "1-digit":
            a, b = rng.randint(0, 9), rng.randint(0, 9)
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            if a < 10 and b < 10:
                continue
        p = Problem(a, o, b, template=rng.randrange(len(_QUESTIONS)))
        if p.heldout == heldout:
            return p


def training_example(rng: random.Random) -> dict[str, Any]:
    """One chat example: ``{"system": str | None, "question": str, "response": str,
    "style": str}``."""
    p = sample_problem(rng)
    style = rng.choice(STYLES)
    system = None if rng.random() < _NO_SYSTEM_P else SYSTEM_PROMPTS[style]
    return {"system": system, "question": p.question, "response": response(p, style), "style": style}


def training_examples(seed: int) -> Iterator[dict[str, Any]]:
    """An endless, deterministic stream of training examples."""
    rng = random.Random(seed)
    while True:
        yield training_example(rng)


def _wrong_value(rng: random.Random, p: Problem, error: str) -> int:
    v = p.value
    if error == "off by one":
        return v + rng.choice((-1, 1))
    if error == "off by ten":
        return v + rng.choice((-10, 10))
    if error == "wild":
        lo, hi = {"+": (0, 198), "-": (-99, 99), "*": (0, 891)}[p.op]
        while True:
            w = rng.randint(lo, hi)
            if abs(w - v) >= 20:
                return w
    raise ValueError(f"error must be one of {ERRORS}, got {error!r}")


def correctness_set(n_per_domain: int = 100, seed: int = 1) -> list[dict[str, Any]]:
    """RM-Bench form, k = 3: per held-out question, the right answer and a wrong one in
    each of :data:`CORRECTNESS_STYLES`; no system prompt. ``domain`` is
    ``"<1-digit|2-digit>, <error>"``."""
    rng = random.Random(seed)
    rows = []
    for size in ("1-digit", "2-digit"):
        for error in ERRORS:
            for _ in range(n_per_domain):
                p = sample_problem(rng, heldout=True, size=size)
                w = _wrong_value(rng, p, error)
                rows.append(
                    {
                        "prompt": p.question,
                        "chosen": [response(p, s) for s in CORRECTNESS_STYLES],
                        "rejected": [response(p, s, w) for s in CORRECTNESS_STYLES],
                        "domain": f"{size}, {error}",
                    }
                )
    return rows


def style_set(n_per_subset: int = 100, seed: int = 2) -> list[dict[str, Any]]:
    """RewardBench form, one subset per criterion (style): the chosen response is the
    right answer in that style, the rejected one the same right answer in another style
    (the three others in turn). No system prompt: the evaluation adds one."""
    rng = random.Random(seed)
    rows = []
    for style in STYLES:
        others = [s for s in STYLES if s != style]
        for i in range(n_per_subset):
            p = sample_problem(rng, heldout=True)
            rows.append(
                {
                    "prompt": p.question,
                    "chosen": response(p, style),
                    "rejected": response(p, others[i % len(others)]),
                    "subset": style,
                }
            )
    return rows
