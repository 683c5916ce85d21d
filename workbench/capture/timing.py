"""CUDA timing events for per-module forward times, reused across traces.

Every recorded call needs a start and an end event. A SmolLM2 forward makes ~640 calls, so creating
and destroying ~1,280 events per trace would be host work on the critical path of a forward that is
bound by kernel launches. Events go back to a per-device pool once their times are read (after the
trace's single synchronisation), so a notebook re-running a traced cell records into old events.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

LIMIT = 16384  # events kept per device (~a dozen traces of a 30-layer model); the rest are freed


def uses_cuda_events(device: torch.device) -> bool:
    """Time with CUDA events (read at exit, no per-module sync) rather than perf_counter."""
    return device.type == "cuda"


class EventPool:
    """Finished timing events of one device, ready to be recorded again."""

    def __init__(self) -> None:
        self._free: list[Any] = []
        self.created = 0  # events this pool had to create (for tests and diagnostics)

    def get(self) -> Any:
        if self._free:
            return self._free.pop()
        self.created += 1
        return torch.cuda.Event(enable_timing=True)

    def put(self, events: Iterable[Any]) -> None:
        free = self._free
        for ev in events:
            if len(free) >= LIMIT:
                break
            free.append(ev)


_POOLS: dict[torch.device, EventPool] = {}


def event_pool(device: torch.device) -> EventPool:
    """The pool of `device` (an event recorded on one device cannot be recorded on another)."""
    pool = _POOLS.get(device)
    if pool is None:
        pool = _POOLS[device] = EventPool()
    return pool
