"""The load-test and benchmark building blocks, without a server or an engine."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from loadtests.bench import latency as lat
from loadtests.bench.cli import summarize
from loadtests.bench.report import compute_ratios, write_report
from loadtests.config import Dist, LoadConfig, parse_wait, schedule, step_users, users_at
from loadtests.payloads import RESERVED_IDS, PayloadFactory, request_mix
from loadtests.thresholds import Summary, violations


@pytest.mark.parametrize(
    "spec, lo, hi",
    [
        ("fixed:7", 7, 7),
        ("uniform:3:9", 3, 9),
        ("choice:1,4,8", 1, 8),
        ("lognormal:100:1.0:10:400", 10, 400),
    ],
)
def test_dist_samples_stay_in_range(spec, lo, hi):
    d = Dist.parse(spec)
    rng = random.Random(0)
    xs = [d.sample(rng) for _ in range(2000)]
    assert lo <= min(xs) and max(xs) <= hi and d.upper == hi
    if spec.startswith("lognormal"):
        assert 60 < sorted(xs)[1000] < 160  # median near 100


@pytest.mark.parametrize(
    "spec", ["", "fixed", "fixed:-1", "uniform:5:2", "choice:", "lognormal:0:1", "zipf:3", "uniform:a:b"]
)
def test_dist_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        Dist.parse(spec)


def test_config_from_env_and_back():
    env = {
        "ENDORM_LT_PROMPT_TOKENS": "fixed:10",
        "ENDORM_LT_BATCH": "choice:2,3",
        "ENDORM_LT_RETURN_TOKENS": "0.5",
        "ENDORM_LT_MAX_P99_MS": "1500",
        "ENDORM_LT_MAX_FAIL_RATIO": "none",
        "ENDORM_LT_SHAPE": "step",
        "ENDORM_LT_STEPS": "1,3",
        "ENDORM_LT_HONOR_RETRY_AFTER": "false",
        "ENDORM_LT_WAIT": "pacing:2",
    }
    cfg = LoadConfig.from_env(env)
    assert cfg.prompt_tokens.sample(random.Random(0)) == 10
    assert cfg.return_tokens == 0.5 and cfg.max_p99_ms == 1500 and cfg.max_fail_ratio is None
    assert cfg.honor_retry_after is False and cfg.shape == "step"
    assert LoadConfig.from_env(cfg.env()) == cfg


@pytest.mark.parametrize(
    "env",
    [
        {"ENDORM_LT_SHAPE": "sine"},
        {"ENDORM_LT_INPUT": "audio"},
        {"ENDORM_LT_WAIT": "pacing"},
        {"ENDORM_LT_STEPS": "1,x"},
        {"ENDORM_LT_RETURN_TOKENS": "2"},
    ],
)
def test_config_rejects_bad_values(env):
    with pytest.raises(ValueError):
        LoadConfig.from_env(env)


def test_wait_and_steps_parsing():
    assert parse_wait("between:0.5:2") == ("between", (0.5, 2.0))
    assert parse_wait("none") == ("none", ())
    assert step_users("1, 2,4") == [1, 2, 4]


@pytest.mark.parametrize("mode", ["ids", "text", "mixed"])
def test_payloads_fit_the_model_and_the_item_limit(mode):
    cfg = LoadConfig(
        input=mode,
        prompt_tokens=Dist.parse("lognormal:300:1.5:1:5000"),
        response_tokens=Dist.parse("lognormal:200:1.5:1:5000"),
        batch=Dist.parse("choice:1,50,100"),
        compare_n=Dist.parse("choice:2,99"),
        max_items=16,
        return_tokens=0.5,
    )
    f = PayloadFactory(cfg, vocab_size=300, max_model_len=512, seed=1)
    seen_tokens = set()
    for _ in range(200):
        p = f.score()
        assert p.path == "/score" and 1 <= p.items == len(p.body["items"]) <= 16
        for item in p.body["items"]:
            if "prompt_ids" in item:
                ids = item["prompt_ids"] + item["response_ids"]
                assert len(ids) <= 512 - 8 and all(RESERVED_IDS <= i < 300 for i in ids)
            else:
                assert len(item["prompt"].split()) + len(item["response"].split()) <= (512 - 8) // 3
                assert p.body["truncate"] is True
        seen_tokens.add(p.body["return_tokens"])
        c = f.compare()
        assert c.path == "/compare" and 2 <= c.items <= 16
        responses = c.body.get("responses_ids") or c.body.get("responses")
        assert len(responses) == c.items
    assert seen_tokens == {True, False}


def test_payload_token_count_is_exact_for_ids():
    cfg = LoadConfig(
        prompt_tokens=Dist.parse("fixed:30"), response_tokens=Dist.parse("fixed:20"), batch=Dist.parse("fixed:3")
    )
    p = PayloadFactory(cfg, vocab_size=1000, max_model_len=4096).score()
    assert p.tokens == 150 == sum(len(i["prompt_ids"]) + len(i["response_ids"]) for i in p.body["items"])


def test_request_mix_is_an_exact_cycle_and_users_start_apart():
    first = [next(request_mix(3, 1, start=u)) for u in range(4)]
    assert sorted(first) == ["compare", "score", "score", "score"]  # 4 users' first requests cover both
    assert list(itertools.islice(request_mix(3, 1), 8)) == ["score", "score", "score", "compare"] * 2
    assert set(itertools.islice(request_mix(0, 2, start=5), 10)) == {"compare"}


def test_shapes_schedules():
    step = LoadConfig(shape="step", steps="1,2,4", step_s=5)
    assert schedule(step) == [(0, 5, 1), (5, 10, 2), (10, 15, 4)]
    assert users_at(schedule(step), 7.5) == 2 and users_at(schedule(step), 15) is None
    spike = LoadConfig(shape="spike", base_users=1, spike_users=9, spike_at_s=3, spike_s=2, after_s=4)
    assert [u for *_, u in schedule(spike)] == [1, 9, 1] and schedule(spike)[-1][1] == 9
    ramp = LoadConfig(shape="ramp", ramp_users=10, ramp_s=10, hold_s=5)
    users = [u for *_, u in schedule(ramp)]
    assert users == sorted(users) and users[-1] == 10 and schedule(ramp)[-1][1] == 15
    assert schedule(LoadConfig()) == []


def _summary(**kw):
    base = dict(
        requests=100,
        failures=0,
        rejected=0,
        rejected_429=0,
        rejected_503=0,
        duration_s=10,
        rps=10,
        tokens_per_s=1000,
        p50_ms=100,
        p95_ms=200,
        p99_ms=300,
        max_ms=400,
    )
    return Summary(**{**base, **kw})


def test_thresholds():
    cfg = LoadConfig(max_fail_ratio=0.01, max_reject_ratio=0.5, max_p95_ms=250, max_p99_ms=350)
    assert violations(cfg, _summary()) == []
    assert violations(cfg, _summary(rejected=30, rejected_429=30)) == []  # rejections are not failures
    problems = violations(cfg, _summary(failures=5, rejected=200, p95_ms=260, p99_ms=500))
    assert len(problems) == 4 and any("failure ratio" in p for p in problems)
    assert violations(LoadConfig(min_requests=5), _summary(requests=0)) != []
    assert "0 x 503" in _summary().describe()


def _synthetic_step_log(path, pacing=1.0):
    """Steps of 1, 2, 8 users; the fake service sustains 4 req/s and rejects every other request at 8."""
    cfg = lat.step_config(
        steps="1,2,8",
        step_s=10,
        pacing_s=pacing,
        prompt_len=8,
        response_len=8,
        api_key="",
        log=path,
        summary=path.with_suffix(".json"),
    )
    t0 = 1000.0
    recs = [{"event": "test_start", "t": t0}]
    for start, end, users in schedule(cfg):
        offered = users / pacing
        for i in range(int(offered * (end - start))):
            t = t0 + start + (i + 0.5) / offered
            accepted = offered <= 4 or i % 2 == 0
            recs.append(
                {
                    "event": "request",
                    "t": t,
                    "ms": 100.0 * users if accepted else 2.0,
                    "ok": accepted,
                    "rejected": not accepted,
                    "tokens": 16,
                    "items": 1,
                    "users": users,
                }
            )
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return cfg


def test_latency_analysis_finds_the_knee(tmp_path):
    cfg = _synthetic_step_log(tmp_path / "log.jsonl")
    steps = lat.analyse(tmp_path / "log.jsonl", cfg, pacing_s=1.0)
    assert [s.users for s in steps] == [1, 2, 8]
    assert steps[0].rejected == 0 and steps[1].rejected == 0 and steps[2].reject_ratio == pytest.approx(0.5, abs=0.05)
    assert abs(steps[1].goodput_rps - 2.0) < 0.3 and steps[1].p99_s == pytest.approx(0.2)
    assert abs(steps[2].goodput_rps - 4.0) < 0.5 and steps[2].attempted_rps == pytest.approx(8.0, abs=0.5)
    assert lat.knee(steps) == 1  # 2 req/s is the highest offered load within capacity (4 req/s)


def _fake_results(tmp_path):
    rounds = [
        {"http": 10.5, "http+tokens": 11.0, "inproc": 10.0, "stock0": 12.0, "naive": 30.0},
        {"http": 10.2, "http+tokens": 11.5, "inproc": 9.8, "stock0": 12.5, "naive": 29.0},
    ]
    cfg = _synthetic_step_log(tmp_path / "log.jsonl")
    steps = lat.analyse(tmp_path / "log.jsonl", cfg, pacing_s=1.0)

    def mem_rows(f):
        return [
            {"tokens": n, "extra_bytes": f(n), "peak_bytes": 2**30 + f(n), "seconds": 1.0} for n in (512, 1024, 2048)
        ]

    return {
        "date": "2000-01-01",
        "command": "python -m loadtests.bench --quick",
        "quick": True,
        "machine": {
            "cpu": "Test CPU",
            "cpus": 2,
            "isa": "avx2",
            "memory_gib": 24.0,
            "gpu": None,
            "os": "Linux",
            "python": "3.11",
            "versions": {"vllm": "0.32.0"},
            "git": "abc",
            "slug": "cpu2-avx2",
        },
        "model": {"vocab_size": 32000, "describe": "llama, vocab 32000", "path": "/x/bench"},
        "engine_settings": {"logits_chunk_rows": 256, "dtype": "float32"},
        "workloads": {"saturation": "16 x 512", "full_vocab": "2 x 128"},
        "throughput": {
            "rounds": rounds,
            "tokens": 8192,
            "tokens_per_s": {k: summarize([8192 / r[k] for r in rounds]) for k in rounds[0]},
        },
        "full_vocab": {
            "rounds": [{"inproc": 0.2, "stock0": 0.25, "stockfull": 25.0}, {"inproc": 0.22, "stock0": 0.24}],
            "tokens": 256,
        },
        "memory": {"plugin": mem_rows(lambda n: 30 * 2**20), "naive": mem_rows(lambda n: n * 32000 * 12)},
        "latency": lat.derive(
            {
                "steps": lat.steps_as_dicts(steps),
                "request": "/score, 1 item",
                "pacing_s": 1.0,
                "tokens_per_request": 16,
                "max_inflight_tokens": 64,
                "queue_timeout_s": 2.0,
                "engine_step_tokens": 32,
            }
        ),
        "loadavg": {"start": [1.0, 1.0, 1.0], "end": [2.0, 2.0, 2.0]},
        "checks": {"plugin_vs_naive_c": 1e-5, "plugin_vs_naive_v": 1e-5, "plugin_vs_stock0_logprob": 2e-5},
    }


def test_ratios_against_targets(tmp_path):
    ratios = {r["key"]: r for r in compute_ratios(_fake_results(tmp_path))}
    assert ratios["service_overhead"]["value"] == pytest.approx((10 / 10.5 + 9.8 / 10.2) / 2)
    assert ratios["service_overhead"]["met"] is True
    assert ratios["vs_stock0"]["met"] is True and ratios["vs_stock0"]["op"] == "<="
    assert ratios["vs_stockfull"]["value"] == pytest.approx(25.0 / 0.21) and ratios["vs_stockfull"]["met"]
    assert ratios["plugin_mem_growth"]["value"] == 0 and ratios["plugin_mem_growth"]["met"]
    assert ratios["vs_naive"]["target"] is None and ratios["vs_naive"]["met"] is None
    assert ratios["p99_past_knee"]["target"] == pytest.approx(2.0 + (64 + 32) / 64.0, rel=0.05)
    assert ratios["p99_past_knee"]["met"] is True


def test_report_files(tmp_path):
    paths = write_report(_fake_results(tmp_path), tmp_path / "results", "2000-01-01-cpu2-avx2")
    names = {p.name for p in paths}
    assert {
        "2000-01-01-cpu2-avx2.md",
        "2000-01-01-cpu2-avx2.json",
        "2000-01-01-cpu2-avx2-throughput.png",
        "2000-01-01-cpu2-avx2-memory.png",
        "2000-01-01-cpu2-avx2-latency.png",
    } == names
    md = (tmp_path / "results" / "2000-01-01-cpu2-avx2.md").read_text()
    assert "HTTP / in-process throughput" in md and "python -m loadtests.bench --quick" in md
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000
    data = json.loads((tmp_path / "results" / "2000-01-01-cpu2-avx2.json").read_text())
    assert data["ratios"] and data["figures"]["latency"].endswith("latency.png")


def test_profile_summary_of_collapsed_stacks(tmp_path):
    from loadtests.bench import profile

    raw = (
        "main (a.py:1);GPUModelRunner._model_forward (r.py:2);onednn_mm (o.py:3) 6\n"
        "main (a.py:1);_PoolerMixin.forward (m.py:9);chunked_token_stats (t.py:4);onednn_mm (o.py:3) 3\n"
        "main (a.py:1);_PoolerMixin.forward (m.py:9);chunked_token_stats (t.py:4);shard_stats (t.py:7) 1\n"
    )
    (tmp_path / "w.txt").write_text(raw)
    total, inc, leaf = profile.inclusive_shares(raw)
    assert total == 10 and inc["onednn_mm [o.py]"] == 9 and leaf["shard_stats [t.py]"] == 1
    s = profile.summarize({"worker": tmp_path / "w.txt"}, seconds=1)["worker"]
    parts = {k.split(" (")[0]: v for k, v in s["parts"].items()}
    assert parts["pooler"] == pytest.approx(0.4) and parts["model body"] == pytest.approx(0.6)
    assert parts["logsumexp / gather outside the matmul"] == pytest.approx(0.1)
    assert s["active_share"] == pytest.approx(10 / profile.RATE_HZ)
