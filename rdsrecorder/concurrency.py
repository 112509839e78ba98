"""Coroutines run a few at a time: reading many manifests or objects, writing every DB's manifest
of a fleet, without one task per item all at once nor one after another. And the few helpers of
work that runs beside the rest (a future someone may or may not await)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def bounded(limit: int, coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs ``coros`` at most ``limit`` at a time, results in order. The first error is raised
    as itself (not as an ExceptionGroup), so the CLI prints one line."""
    gate = asyncio.Semaphore(max(1, limit))

    async def gated(coro: Coroutine[Any, Any, T]) -> T:
        try:
            async with gate:
                return await coro
        finally:
            coro.close()  # one cancelled while waiting for the gate must not warn "never awaited"

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(gated(c)) for c in coros]
    except ExceptionGroup as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


def retrieved(fut: asyncio.Future[Any]) -> None:
    """Done-callback of a future nobody may await: its error counts as seen (no "exception was
    never retrieved" when it is collected); whoever awaits it still gets it."""
    if not fut.cancelled():
        fut.exception()


async def cancelled(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` and waits for it to end; what it raised is dropped (nobody wants it)."""
    task.cancel()
    await asyncio.wait([task])
    retrieved(task)
