from __future__ import annotations

import asyncio

import pytest

from service.admission import AdmissionController, Draining, Overloaded


async def test_admits_within_budget_and_rejects_past_the_wait():
    ac = AdmissionController(max_tokens=100, max_wait_s=0.05)
    async with ac.admit(60):
        assert ac.tokens == 60 and ac.requests == 1
        async with ac.admit(40):
            assert ac.tokens == 100
        with pytest.raises(Overloaded) as exc:
            async with ac.admit(41):
                pass
        assert exc.value.reason == "wait_timeout"
    assert ac.tokens == 0 and ac.requests == 0 and ac.waiting == 0


async def test_waiter_is_admitted_when_room_frees():
    ac = AdmissionController(max_tokens=100, max_wait_s=2)
    order = []

    async def holder():
        async with ac.admit(100):
            order.append("a-in")
            await asyncio.sleep(0.05)
        order.append("a-out")

    async def waiter():
        await asyncio.sleep(0.01)
        async with ac.admit(50) as waited:
            order.append("b-in")
            assert waited > 0.02

    await asyncio.gather(holder(), waiter())
    assert order == ["a-in", "a-out", "b-in"]


async def test_oversized_request_runs_alone_and_queue_is_bounded():
    ac = AdmissionController(max_tokens=10, max_wait_s=1, max_waiting=1)
    async with ac.admit(1000):  # larger than the budget: admitted when nothing else runs
        waiter = asyncio.ensure_future(ac.admit(5).__aenter__())
        await asyncio.sleep(0.01)
        assert ac.waiting == 1
        with pytest.raises(Overloaded) as exc:
            async with ac.admit(5):
                pass
        assert exc.value.reason == "queue_full"
    await waiter  # admitted once the big one left
    assert ac.requests == 1


async def test_draining_turns_new_requests_away_but_keeps_waiters():
    ac = AdmissionController(max_tokens=10, max_wait_s=2)
    admitted = []

    async def waiter():
        async with ac.admit(10):
            admitted.append(True)

    async with ac.admit(10):
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        await ac.start_draining()
        with pytest.raises(Draining):
            async with ac.admit(1):
                pass
    await task
    assert admitted == [True] and ac.requests == 0 and ac.waiting == 0
