"""Three ``endorm serve`` replicas (the tiny llama) behind a real HAProxy on 127.0.0.1.

- Prompt affinity: HAProxy hashes the SDK's X-EndoRM-Affinity header consistently, so every
  request of a group (one sample per request, as verl and OpenRLHF send them) reaches one replica
  and reuses its prefix cache; the same load balanced round-robin computes the prompt on each
  replica it reaches. The loss is the ratio of prompt tokens computed (prompt tokens minus the
  replicas' ``endorm_prefix_cache_hit_tokens``), from the counters.
- A replica killed under load: no request is lost through the SDK (HAProxy's redispatch and the
  SDK's retries), only the dead replica's keys move, and it takes them back when it returns.

Every outcome is read from HAProxy (the server that answered each request, the health state on
its runtime socket) and the replicas' counters; nothing waits a fixed time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from endorm_client import RewardClient
from endorm_client.affinity import prompt_key
from loadtests.server import LocalServer
from tests.conftest import COMMON, tiny_model
from tests.replicas.haproxy import SERVED_BY, HAProxy, require_haproxy

NAMES = ("r0", "r1", "r2")
VICTIM = "r1"
PROMPT_LEN, RESPONSE_LEN, GROUPS, GROUP_SIZE = 384, 8, 12, 8  # GRPO-like: 12 prompts x 8 samples
HIT_METRIC = "endorm_prefix_cache_hit_tokens"


def replica(name: str, port: int | None, workdir: Path) -> LocalServer:
    return LocalServer(
        ["--model", str(tiny_model("llama")), *COMMON], port=port, log_path=workdir / f"{name}.log", ready_timeout_s=900
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[dict[str, LocalServer], HAProxy]]:
    exe = require_haproxy()
    workdir = tmp_path_factory.mktemp("replicas")
    servers = {name: replica(name, None, workdir) for name in NAMES}
    proxy = None
    try:
        for srv in servers.values():  # started together, so the three engines load at once
            srv.start()
        for srv in servers.values():
            srv.wait_ready()
        proxy = HAProxy(exe, workdir, {name: srv.port for name, srv in servers.items()}).start()
        for backend in ("by_prompt", "round_robin"):
            proxy.wait_status(backend, dict.fromkeys(NAMES, "UP"))
        yield servers, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for srv in servers.values():
            srv.stop()


def hit_tokens(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == HIT_METRIC
        for s in f.samples
        if s.name == HIT_METRIC + "_total"
    )


def group_items(seed: int, groups: int, size: int, prompt_len: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(groups):
        prompt = [rng.randrange(10, 500) for _ in range(prompt_len)]
        out.append(
            [
                {"prompt_ids": prompt, "response_ids": [rng.randrange(10, 500) for _ in range(RESPONSE_LEN)]}
                for _ in range(size)
            ]
        )
    return out


def score_one(rm: RewardClient, item: dict) -> tuple[str, int]:
    """One sample per request, through the SDK (retries, the affinity header): (server, prompt tokens)."""
    resp = rm.request("POST", "/score", json={"items": [item]}, affinity=prompt_key(item))
    return resp.headers[SERVED_BY], resp.json()["usage"]["prompt_tokens"]


def run_groups(url: str, servers: dict[str, LocalServer], seed: int) -> dict:
    """The groups' samples one request each, in order; what each replica served and computed."""
    before = {n: hit_tokens(s.url) for n, s in servers.items()}
    served: dict[str, set[str]] = {}
    prompt_tokens = 0
    with RewardClient(url, timeout=300) as rm:
        for group in group_items(seed, GROUPS, GROUP_SIZE, PROMPT_LEN):
            for item in group:
                name, tokens = score_one(rm, item)
                served.setdefault(prompt_key(item), set()).add(name)
                prompt_tokens += tokens
    hits = {n: hit_tokens(s.url) - before[n] for n, s in servers.items()}
    return {
        "served": served,
        "prompt_tokens": prompt_tokens,
        "hit_tokens": hits,
        "computed_prompt_tokens": prompt_tokens - sum(hits.values()),
    }


