"""The matcher's garbage-collector pacing: survivors exempted from full collections, young cycles
still collected, exempted objects still freed once dropped, and a cycle that turns to garbage after
its exemption collected by the periodic sweep."""

from __future__ import annotations

import asyncio
import gc
import weakref

from services.matcher.app import keep_collections_short


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def test_survivors_are_exempted_and_young_cycles_still_collected() -> None:
    held = [Node() for _ in range(5_000)]  # what the matcher keeps: open demands, say
    cycle = Node()
    cycle.other = cycle  # garbage that only the collector can free
    gone = weakref.ref(cycle)
    del cycle
    frozen = gc.get_freeze_count()
    task = asyncio.create_task(keep_collections_short(period=0.01))
    try:
        for _ in range(500):
            if gc.get_freeze_count() >= frozen + len(held):
                break
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() >= frozen + len(held)  # the survivors are exempted
        assert gone() is None  # collected before the exemption, not exempted with the survivors
        dropped = weakref.ref(held[0])
        held.clear()
        assert dropped() is None  # an exempted object is still freed when nothing refers to it
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()


async def test_a_cycle_dropped_after_its_exemption_is_collected_by_the_sweep() -> None:
    kept = Node()
    kept.other = kept
    holder = [kept]
    exempted = weakref.ref(kept)
    del kept
    task = asyncio.create_task(keep_collections_short(period=0.01, sweep_every=0.2))
    try:
        await asyncio.sleep(0.05)  # exempted by now (a tick or more), before the first sweep
        holder.clear()  # garbage now, and only the collector can free it
        for _ in range(300):
            if exempted() is None:
                break
            await asyncio.sleep(0.01)
        assert exempted() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()
