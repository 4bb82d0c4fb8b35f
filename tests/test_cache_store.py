"""The in-process cache store's byte accounting: bounded by bytes first, entries second, LRU order."""

from __future__ import annotations

import asyncio
import os
import tracemalloc

from proxy.cache import ENTRY_OVERHEAD_BYTES, MAX_ENTRY_SHARE, MemoryStore

KIB = 1024


def cost(key: str, size: int) -> int:
    return len(key) + size + ENTRY_OVERHEAD_BYTES


async def test_bytes_count_keys_values_and_overhead() -> None:
    store = MemoryStore(max_bytes=64 * KIB, max_entries=100)
    await store.set("a", b"x" * 1000, ttl_s=60)
    await store.set("bb", b"y" * 10, ttl_s=60)
    assert store.bytes_used == 1 + 1000 + 2 + 10 + 2 * ENTRY_OVERHEAD_BYTES


async def test_the_count_covers_what_the_process_really_holds() -> None:
    store = MemoryStore(max_bytes=64 << 20, max_entries=100_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(5000):
            await store.set(f"rlm:v1:{number:064x}", os.urandom(100 + number % 400), ttl_s=60)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.8 * store.bytes_used <= held <= store.bytes_used


async def test_least_recently_used_goes_first_when_bytes_run_out() -> None:
    store = MemoryStore(max_bytes=64 * KIB, max_entries=100)
    keys = [f"{number:02}" for number in range(64 * KIB // cost("00", 3 * KIB))]  # as many as fit
    for key in keys:
        await store.set(key, bytes(3 * KIB), ttl_s=60)
    assert len(store) == len(keys)
    assert await store.get(keys[0]) is not None  # the second is now the least recently used
    await store.set("new", bytes(3 * KIB), ttl_s=60)
    assert await store.get(keys[1]) is None
    assert all([await store.get(key) is not None for key in [keys[0], *keys[2:], "new"]])
    assert store.bytes_used == (len(keys) - 1) * cost("00", 3 * KIB) + cost("new", 3 * KIB) <= 64 * KIB


async def test_one_large_entry_evicts_as_many_as_it_needs() -> None:
    cap = 160 * KIB
    store = MemoryStore(max_bytes=cap, max_entries=1000)
    small = cost("k000", KIB)
    for number in range(cap // small):
        await store.set(f"k{number:03}", bytes(KIB), ttl_s=60)
    big = int(cap * MAX_ENTRY_SHARE) - 300
    await store.set("big", bytes(big), ttl_s=60)
    assert await store.get("big") is not None
    assert store.bytes_used <= cap < store.bytes_used + small  # no more dropped than needed
    dropped = cap // small - (len(store) - 1)
    assert dropped > 1
    assert [await store.get(f"k{number:03}") is None for number in range(dropped + 1)] == [True] * dropped + [
        False]  # the oldest went


async def test_entries_over_a_share_of_the_cap_are_not_kept() -> None:
    store = MemoryStore(max_bytes=160 * KIB, max_entries=100)
    await store.set("small", bytes(KIB), ttl_s=60)
    await store.set("huge", bytes(int(160 * KIB * MAX_ENTRY_SHARE)), ttl_s=60)
    assert await store.get("huge") is None
    assert await store.get("small") is not None  # and nothing was evicted for it
    assert store.bytes_used == cost("small", KIB)


async def test_replacing_a_value_in_place_counts_only_the_new_one() -> None:
    store = MemoryStore(max_bytes=64 * KIB, max_entries=100)
    await store.set("k", bytes(4 * KIB), ttl_s=60)
    await store.set("k", bytes(100), ttl_s=60)
    assert len(store) == 1
    assert store.bytes_used == cost("k", 100)
    assert await store.get("k") == bytes(100)
    # A replacement too large to keep drops the old value rather than serving it.
    await store.set("k", bytes(64 * KIB), ttl_s=60)
    assert await store.get("k") is None
    assert store.bytes_used == 0 and len(store) == 0


async def test_expired_entries_give_their_bytes_back() -> None:
    store = MemoryStore(max_bytes=64 * KIB, max_entries=100)
    await store.set("old", bytes(2 * KIB), ttl_s=0)
    await store.set("new", bytes(KIB), ttl_s=60)
    await asyncio.sleep(0.01)
    assert await store.get("old") is None
    assert store.bytes_used == cost("new", KIB)
    assert len(store) == 1


async def test_entry_count_is_a_second_bound() -> None:
    store = MemoryStore(max_bytes=64 * KIB, max_entries=3)
    for key in "abcde":
        await store.set(key, b"v", ttl_s=60)
    assert len(store) == 3
    assert store.bytes_used == 3 * cost("a", 1)
    assert await store.get("b") is None and await store.get("c") is not None


async def test_closing_empties_the_store() -> None:
    store = MemoryStore(max_bytes=64 * KIB, max_entries=3)
    await store.set("a", b"v", ttl_s=60)
    await store.aclose()
    assert store.bytes_used == 0 and len(store) == 0
