"""Every aggregation from one forward pass, the resumable score cache, and the DSP promptable table.

In process with the transformers engine on a tiny model (fast); the HTTP path uses the
shared test server.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from endorm_server.cli import main
from endorm_server.core.scorer import ScoreOptions, Scorer
from endorm_server.evaluation.backends import Discount, HttpBackend, InProcessBackend
from endorm_server.evaluation.cache import ScoreCache
from endorm_server.evaluation.promptable import (
    DOMAINS,
    NO_SYSTEM,
    RESPONSE_KEYS,
    build_items,
    query_major,
    read_dsp,
    subset,
    table,
)
from endorm_server.evaluation.runner import score_items
from endorm_server.scoring import rewards
from tests.conftest import API_KEY, engine_settings, tiny_model

ITEMS = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}], "response": "4"},
    {"messages": [{"role": "user", "content": "What is 2+2?"}], "response": "The answer is four, of course."},
    {"messages": [{"role": "user", "content": "Name a color."}], "system": "Be brief.", "response": "red"},
    {"prompt": "Once upon a time", "response": " there was a small reward model that counted tokens."},
    {"messages": [{"role": "user", "content": "Say hi."}], "response": "Hello there! How are you today?"},
]
DISCOUNT = Discount(gamma=0.9, beta=0.1)


class CountingScorer:
    """The real Scorer, with the number of engine forward passes (one per sequence) counted."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer, self.passes = scorer, 0
        inner = scorer.engine.token_stats

        async def counted(ids):
            self.passes += 1
            return await inner(ids)

        scorer.engine.token_stats = counted
        self.model_name = scorer.model_name
        self.system_fingerprint = scorer.system_fingerprint

    async def score(self, items, options, **kwargs):
        return await self.scorer.score(items, options, **kwargs)

    async def shutdown(self):
        await self.scorer.shutdown()


@pytest.fixture(scope="module")
def scorer():
    settings = engine_settings(tiny_model("llama"), engine="transformers")
    loop = asyncio.new_event_loop()
    s = CountingScorer(loop.run_until_complete(Scorer.start(settings)))
    yield loop, s
    loop.run_until_complete(s.shutdown())
    loop.close()


def test_all_aggregations_come_from_one_pass_and_match_single_requests(scorer):
    loop, s = scorer
    backend = InProcessBackend(s, DISCOUNT)
    s.passes = 0
    got = loop.run_until_complete(backend.score(ITEMS, rewards.TOKEN_AGGREGATIONS))
    assert s.passes == len(ITEMS)  # one forward pass per response for all five aggregations
    for agg in rewards.TOKEN_AGGREGATIONS:
        one = loop.run_until_complete(s.score(ITEMS, ScoreOptions(aggregation=agg, gamma=0.9, beta=0.1)))
        np.testing.assert_allclose(got[agg], [x.score for x in one], rtol=0, atol=1e-12)
    # the discount is used: gamma 0.9 differs from the plain sum for responses longer than one token
    assert not np.allclose(got["discounted"], got["sum"])


def test_interrupted_run_resumes_from_the_cache(scorer, tmp_path):
    loop, s = scorer
    backend = InProcessBackend(s, DISCOUNT)
    path = tmp_path / "scores.jsonl"
    config = {"model": s.model_name, "gamma": 0.9, "beta": 0.1}
    s.passes = 0
    full = loop.run_until_complete(
        score_items(backend, ITEMS, rewards.TOKEN_AGGREGATIONS, batch_size=2, cache=ScoreCache(path, config))
    )
    assert s.passes == len(ITEMS) and len(path.read_text().splitlines()) == len(ITEMS)

    # a run killed after two responses, in the middle of writing the third line
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    cache = ScoreCache(path, config)
    assert len(cache) == 2 and cache.ignored_lines == 1
    s.passes = 0
    again = loop.run_until_complete(score_items(backend, ITEMS, rewards.TOKEN_AGGREGATIONS, batch_size=2, cache=cache))
    assert s.passes == len(ITEMS) - 2  # only the missing ones are scored
    for agg in rewards.TOKEN_AGGREGATIONS:
        np.testing.assert_allclose(again[agg], full[agg], rtol=0, atol=1e-12)
    assert len(ScoreCache(path, config)) == len(ITEMS)  # the torn line did not swallow the next one

    # another setting that changes scores never reuses them
    s.passes = 0
    loop.run_until_complete(score_items(backend, ITEMS, ["sum"], cache=ScoreCache(path, {**config, "gamma": 0.5})))
    assert s.passes == len(ITEMS)