def test_affinity_keeps_each_group_on_one_replica_round_robin_loses_the_cache(cluster, capsys):
    servers, proxy = cluster
    aff = run_groups(proxy.affinity_url, servers, seed=1)
    rr = run_groups(proxy.rr_url, servers, seed=2)  # other prompts of the same lengths: no cache carried over
    assert all(len(names) == 1 for names in aff["served"].values()), aff["served"]
    assert sum(len(names) for names in rr["served"].values()) > GROUPS  # round-robin scatters groups
    # with affinity each prompt is computed about once (its later samples hit the cache, up to the
    # last partial block); round-robin computes it once per replica a group reaches
    assert aff["computed_prompt_tokens"] < GROUPS * PROMPT_LEN * 1.5, aff
    ratio = rr["computed_prompt_tokens"] / aff["computed_prompt_tokens"]
    assert ratio > 2, (aff, rr)
    result = {
        "setup": f"3 endorm serve replicas (tiny llama, {' '.join(COMMON)}) behind HAProxy 2.6 on 127.0.0.1; "
        f"{GROUPS} groups x {GROUP_SIZE} samples, one sample per request, prompt {PROMPT_LEN} tokens, "
        f"response {RESPONSE_LEN}; affinity: balance hdr(X-EndoRM-Affinity) + hash-type consistent; "
        "round-robin: balance roundrobin; computed = prompt tokens - endorm_prefix_cache_hit_tokens",
        "affinity": {k: v for k, v in aff.items() if k != "served"},
        "round_robin": {k: v for k, v in rr.items() if k != "served"},
        "replicas_per_group": {
            "affinity": sorted(len(v) for v in aff["served"].values()),
            "round_robin": sorted(len(v) for v in rr["served"].values()),
        },
        "computed_prompt_tokens_ratio_rr_over_affinity": round(ratio, 3),
    }
    out = os.environ.get("ENDORM_REPLICAS_RESULT")
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    with capsys.disabled():
        print(
            f"\nprompt tokens computed, round-robin / affinity: {ratio:.2f} "
            f"({rr['computed_prompt_tokens']:.0f} / {aff['computed_prompt_tokens']:.0f})"
        )


def probe(url: str, keys: list[dict]) -> dict[str, str]:
    with RewardClient(url, timeout=300) as rm:
        return {prompt_key(item): score_one(rm, item)[0] for item in keys}


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "endorm_in_flight_requests"
        for s in f.samples
    )


def victim_served(log: list[tuple[str, str]], lock: threading.Lock) -> int:
    with lock:
        return sum(1 for _, name in log if name == VICTIM)


def wait_until(condition, deadline_s: float, errors: list[str]) -> bool:
    """Poll ``condition`` until it holds (True) or a load thread failed or the deadline passed (False)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not errors:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_killed_replica_loses_no_request_and_only_its_keys_move(cluster, tmp_path):
    servers, proxy = cluster
    keys = [g[0] for g in group_items(3, 30, 1, 32)]
    before = probe(proxy.affinity_url, keys)
    assert set(before.values()) == set(NAMES), before  # fixed prompts and server names: a fixed mapping

    stop, errors, log = threading.Event(), [], []  # log: (phase, server) per load request
    phase = ["before"]
    lock = threading.Lock()

    def load(seed: int) -> None:
        with RewardClient(
            proxy.affinity_url, timeout=300, max_retries=20, backoff_max=1.0, retry_statuses=(429, 502, 503, 504)
        ) as rm:
            k = 0
            while not stop.is_set():
                for item in group_items(seed * 1000 + k, 1, 4, 256)[0]:
                    try:
                        name, _ = score_one(rm, item)
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                        errors.append(repr(exc))
                        continue
                    with lock:
                        log.append((phase[0], name))
                k += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    victim = servers[VICTIM]
    try:
        for t in threads:
            t.start()
        # kill the victim while it serves: once it has answered load requests and, if the poll
        # catches it, with one in flight (a generous deadline: the outcome is the state, not the time)
        seen_in_flight = wait_until(
            lambda: victim_served(log, lock) >= 3 and in_flight(victim.url) >= 1, deadline_s=600, errors=errors
        )
        assert victim_served(log, lock) >= 3, f"the victim got no load: {errors[:3]}"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.proc.wait(60)
        phase[0] = "killed"
        proxy.wait_status("by_prompt", {VICTIM: "DOWN"})
        phase[0] = "down"
        mark = len(log)
        assert wait_until(lambda: len(log) - mark >= 40, deadline_s=900, errors=errors), (
            f"40 load requests after the kill did not complete: {errors[:3]}"
        )
    finally:
        stop.set()
        for t in threads:
            t.join(600)
    assert not errors, errors[:5]
    assert all(n != VICTIM for p, n in log if p == "down")
    moved = probe(proxy.affinity_url, keys)
    for key, name in before.items():
        if name == VICTIM:
            assert moved[key] != VICTIM
        else:
            assert moved[key] == name, "a key of a live replica moved"

    servers[VICTIM] = replica(VICTIM, victim.port, tmp_path)  # same port: HAProxy's server line
    servers[VICTIM].start().wait_ready()
    proxy.wait_status("by_prompt", {VICTIM: "UP"})
    assert probe(proxy.affinity_url, keys) == before
    print(
        f"load requests: {len(log)} ok, 0 lost; victim in flight at the kill: {seen_in_flight}; "
        f"keys moved and back: {sum(1 for n in before.values() if n == VICTIM)} of {len(keys)}"
    )
