"""RunAdmission, the slots of RLM runs: capacity, the bounded queue, its timeout, cancellation, fairness."""

from __future__ import annotations

import asyncio

import pytest

from proxy.admission import RunAdmission, workers_memory_holds
from proxy.errors import ProxyError

pytestmark = pytest.mark.asyncio


class Seen:
    def __init__(self) -> None:
        self.changes: list[tuple[int, int]] = []
        self.rejected: list[str] = []

    def admission_changed(self, running: int, queued: int) -> None:
        self.changes.append((running, queued))

    def admission_rejected(self, reason: str) -> None:
        self.rejected.append(reason)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_runs_start_at_once_up_to_the_capacity_then_wait() -> None:
    admission = RunAdmission(2, 10, 60)
    await admission.enter("a")
    await admission.enter("b")
    waiting = asyncio.ensure_future(admission.enter("c"))
    await settle()
    assert not waiting.done() and (admission.running, admission.queued) == (2, 1)
    admission.leave("a")
    await asyncio.wait_for(waiting, 1)
    assert (admission.running, admission.queued) == (2, 0)


async def test_a_full_queue_refuses_at_once_with_a_503() -> None:
    seen = Seen()
    admission = RunAdmission(1, 1, 60, seen)
    await admission.enter("a")
    waiting = asyncio.ensure_future(admission.enter("a"))
    await settle()
    with pytest.raises(ProxyError) as refused:
        await admission.enter("b")
    error = refused.value
    assert (error.status, error.code, error.headers["retry-after"]) == (503, "server_overloaded", "5")
    assert "1 RLM runs are going and 1 are waiting" in error.message
    assert seen.rejected == ["queue_full"]
    waiting.cancel()


async def test_a_wait_that_runs_out_is_a_503_and_leaves_the_queue() -> None:
    seen = Seen()
    admission = RunAdmission(1, 5, 0.05, seen)
    await admission.enter("a")
    with pytest.raises(ProxyError) as refused:
        await admission.enter("b")
    assert refused.value.code == "server_overloaded" and "within 0.05 s" in refused.value.message
    assert (admission.running, admission.queued) == (1, 0)
    assert seen.rejected == ["queue_timeout"]
    admission.leave("a")
    await asyncio.wait_for(admission.enter("b"), 1)  # the slot went to nobody in the meantime


async def test_a_cancelled_waiter_leaves_the_queue_and_its_slot_goes_on() -> None:
    admission = RunAdmission(1, 5, 60)
    await admission.enter("a")
    gone = asyncio.ensure_future(admission.enter("b"))
    after = asyncio.ensure_future(admission.enter("c"))
    await settle()
    gone.cancel()
    await settle()
    assert admission.queued == 1
    admission.leave("a")
    await asyncio.wait_for(after, 1)
    assert (admission.running, admission.queued) == (1, 0)


async def test_a_waiter_cancelled_just_as_it_was_granted_hands_the_slot_on() -> None:
    admission = RunAdmission(1, 5, 60)
    await admission.enter("a")
    unlucky = asyncio.ensure_future(admission.enter("b"))
    next_in_line = asyncio.ensure_future(admission.enter("c"))
    await settle()
    admission.leave("a")  # grants b's slot; b is cancelled before it runs again
    unlucky.cancel()
    await asyncio.wait_for(next_in_line, 1)
    assert unlucky.cancelled()
    assert (admission.running, admission.queued) == (1, 0)


async def test_keys_take_turns_when_a_slot_frees() -> None:
    admission = RunAdmission(1, 10, 60)
    await admission.enter("burst")
    order: list[str] = []

    async def run(key: str) -> None:
        await admission.enter(key)
        order.append(key)

    # One key's burst queues first; another key's single run arrives last.
    tasks = [asyncio.ensure_future(run(key)) for key in ("burst", "burst", "burst", "other")]
    await settle()
    for _ in range(4):
        admission.leave(order[-1] if order else "burst")
        await settle()
    await asyncio.gather(*tasks)
    assert order == ["other", "burst", "burst", "burst"]


async def test_the_key_with_fewer_runs_going_goes_first() -> None:
    admission = RunAdmission(3, 10, 60)
    for key in ("a", "a", "b"):
        await admission.enter(key)
    order: list[str] = []

    async def run(key: str) -> None:
        await admission.enter(key)
        order.append(key)

    tasks = [asyncio.ensure_future(run(key)) for key in ("a", "b")]  # a has waited longer
    await settle()
    admission.leave("b")  # a has 2 going, b none: b's waiter goes first
    await settle()
    assert order == ["b"]
    admission.leave("a")
    await asyncio.gather(*tasks)
    assert order == ["b", "a"]


async def test_the_observer_sees_every_change() -> None:
    seen = Seen()
    admission = RunAdmission(1, 5, 60, seen)
    await admission.enter("a")
    waiting = asyncio.ensure_future(admission.enter("b"))
    await settle()
    admission.leave("a")
    await waiting
    admission.leave("b")
    assert seen.changes[-1] == (0, 0)
    assert (1, 1) in seen.changes


async def test_default_workers_are_what_memory_holds_shared_by_the_server_processes() -> None:
    gib = 1024 ** 3
    assert workers_memory_holds(1024, 24 * gib) == 23  # 24 GiB less 512 MiB for the proxy, 1 GiB each
    assert workers_memory_holds(512, 24 * gib) == 47
    # Four processes: 24 GiB less 4 x 512 MiB, a quarter each.
    assert workers_memory_holds(1024, 24 * gib, processes=4) == 5
    assert workers_memory_holds(4096, 2 * gib) == 1  # never 0: one run still fits on a small machine
