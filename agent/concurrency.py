"""One bounded-concurrency map for the whole project (episodes, rollouts, eval jobs, data synthesis).

``map_bounded`` runs ``fn`` over ``items`` with at most ``limit`` running at once, under one
``asyncio.TaskGroup``. An ``Exception`` raised by one item is *returned* in that item's slot instead of
cancelling its siblings, so one bad episode never loses a batch; cancellation (and other
``BaseException``\\ s such as ``KeyboardInterrupt``) still propagates and cancels everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["map_bounded"]


async def map_bounded(fn: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int,
                      ) -> list[R | Exception]:
    """Results in input order; an item whose ``fn`` raised an ``Exception`` holds that exception."""
    todo = list(items)
    sem = asyncio.Semaphore(max(1, int(limit)))
    out: list[R | Exception] = [None] * len(todo)  # type: ignore[list-item]

    async def one(i: int, item: T) -> None:
        async with sem:
            try:
                out[i] = await fn(item)
            except Exception as exc:  # noqa: BLE001 - recorded in the item's own slot
                out[i] = exc

    async with asyncio.TaskGroup() as tg:
        for i, item in enumerate(todo):
            tg.create_task(one(i, item))
    return out
