"""The Python API (Scorer) and the offline ``endorm score`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from endorm_server.core.scorer import ScoreOptions, Scorer
from endorm_server.errors import RequestError
from endorm_server.inputs.tokenization import PairEncoder
from tests.conftest import MODEL_CACHE, tiny_model
from tests.engine.conftest import reference_engine


@pytest.fixture()
async def scorer(vllm_engines) -> Scorer:
    from transformers import AutoTokenizer

    engine = await vllm_engines("llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    return Scorer(engine, PairEncoder(tokenizer, vocab_size=engine.info.vocab_size), "llama")


async def test_scorer_scores_and_compares(scorer):
    items = [{"messages": [{"role": "user", "content": "2+2?"}], "response": r} for r in ("4", "four", "5")]
    scored = await scorer.score(items, ScoreOptions(return_tokens=True))
    ref = reference_engine("llama")
    for item in scored:
        st = ref.forward_stats(item.pair.ids)
        tr = item.token_rewards
        # telescoping identity on what the service returns: sum r = sum logprob + V(s_0) (alpha = 1)
        assert item.score == pytest.approx(tr.logprobs.sum() + tr.v0, abs=1e-6)
        assert tr.v0 == pytest.approx(st.v[len(item.pair.prompt_ids) - 1], abs=1e-4)
        assert len(item.token_texts) == item.num_tokens
    _, order, probs = await scorer.compare(
        {"messages": items[0]["messages"]}, [{"response": r} for r in ("4", "four", "5")]
    )
    assert order == list(np.argsort([-s.score for s in scored], kind="stable"))
    np.testing.assert_allclose(probs + probs.T, 1.0)


async def test_scorer_length_limit_and_truncation(scorer):
    limit = scorer.info.max_model_len
    item = {"prompt_ids": [5] * (limit - 2), "response_ids": [6, 7, 8, 9]}
    with pytest.raises(RequestError) as exc:
        await scorer.score([item])
    assert exc.value.status == 413 and exc.value.code == "sequence_too_long" and exc.value.param == "items.0"
    [item_out] = await scorer.score([item], ScoreOptions(truncate=True))
    assert item_out.truncated_tokens == 2 and item_out.pair.response_ids == [6, 7, 8, 9]


def test_endorm_score_cli_offline(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"messages": [{"role": "user", "content": "hi"}], "system": "Be brief.", "chosen": "hello", "rejected": "no"},
        {"prompt_ids": [1, 9, 10], "chosen": [11, 12], "rejected": [13]},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    # The transformers engine keeps this test quick; the vLLM path of the Scorer is tested above.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "endorm_server.cli",
            "score",
            str(pairs),
            "-o",
            str(out),
            "--model",
            str(tiny_model("llama")),
            "--engine",
            "transformers",
            "--dtype",
            "float64",
            "--cache-dir",
            str(MODEL_CACHE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(scored) == 3
    for row in scored:
        assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
        assert row["correct"] == (row["chosen_score"] > row["rejected_score"])
    accuracy = sum(r["correct"] for r in scored) / 3
    assert f"accuracy {accuracy:.4f}" in proc.stdout
    assert "scoring pairs" in proc.stderr  # the progress bar


def test_endorm_score_cli_rejects_bad_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y"}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "endorm_server.cli",
            "score",
            str(bad),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--model",
            str(tiny_model("llama")),
            "--engine",
            "transformers",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # a hang guard: slow imports under load
    assert proc.returncode == 2 and "needs 'chosen' and 'rejected'" in proc.stderr
    assert "Traceback" not in proc.stderr
