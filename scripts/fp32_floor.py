"""How far a plain float32 transformers forward is from float64 on the real-model exactness
test's texts (tests/engine/test_real_model.py): what float32 alone costs, to set beside the
plugin's error in that test (c, v, r per token, alpha 1, V(s_H) = 0).

    python scripts/fp32_floor.py ~/.cache/endorm/gguf/SmolLM2-135M-Instruct.Q4_1-<hash>

Measured 2026-12-01 on SmolLM2-135M-Instruct: c 4.9e-5, v 4.0e-5, r 5.8e-5 (the plugin: c, v up to 1.008e-4).
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
worst = {"c": 0.0, "v": 0.0, "r": 0.0, "c_rel": 0.0, "v_rel": 0.0}
for q, a in pairs:
    ids = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=True, return_dict=False)
    if hasattr(ids, "input_ids"): ids = ids["input_ids"]
    x = torch.tensor([ids])
    out = {}
    with torch.no_grad():
        for name, m in (("64", m64), ("32", m32)):
            lg = m(x).logits[0].double()
            v = torch.logsumexp(lg, -1)[:-1]
            c = lg[:-1].gather(-1, x[0, 1:, None])[:, 0]
            r = c - torch.cat([v[1:], torch.zeros(1, dtype=v.dtype)])  # alpha 1, V(s_H)=0 at the end
            out[name] = (c, v, r)
    for i, k in enumerate("cvr"):
        d = (out["64"][i] - out["32"][i]).abs()
        worst[k] = max(worst[k], d.max().item())
        if k != "r":
            worst[k + "_rel"] = max(worst[k + "_rel"], (d / out["64"][i].abs().clamp_min(1)).max().item())
    print(len(ids), {k: f"{v:.3e}" for k, v in worst.items()}, flush=True)
print("FINAL", {k: f"{v:.3e}" for k, v in worst.items()})
