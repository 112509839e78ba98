"""The early listing of a single named DB (``EarlyLister``): used once, by the recorder's first
full listing, if fresh; anything else goes to RDS as usual."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from rdsrecorder.errors import AwsError
from rdsrecorder.models import LogFile
from rdsrecorder.rds import control
from rdsrecorder.rds.control import EarlyLister, RdsControl


class StubRds:
    """``list_log_files`` as RdsControl has it: counts calls, fails the first ``fail`` of them,
    and holds each answer until ``release`` is set."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[int | None] = []
        self.fail = fail
        self.release = asyncio.Event()
        self.release.set()
        self.cancelled = 0

    async def list_log_files(
        self, instance: str, since_ms: int | None = None
    ) -> AsyncIterator[LogFile]:
        self.calls.append(since_ms)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if len(self.calls) <= self.fail:
            raise AwsError("DB instance not found", code="DBInstanceNotFound")
        yield LogFile(instance, f"error/postgresql.log.{len(self.calls)}.csv", 1, 10)


def early(stub: StubRds) -> EarlyLister:
    return EarlyLister(cast(RdsControl, stub))


async def names(lister: EarlyLister, since_ms: int | None = None) -> list[str]:
    return [f.name async for f in lister.list_log_files("db-1", since_ms)]


async def test_the_first_full_listing_uses_the_early_answer_once() -> None:
    stub = StubRds()
    async with early(stub) as lister:
        lister.ask("db-1")
        lister.ask("db-1")  # once
        await asyncio.sleep(0)
        assert stub.calls == [None]
        assert await names(lister) == ["error/postgresql.log.1.csv"]
        assert stub.calls == [None]
        assert await names(lister) == ["error/postgresql.log.2.csv"]  # the next one is asked
        assert stub.calls == [None, None]


async def test_a_failed_early_listing_is_asked_again() -> None:
    stub = StubRds(fail=1)
    async with early(stub) as lister:
        lister.ask("db-1")
        assert await names(lister) == ["error/postgresql.log.2.csv"]
    assert stub.calls == [None, None]
    stub = StubRds(fail=2)  # the second failure is the recorder's to see
    async with early(stub) as lister:
        lister.ask("db-1")
        with pytest.raises(AwsError, match="not found"):
            await names(lister)


async def test_an_incremental_listing_or_a_stale_answer_goes_to_rds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = StubRds()
    stub.release.clear()
    async with early(stub) as lister:
        lister.ask("db-1")
        await asyncio.sleep(0)
        stub.release.set()
        assert await names(lister, since_ms=5) == ["error/postgresql.log.2.csv"]
        assert stub.calls == [None, 5]
        assert stub.cancelled == 1
    monkeypatch.setattr(control, "EARLY_LISTING_FRESH_S", 0.0)
    stub = StubRds()
    async with early(stub) as lister:
        lister.ask("db-1")
        await asyncio.sleep(0.01)
        assert await names(lister) == ["error/postgresql.log.2.csv"]
        assert stub.calls == [None, None]


async def test_an_early_listing_nobody_asks_for_ends_with_the_lister() -> None:
    stub = StubRds()
    stub.release.clear()
    lister = early(stub)
    lister.ask("a-cluster-name")
    await asyncio.sleep(0)
    await lister.aclose()
    assert stub.cancelled == 1
    failing = StubRds(fail=1)
    async with early(failing) as lister:
        lister.ask("a-cluster-name")
        await asyncio.sleep(0.01)  # failed before the end: its error is not reported
    pending: list[Any] = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert pending == []
