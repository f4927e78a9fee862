"""How far a plain float32 transformers forward is from float64 on the real-model exactness
test's texts (tests/engine/test_real_model.py): what float32 alone costs, to set beside the
plugin's error in that test (c, v, r per token, alpha 1, V(s_H) = 0).

    python scripts/fp32_floor.py ~/.cache/endorm/gguf/SmolLM2-135M-Instruct.Q4_1-<hash> [--random] [--rm-bench FILE]

Measured 2026-12-01 on SmolLM2-135M-Instruct: c 4.9e-5, v 4.0e-5, r 5.8e-5 (the plugin: c, v up to 1.008e-4).
With --random it also scores uniformly random token sequences (512 and 1152 tokens, seeds 0-3), where a
plain float32 forward is itself beyond 1e-4, and with --rm-bench ../shared/data/rm-bench-chat.jsonl the
8 longest RM-Bench chat conversations (prompt + the detailed markdown chosen answer): real long text.
Results in docs/exactness.md.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package, for the texts
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.engine.test_real_model import FACTS, INSTRUCTIONS, LONG_ANSWER

M = sys.argv[1]
tok = AutoTokenizer.from_pretrained(M)
m64 = AutoModelForCausalLM.from_pretrained(M, torch_dtype=torch.float64).eval()
m32 = AutoModelForCausalLM.from_pretrained(M, torch_dtype=torch.float32).eval()
pairs = FACTS + INSTRUCTIONS + [("Tell me about Paris.", LONG_ANSWER)]


def chat_ids(q: str, a: str) -> list[int]:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=True, return_dict=False
    )
    return ids["input_ids"] if hasattr(ids, "input_ids") else ids


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, m64.config.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def errors(ids: list[int]) -> dict[str, float]:
    """max |float32 - float64| of c, v, r on one sequence, and of c, v relative to max(|value|, 1)."""
    x = torch.tensor([ids])
    out = {}
    with torch.no_grad():
        for name, m in (("64", m64), ("32", m32)):
            lg = m(x).logits[0].double()
            v = torch.logsumexp(lg, -1)[:-1]
            c = lg[:-1].gather(-1, x[0, 1:, None])[:, 0]
            r = c - torch.cat([v[1:], torch.zeros(1, dtype=v.dtype)])  # alpha 1, V(s_H)=0 at the end
            out[name] = (c, v, r)
    found = {}
    for i, k in enumerate("cvr"):
        d = (out["64"][i] - out["32"][i]).abs()
        found[k] = d.max().item()
        if k != "r":
            found[k + "_rel"] = (d / out["64"][i].abs().clamp_min(1)).max().item()
    return found


groups = {"chat texts of the CI test": [chat_ids(q, a) for q, a in pairs]}
if "--random" in sys.argv:
    for n in (512, 1152):
        groups[f"random tokens, n={n}, seeds 0-3"] = [random_ids(n, s) for s in range(4)]
if "--rm-bench" in sys.argv:
    import json

    rows = [json.loads(line) for line in open(sys.argv[sys.argv.index("--rm-bench") + 1])]
    groups["RM-Bench chat, 8 longest (prompt + chosen[2])"] = sorted(
        (chat_ids(r["prompt"], r["chosen"][2]) for r in rows), key=len
    )[-8:]
for group, sequences in groups.items():
    worst: dict[str, float] = {}
    for ids in sequences:
        found = errors(ids)
        print(" ", len(ids), "tokens", {k: f"{v:.2e}" for k, v in found.items()}, flush=True)
        worst = {k: max(v, worst.get(k, 0.0)) for k, v in found.items()}
    print("FINAL", group, {k: f"{v:.3e}" for k, v in worst.items()}, flush=True)
