"""The verl reward tensors (dense and sparse) the endorm reward manager fills (docs/dense-rewards.md).

python docs/examples/verl_reward_tensor.py http://127.0.0.1:8000 /path/to/smollm2-135m-instruct
"""

import sys

import torch
from transformers import AutoTokenizer
from verl import DataProto

from endorm_client.integrations.verl_reward import EndoRMBatchRewardManager

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
MODEL = sys.argv[2] if len(sys.argv) > 2 else "HuggingFaceTB/SmolLM2-135M-Instruct"
tok = AutoTokenizer.from_pretrained(MODEL)
chat = [{"role": "user", "content": "What is 12 * 3? Answer briefly."}]
prompt = tok.encode(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False)

answers = ["12 * 3 = 36.", "36"]
resp = [tok.encode(a, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")] for a in answers]
P, R = len(prompt) + 2, max(map(len, resp)) + 1
pad = tok.pad_token_id or 0
prompts = torch.full((2, P), pad)
responses = torch.full((2, R), pad)
mask = torch.zeros((2, P + R), dtype=torch.long)
for i, r in enumerate(resp):
    prompts[i, P - len(prompt) :] = torch.tensor(prompt)  # left-padded prompt
    mask[i, P - len(prompt) : P] = 1
    responses[i, : len(r)] = torch.tensor(r)  # right-padded response
    mask[i, P : P + len(r)] = 1
data = DataProto.from_dict(
    tensors={
        "prompts": prompts,
        "responses": responses,
        "attention_mask": mask,
        "input_ids": torch.cat([prompts, responses], 1),
    }
)
torch.set_printoptions(precision=3, linewidth=120, sci_mode=False)
for mode in ("dense", "sparse"):
    rm = EndoRMBatchRewardManager(tok, config={"reward": {"endorm": {"base_url": URL, "mode": mode}}})
    print(f"mode={mode}\n{rm(data)}")
print("tokens:", [[tok.decode([t]) for t in r] for r in resp])
