"""The default CPU thread binding: what it sets, and that an explicit user setting wins."""

from __future__ import annotations

import os

import pytest

from endorm_server.engine import cpu_threads
from endorm_server.engine.cpu_threads import ALL_CORES_ENV, BIND_ENV, RESERVED_ENV, cpu_list, default_binding


def test_cpu_list_syntax():
    assert cpu_list([0]) == "0"
    assert cpu_list([3, 0, 1, 2, 7, 9, 8]) == "0-3,7-9"


def test_one_rank_on_a_small_machine_gets_every_core_by_default():
    assert default_binding([0, 1], 1, {}) == {BIND_ENV: "0-1"}  # measured 1.98x of vLLM's auto on 2 cores
    assert default_binding([0, 1, 2, 3], 1, {}) == {BIND_ENV: "0-3"}
    assert default_binding(list(range(5)), 1, {}) == {}  # more cores: vLLM's auto binding
    assert default_binding([0, 1], 1, {}, all_cores_up_to=0) == {}
    assert default_binding([0, 1], 1, {}, all_cores_up_to=4) == {BIND_ENV: "0-1"}


def test_all_cores_threshold_from_the_environment():
    assert default_binding([0, 1], 1, {ALL_CORES_ENV: "0"}) == {}
    assert default_binding(list(range(8)), 1, {ALL_CORES_ENV: "8"}) == {BIND_ENV: "0-7"}
    with pytest.raises(ValueError, match=ALL_CORES_ENV):
        default_binding([0, 1], 1, {ALL_CORES_ENV: "all"})
    assert default_binding([2, 3, 4, 5], 1, {}, all_cores_up_to=4) == {BIND_ENV: "2-5"}


def test_many_core_node_keeps_vllm_auto_binding():
    assert default_binding(list(range(64)), 1, {}, all_cores_up_to=4) == {}


def test_tensor_parallel_ranks_get_disjoint_slices():
    assert default_binding([0, 1], 2, {}) == {BIND_ENV: "0|1"}
    assert default_binding(list(range(8)), 2, {}) == {BIND_ENV: "0-3|4-7"}
    assert default_binding([0], 2, {}) == {BIND_ENV: "0|0"}  # fewer cores than ranks: share the last


@pytest.mark.parametrize("env", [{BIND_ENV: "auto"}, {BIND_ENV: "0"}, {RESERVED_ENV: "1"}])
def test_explicit_user_setting_wins(env):
    assert default_binding([0, 1], 1, env, all_cores_up_to=4) == {}
    assert default_binding([0, 1], 2, env) == {}


def test_apply_sets_the_environment_and_redoes_only_its_own_choice(monkeypatch):
    monkeypatch.delenv(BIND_ENV, raising=False)
    monkeypatch.delenv(RESERVED_ENV, raising=False)
    monkeypatch.delenv(ALL_CORES_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpu_threads, "ALL_CORES_UP_TO", 4)
    assert cpu_threads.apply_default_binding(1) == {BIND_ENV: "0-1"} and os.environ[BIND_ENV] == "0-1"
    assert cpu_threads.apply_default_binding(2) == {BIND_ENV: "0|1"} and os.environ[BIND_ENV] == "0|1"
    monkeypatch.setattr(cpu_threads, "ALL_CORES_UP_TO", 0)
    assert cpu_threads.apply_default_binding(1) == {} and BIND_ENV not in os.environ  # its own choice undone
    monkeypatch.setenv(BIND_ENV, "1")  # the user's own value: kept
    assert cpu_threads.apply_default_binding(1) == {} and os.environ[BIND_ENV] == "1"
