"""The SDK places the server's per-token rewards on a trainer's own tokens (another real tokenizer)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from endorm_client import RewardClient
from endorm_client.alignment import map_rewards, rewards_on_tokens, tokenizer_offsets
from endorm_server.models.sources import DEMO_MODEL_DIR
from tests.conftest import API_KEY, tiny_model
from tests.models.real import smollm2_path

TEXTS = ["First, 2+3 = 5.\n\nThen 2×5 = 10 — café.\n\nThe answer is 10.", "  spaced   out\ttext  ", "ok"]


def trainer_tokenizers() -> list:
    # the demo model's own BPE, the server's tokenizer itself, and a real byte-level BPE (SmolLM2's,
    # converted from the GGUF when the test runs, not at collection)
    return [
        pytest.param(str(DEMO_MODEL_DIR), id="demo"),
        pytest.param(str(tiny_model("llama")), id="same"),
        pytest.param("smollm2", id="smollm2"),
    ]


@pytest.mark.parametrize("path", trainer_tokenizers())
def test_rewards_on_trainer_tokens_sum_to_the_score(server, path):
    trainer = AutoTokenizer.from_pretrained(str(smollm2_path()) if path == "smollm2" else path)
    with RewardClient(server.url, api_key=API_KEY) as rm:
        res = rm.score([{"prompt": "Q: compute.\nA:", "response": t} for t in TEXTS], return_tokens=True)
    for text, result in zip(TEXTS, res.results):
        spans = tokenizer_offsets(trainer, text)
        assert len(spans) == len(trainer.encode(text, add_special_tokens=False))
        on_trainer = rewards_on_tokens(result, spans)
        assert len(on_trainer) == len(spans)
        assert sum(on_trainer) == pytest.approx(result.score, abs=1e-6)  # the sequence sum, on the trainer's tokens
        if (
            path == str(tiny_model("llama")) and text.isascii()
        ):  # same tokenizer: its rewards, the EOT on the last token
            rs = [t.reward for t in result.tokens]
            assert on_trainer[:-1] == pytest.approx(rs[:-2]) and on_trainer[-1] == pytest.approx(rs[-2] + rs[-1])


def test_map_rewards_rules():
    # server tokens "ab" [0,2), "c" [2,3), EOT [3,3); trainer tokens "a" [0,1), "bc" [1,3)
    assert map_rewards([1.0, 2.0, 4.0], [(0, 2), (2, 3), (3, 3)], [(0, 1), (1, 3)]) == [0.0, 7.0]
    # a trainer span that leaves out a space (trimmed offsets): the character still lands on the next token
    assert map_rewards([1.0, 2.0], [(0, 2), (2, 5)], [(0, 1), (3, 5)]) == [0.0, 3.0]
    with pytest.raises(ValueError):
        map_rewards([1.0], [(0, 1)], [])