def test_eval_all_writes_every_aggregation_and_resumes(tmp_path, capsys):
    rows = [
        {"prompt": "What is 2+2?", "chosen": ["4", "2+2=4"], "rejected": ["5", "2+2=5"], "domain": "math"},
        {"prompt": "Name a color.", "chosen": ["red", "Red."], "rejected": ["dog", "Dog."], "domain": "chat"},
    ]
    data = tmp_path / "rmb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "eval",
        str(data),
        "--engine",
        "transformers",
        "--model",
        str(tiny_model("llama")),
        "--dtype",
        "float32",
        "--no-progress",
        "-o",
        str(tmp_path / "out"),
        "--aggregation",
        "all",
        "--gamma",
        "0.9",
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "rmb.json").read_text())
    assert list(report["results"]) == list(rewards.TOKEN_AGGREGATIONS) and report["gamma"] == 0.9
    cache = tmp_path / "out" / "rmb.scores.jsonl"
    assert len(cache.read_text().splitlines()) == 8
    capsys.readouterr()
    assert main([*args[:-2], "--gamma", "0.9", "--cache", str(cache), "--name", "resumed"]) == 0
    again = json.loads((tmp_path / "out" / "resumed.json").read_text())
    assert again["scores"] == report["scores"]
    assert main([*args[:-2], "--gamma", "1.5"]) == 2
    assert "gamma" in capsys.readouterr().err


def test_the_cache_is_keyed_by_the_system_fingerprint(tmp_path):
    """--dtype auto and the dtype it resolves to are the same rewards (one fingerprint): one cache entry;
    another resolved dtype is another fingerprint and is scored anew."""
    data = tmp_path / "rmb.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2+2?", "chosen": ["4"], "rejected": ["5"], "domain": "math"}) + "\n")
    cache = tmp_path / "scores.jsonl"

    def run(dtype: str, name: str) -> dict:
        assert (
            main(
                [
                    "eval",
                    str(data),
                    "--engine",
                    "transformers",
                    "--model",
                    str(tiny_model("llama")),
                    "--dtype",
                    dtype,
                    "--no-progress",
                    "-o",
                    str(tmp_path),
                    "--cache",
                    str(cache),
                    "--name",
                    name,
                ]
            )
            == 0
        )
        return json.loads((tmp_path / f"{name}.json").read_text())

    exact = run("float64", "exact")
    assert len(cache.read_text().splitlines()) == 2
    auto = run("auto", "auto")  # the transformers engine's auto is float64: served from the cache
    assert len(cache.read_text().splitlines()) == 2 and auto["scores"] == exact["scores"]
    run("float32", "single")
    assert len(cache.read_text().splitlines()) == 4


def test_score_all_reports_every_aggregation(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "2+2=", "chosen": "4", "rejected": "five hundred"}) + "\n")
    out = tmp_path / "scored.jsonl"
    common = ["--engine", "transformers", "--model", str(tiny_model("llama")), "--dtype", "float32"]
    assert main(["score", str(pairs), "-o", str(out), "--aggregation", "all", "--gamma", "0.9", *common]) == 0
    row = json.loads(out.read_text())
    assert set(row["chosen_score"]) == set(rewards.TOKEN_AGGREGATIONS)
    for agg in rewards.TOKEN_AGGREGATIONS:
        assert row["margin"][agg] == pytest.approx(row["chosen_score"][agg] - row["rejected_score"][agg])
        assert row["correct"][agg] == (row["chosen_score"][agg] > row["rejected_score"][agg])
    single = tmp_path / "single.jsonl"
    assert main(["score", str(pairs), "-o", str(single), "--aggregation", "discounted", "--gamma", "0.9", *common]) == 0
    assert json.loads(single.read_text())["chosen_score"] == pytest.approx(row["chosen_score"]["discounted"], abs=1e-9)


def test_http_backend_scores_every_aggregation_in_one_request(server):
    """Through the server: per-token rewards come back once; the aggregations match in process."""
    import httpx

    posts = []

    async def hook(r):
        if r.method == "POST":
            posts.append(r)

    client = httpx.AsyncClient(
        base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=60, event_hooks={"request": [hook]}
    )

    async def go():
        backend = await HttpBackend(server.url, client=client, discount=DISCOUNT).start()
        try:
            return await backend.score(ITEMS, rewards.TOKEN_AGGREGATIONS), backend.system_fingerprint
        finally:
            await backend.close()

    remote, fingerprint = asyncio.run(go())
    assert len(posts) == 1
    models = httpx.get(f"{server.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}"}).json()
    assert fingerprint == models["data"][0]["system_fingerprint"] and fingerprint.startswith("fp_")
    settings = engine_settings(tiny_model("llama"), engine="transformers")

    async def local():
        s = await Scorer.start(settings)
        try:
            return await InProcessBackend(s, DISCOUNT).score(ITEMS, rewards.TOKEN_AGGREGATIONS)
        finally:
            await s.shutdown()

    ref = asyncio.run(local())
    for agg in rewards.TOKEN_AGGREGATIONS:
        np.testing.assert_allclose(remote[agg], ref[agg], atol=2e-3)


