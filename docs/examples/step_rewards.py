"""Step rewards of a right and a wrong two-step answer (docs/dense-rewards.md).

python docs/examples/step_rewards.py http://127.0.0.1:8000   # a server of SmolLM2-135M-Instruct
"""

import sys

import httpx

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
QUESTION = (
    "A shop sells pens at 3 dollars each. Tom buys 4 pens and pays with a 20 dollar bill. How much change does he get?"
)
body = {
    "items": [
        {
            "messages": [{"role": "user", "content": QUESTION}],
            "steps": [
                "Each pen costs 3 dollars, so 4 pens cost 4 * 3 = 12 dollars.\n\n",
                "Tom pays 20 dollars, so his change is 20 - 12 = 8 dollars.\n\n",
                "The answer is 8.",
            ],
        },
        {
            "messages": [{"role": "user", "content": QUESTION}],
            "steps": [
                "Each pen costs 3 dollars, so 4 pens cost 4 * 3 = 15 dollars.\n\n",
                "Tom pays 20 dollars, so his change is 20 - 15 = 5 dollars.\n\n",
                "The answer is 5.",
            ],
        },
    ],
    "aggregation": "step_min",
}
r = httpx.post(URL + "/score", json=body, timeout=120)
out = r.json()
for res in out["results"]:
    print(f"score (step_min) = {res['score']:.4f}   num_tokens = {res['num_tokens']}")
    for s in res["steps"]:
        print(
            f"  tokens [{s['start']:>2}, {s['end']:>2})  reward {s['reward']:9.4f}  logprob {s['logprob']:9.4f}  {s['text']!r}"
        )
    print(f"  sum over steps = {sum(s['reward'] for s in res['steps']):.4f}")
for agg in ("sum", "mean", "step_last"):
    b = {**body, "aggregation": agg}
    print(agg, [round(x["score"], 4) for x in httpx.post(URL + "/score", json=b, timeout=120).json()["results"]])
