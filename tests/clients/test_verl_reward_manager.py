"""The ``endorm`` verl reward manager on real verl DataProto batches against the live server.

The batches are laid out as verl's rollout lays them out: ``prompts`` left-padded,
``responses`` right-padded, ``attention_mask`` over both, ``input_ids`` their concatenation.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

verl = pytest.importorskip("verl")  # a dev dependency (pyproject: dev extra); skip only where absent

from omegaconf import OmegaConf  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from verl import DataProto  # noqa: E402

from endorm_client.integrations.verl_reward import (  # noqa: E402
    EndoRMBatchRewardManager,
    EndoRMRewardManager,
    batch_rows,
    decoded_offsets,
)
from endorm_server.models.sources import DEMO_MODEL_DIR  # noqa: E402
from tests.conftest import API_KEY, tiny_model  # noqa: E402

PAD = 0


def make_batch(tok, prompts: list[str], responses: list[str], *, eos: bool = True) -> DataProto:
    p_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    r_ids = [
        tok.encode(r, add_special_tokens=False) + ([tok.eos_token_id] if eos and i != 1 else [])
        for i, r in enumerate(responses)
    ]  # row 1 was cut off before EOS
    P, R = max(map(len, p_ids)), max(map(len, r_ids)) + 2
    prompts_t = torch.full((len(p_ids), P), PAD, dtype=torch.long)
    responses_t = torch.full((len(r_ids), R), PAD, dtype=torch.long)
    mask = torch.zeros((len(p_ids), P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        prompts_t[i, P - len(p) :] = torch.tensor(p)  # left-padded
        responses_t[i, : len(r)] = torch.tensor(r)  # right-padded
        mask[i, P - len(p) : P] = 1
        mask[i, P : P + len(r)] = 1
    return DataProto.from_dict(
        tensors={
            "prompts": prompts_t,
            "responses": responses_t,
            "attention_mask": mask,
            "input_ids": torch.cat([prompts_t, responses_t], dim=1),
        }
    )


PROMPTS = ["Q: what is 2+3?\nA:", "Q: name a colour.\nA:", "Q: and 10*10?\nA:"]
RESPONSES = [" 5", " blue, or maybe red", " 2+3 = 5.\n\nSo 10*10 = 100.\n\nDone."]


@pytest.fixture(scope="module")
def tiny_tok():
    return AutoTokenizer.from_pretrained(tiny_model("llama"))


@pytest.fixture(scope="module")
def demo_tok():
    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


def score(server, items, **opts) -> list[dict]:
    r = httpx.post(
        server.url + "/score",
        json={"items": items, "return_tokens": True, **opts},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_layout_rows(tiny_tok):
    data = make_batch(tiny_tok, PROMPTS, RESPONSES)
    rows = batch_rows(data.batch)
    for row, p, r in zip(rows, PROMPTS, RESPONSES):
        assert row.prompt_ids == tiny_tok.encode(p, add_special_tokens=False)
        assert tiny_tok.decode(row.response_ids, skip_special_tokens=True) == r


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_batch_manager_same_tokenizer_ids(server, tiny_tok, mode):
    data = make_batch(tiny_tok, PROMPTS, RESPONSES)
    rm = EndoRMBatchRewardManager(
        tiny_tok, config={"reward": {"endorm": {"base_url": server.url, "api_key": API_KEY, "mode": mode}}}
    )
    out = rm(data, return_dict=True)
    tensor = out["reward_tensor"]
    assert tensor.shape == data.batch["responses"].shape and tensor.dtype == torch.float32
    rows = batch_rows(data.batch)
    # row 1 was cut off (no EOS): scored as unfinished, V(s_H) bootstrapped; the others as finished
    cut = [r.response_ids[-1] != tiny_tok.eos_token_id for r in rows]
    assert cut == [False, True, False]
    expected = score(
        server,
        [
            {"prompt_ids": r.prompt_ids, "response_ids": r.response_ids, **({"terminal": "bootstrap"} if c else {})}
            for r, c in zip(rows, cut)
        ],
    )
    as_finished = score(server, [{"prompt_ids": rows[1].prompt_ids, "response_ids": rows[1].response_ids}])
    assert abs(as_finished[0]["score"] - expected[1]["score"]) > 1e-3  # the decision changes the reward
    for i, (row, res) in enumerate(zip(rows, expected)):
        L = len(row.response_ids)
        assert torch.all(tensor[i, L:] == 0)  # padding gets nothing
        if mode == "sparse":
            assert tensor[i, L - 1].item() == pytest.approx(res["score"], abs=1e-4)
            assert torch.all(tensor[i, : L - 1] == 0)
        else:
            assert tensor[i, :L].tolist() == pytest.approx([t["reward"] for t in res["tokens"]], abs=1e-4)
            assert tensor[i].sum().item() == pytest.approx(res["score"], abs=1e-3)
    assert out["reward_extra_info"]["endorm_score"] == pytest.approx([r["score"] for r in expected], abs=1e-6)


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_reward_loop_manager_other_tokenizer_text(server, demo_tok, mode):
    """The policy's tokenizer (the demo model's) differs from the reward model's: text goes over,
    dense rewards come back onto the policy's tokens by character offsets."""
    data = make_batch(demo_tok, PROMPTS, RESPONSES)
    config = OmegaConf.create(
        {"reward": {"endorm": {"base_url": server.url, "api_key": API_KEY, "mode": mode, "input": "text"}}}
    )
    rm = EndoRMRewardManager(config, demo_tok, None)

    async def run() -> list:
        return [await rm.run_single(data[i : i + 1]) for i in range(len(data))]

    outs = asyncio.run(run())
    tensor = EndoRMRewardManager.assemble_rm_scores(data, [o["reward_score"] for o in outs])
    rows = batch_rows(data.batch)
    for i, (row, o) in enumerate(zip(rows, outs)):
        text = demo_tok.decode(row.response_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        ended = row.response_ids[-1] == demo_tok.eos_token_id
        prompt = demo_tok.decode(row.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        cut = {} if ended else {"terminal": "bootstrap"}  # a cut-off row: V(s_H) bootstrapped, no end-of-turn
        [res] = score(server, [{"prompt": prompt, "response": text, **cut}], add_eos=ended)
        L = len(row.response_ids)
        assert torch.all(tensor[i, L:] == 0)
        assert o["reward_extra_info"]["endorm_score"] == pytest.approx(res["score"], abs=1e-6)
        if mode == "sparse":
            assert tensor[i, L - 1].item() == pytest.approx(res["score"], abs=1e-4)
            assert torch.count_nonzero(tensor[i]) == 1
        else:
            assert tensor[i].sum().item() == pytest.approx(res["score"], abs=1e-3)  # the sequence sum, on policy tokens
            if ended:  # the reward model's end-of-turn reward lands on the policy's EOS token
                assert tensor[i, L - 1].item() == pytest.approx(res["tokens"][-1]["reward"], abs=1e-4)


def test_step_min_sparse(server, tiny_tok):
    data = make_batch(tiny_tok, PROMPTS, RESPONSES)
    rm = EndoRMBatchRewardManager(
        tiny_tok,
        config={
            "reward": {
                "endorm": {
                    "base_url": server.url,
                    "api_key": API_KEY,
                    "input": "text",
                    "aggregation": "step_min",
                    "step_separator": "\n\n",
                }
            }
        },
    )
    tensor = rm(data)
    rows = batch_rows(data.batch)
    row = rows[2]
    text = tiny_tok.decode(row.response_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    prompt = tiny_tok.decode(row.prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    [res] = score(server, [{"prompt": prompt, "response": text, "step_separator": "\n\n"}], aggregation="step_min")
    assert len(res["steps"]) == 3
    assert tensor[2, len(row.response_ids) - 1].item() == pytest.approx(
        min(s["reward"] for s in res["steps"]), abs=1e-4
    )


def test_registered_under_endorm():
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.workers.reward_manager import get_reward_manager_cls as legacy

    assert get_reward_manager_cls("endorm") is EndoRMRewardManager
    assert legacy("endorm") is EndoRMBatchRewardManager


def test_decoded_offsets_tile_the_text(demo_tok, tiny_tok):
    for tok in (demo_tok, tiny_tok):
        ids = tok.encode("é×2 = 10.\n\nok", add_special_tokens=False) + [tok.eos_token_id]
        text, spans = decoded_offsets(tok, ids)
        assert text == tok.decode(ids, skip_special_tokens=True)
        assert spans[0][0] == 0 and spans[-1] == (len(text), len(text))
        assert all(b == a2 for (_, b), (a2, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_a_row_that_cannot_be_scored_gets_the_fallback(server, tiny_tok, mode, caplog):
    data = make_batch(tiny_tok, PROMPTS, RESPONSES)
    L = int(data.batch["attention_mask"][2, data.batch["prompts"].shape[-1] :].sum())
    data.batch["responses"][2, 0] = 511 + 9  # outside the reward model's vocabulary
    rm = EndoRMBatchRewardManager(
        tiny_tok,
        config={"reward": {"endorm": {"base_url": server.url, "api_key": API_KEY, "mode": mode, "fallback": -2.5}}},
    )
    with caplog.at_level("WARNING", logger="endorm_client.integrations"):
        out = rm(data, return_dict=True)
    tensor = out["reward_tensor"]
    assert tensor[2, L - 1].item() == -2.5 and torch.count_nonzero(tensor[2]) == 1
    assert out["reward_extra_info"]["endorm_failed"] == [0.0, 0.0, 1.0]
    assert out["reward_extra_info"]["endorm_score"][2] == -2.5
    assert rm.failed.total == 1 and rm.failed.by_code["token_out_of_vocabulary"] == 1
    assert any("item 2 could not be scored" in r.message for r in caplog.records)
    rows = batch_rows(data.batch)
    good = score(server, [{"prompt_ids": r.prompt_ids, "response_ids": r.response_ids} for r in rows[:1]])
    assert out["reward_extra_info"]["endorm_score"][0] == pytest.approx(good[0]["score"], abs=1e-4)