def test_promptable_table_arithmetic(tmp_path):
    rows = [{"query": f"q{i}", "responses": {k: f"{k} {i}" for k in RESPONSE_KEYS}} for i in range(11)]
    rows[3]["responses"]["normal"] = ""  # as in the real test split: skipped, not scored
    (tmp_path / "dsp.json").write_text(json.dumps(rows))
    data, skipped = read_dsp(tmp_path / "dsp.json")
    assert skipped == [3] and len(data) == 10 and 3 not in [q.index for q in data]
    picked = subset(data, 4, seed=0)
    assert len(picked) == 4 and picked == subset(data, 4, seed=0) and len({q.index for q in picked}) == 4
    assert subset(data, 7, seed=0)[:4] == picked  # nested: a run cut short holds a complete smaller table
    names = [*DOMAINS, NO_SYSTEM]
    sys_texts = {d: f"criteria {d}" for d in DOMAINS} | {NO_SYSTEM: None}
    items = build_items(picked, sys_texts)
    assert len(items) == len(names) * 4 * 5 and "system" not in items[-1] and items[0]["system"] == "criteria academy"
    order = query_major(len(names), 4)
    assert sorted(order) == list(range(len(items)))
    first = [items[i] for i in order[: len(names) * 5]]  # query 0 under every system first
    assert {it["messages"][0]["content"] for it in first} == {picked[0].query}
    # scores: under system s, the response of domain s is best; the rest by position; "normal" worst
    s = np.zeros((len(names), 4, 5))
    for si, name in enumerate(names):
        s[si] = [5, 4, 3, 2, 1]
        if name in DOMAINS:
            s[si, :, RESPONSE_KEYS.index(name)] = 10
    t = table(s.ravel(), 4, names)
    for d in DOMAINS:
        assert t[d][d] == 1.0
    assert t[NO_SYSTEM] == {"academy": 1.0, "business": 0.75, "entertainment": 0.5, "literature": 0.25}
    assert t["business"]["academy"] == 0.75  # academy (5) loses only to business (10)
    s[0, 0, :] = 7  # ties are wrong
    assert table(s.ravel(), 4, names)["academy"]["academy"] == 0.75
    with pytest.raises(ValueError, match="responses"):
        (tmp_path / "bad.json").write_text(json.dumps([{"query": "q", "responses": {"academy": "a"}}]))
        read_dsp(tmp_path / "bad.json")


def test_promptable_command_end_to_end(tmp_path):
    from endorm_server.evaluation.promptable import main as promptable_main

    rows = [
        {
            "query": f"Tell me about topic {i}.",
            "responses": {k: f"A {k} answer about topic {i}." for k in RESPONSE_KEYS},
        }
        for i in range(4)
    ]
    (tmp_path / "dsp.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    common = [
        "--engine",
        "transformers",
        "--model",
        str(tiny_model("llama")),
        "--dtype",
        "float32",
        "--aggregation",
        "all",
        "--no-progress",
        "-o",
        str(out),
    ]
    assert promptable_main([str(tmp_path / "dsp.json"), "--queries", "3", *common]) == 0
    report = json.loads((out / "dsp-promptable.json").read_text())
    assert report["queries"] == 3 and len(report["query_indices"]) == 3
    assert set(report["tables"]) == set(rewards.TOKEN_AGGREGATIONS)
    for agg, t in report["tables"].items():
        assert list(t) == [*DOMAINS, NO_SYSTEM]
        again = table(np.asarray(report["scores"][agg]).ravel(), 3, list(t))
        assert again == t
    assert (out / "dsp-promptable.png").read_bytes()[:4] == b"\x89PNG"
    assert "Criteria texts" in (out / "dsp-promptable.md").read_text()
    # a smaller nested table from the cache alone (no engine), the same numbers as scoring it
    assert (
        promptable_main(
            [
                str(tmp_path / "dsp.json"),
                "--queries",
                "2",
                "--name",
                "two",
                "--cached-only",
                "--cache",
                str(out / "dsp-promptable.scores.jsonl"),
                *common,
            ]
        )
        == 0
    )
    two = json.loads((out / "two.json").read_text())
    assert two["query_indices"] == report["query_indices"][:2]
    assert np.asarray(two["scores"]["sum"]).tolist() == np.asarray(report["scores"]["sum"])[:, :2].tolist()
    assert (
        promptable_main(
            [
                str(tmp_path / "dsp.json"),
                "--queries",
                "4",
                "--name",
                "four",
                "--cached-only",
                "--cache",
                str(out / "dsp-promptable.scores.jsonl"),
                *common,
            ]
        )
        == 2
    )  # one not scored
