#!/usr/bin/env python
"""What GRPO sees from the endogenous reward: the telescoping identity, checked on samples.

With ``aggregation="sum"`` and terminal V(s_H) = 0 (alpha = 1 here):

    R(x, y) = sum_h r_h = alpha * sum_h log pi_0(a_h | s_h) + V(s_0)           (s_0: the prompt x)

GRPO's advantage standardises R within the group of completions to one prompt,
A_i = (R_i - mean_j R_j) / std_j R_j, so V(s_0) cancels and A_i is exactly the
standardised sequence log-likelihood log pi_0(y_i | x) of the frozen reward model.
This script samples groups from the policy (the demo model), scores them on the server
with ``sum``, ``loglik_sum`` and ``mean``, and records (a) R - loglik per completion
(constant within a group: V(s_0)), (b) the largest difference between the advantages
from ``sum`` and from ``loglik_sum``, and (c) how ``mean`` ranks the group instead.

    python examples/grpo_endogenous/identity.py --server-url http://127.0.0.1:8000 --out results/rl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from task import questions  # noqa: E402

__all__ = ["check_identity"]


def _standardise(xs: list[float]) -> list[float]:
    m, sd = statistics.fmean(xs), statistics.pstdev(xs)
    return [(x - m) / (sd + 1e-4) for x in xs]


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(xs):
        order = sorted(range(len(xs)), key=xs.__getitem__)
        r = [0.0] * len(xs)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else float("nan")


def check_identity(
    server_url: str, api_key: str | None, model: Path, *, groups: int = 2, group_size: int = 8, seed: int = 7
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from endorm_client import RewardClient

    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    rows = []
    with RewardClient(server_url, api_key=api_key) as rm:
        for q in questions(groups, seed=seed, heldout=True):
            text = tokenizer.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False)
            enc = tokenizer([text] * group_size, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                gen = policy.generate(
                    **enc,
                    max_new_tokens=56,
                    do_sample=True,
                    temperature=1.0,
                    top_k=None,
                    top_p=None,
                    eos_token_id=eot,
                    pad_token_id=tokenizer.pad_token_id,
                )
            ids = [r[: r.index(eot) + 1] if eot in r else r for r in gen[:, enc["input_ids"].shape[1] :].tolist()]
            items = [{"messages": q.messages, "response_ids": r} for r in ids]
            s = {
                agg: [x.score for x in rm.score(items, aggregation=agg).results]
                for agg in ("sum", "loglik_sum", "mean")
            }
            v0 = [a - b for a, b in zip(s["sum"], s["loglik_sum"])]
            adv_sum, adv_ll, adv_mean = (_standardise(s[k]) for k in ("sum", "loglik_sum", "mean"))
            lengths = [len(r) for r in ids]
            rows.append(
                {
                    "style": q.style,
                    "question": q.problem.question,
                    "lengths": lengths,
                    "responses": [tokenizer.decode(r, skip_special_tokens=True) for r in ids],
                    **s,
                    "sum_minus_loglik_range": max(v0) - min(v0),
                    "V_s0": statistics.fmean(v0),
                    "max_abs_advantage_diff_sum_vs_loglik": max(abs(a - b) for a, b in zip(adv_sum, adv_ll)),
                    "spearman_mean_vs_loglik": _spearman(s["mean"], s["loglik_sum"]),
                    "spearman_mean_vs_minus_length": _spearman(s["mean"], [-n for n in lengths]),
                    "spearman_sum_vs_minus_length": _spearman(s["sum"], [-n for n in lengths]),
                    "advantage_mean": adv_mean,
                }
            )
    return {
        "groups": rows,
        "max_sum_minus_loglik_range": max(r["sum_minus_loglik_range"] for r in rows),
        "max_abs_advantage_diff_sum_vs_loglik": max(r["max_abs_advantage_diff_sum_vs_loglik"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server-url", required=True)
    p.add_argument("--api-key", default=os.environ.get("ENDORM_API_KEY"))
    p.add_argument("--model", type=Path, default=ROOT / "service" / "models" / "demo")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "rl")
    p.add_argument("--groups", type=int, default=2, help="groups (prompts) per prompt style")
    args = p.parse_args(argv)
    res = check_identity(args.server_url, args.api_key, args.model, groups=args.groups)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "identity.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "groups"}))
    for g in res["groups"]:
        print(
            g["style"],
            "V(s0) %.3f" % g["V_s0"],
            "range %.2g" % g["sum_minus_loglik_range"],
            "rho(mean, loglik) %.2f rho(mean, -len) %.2f rho(sum, -len) %.2f"
            % (g["spearman_mean_vs_loglik"], g["spearman_mean_vs_minus_length"], g["spearman_sum_vs_minus_length"]),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
