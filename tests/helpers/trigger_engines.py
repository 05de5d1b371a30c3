"""Trigger engines for unit tests: on a real SQLite store, with stand-ins for the sandbox runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from executor.model import Invocation, Limits, Outcome, RunResult
from executor.triggers.engine import TriggerEngine
from executor.triggers.label_claims import LabelClaims
from executor.triggers.store import TriggerStore

LIMITS = Limits(1, 5, 1 << 28, 1 << 16, 8, 1 << 20)

# What the fleet tests' ``engines`` fixture gives: a factory of trigger engines.
MakeEngine = Callable[..., TriggerEngine]


class Recorder:
    """Runs nothing; remembers what the engine asked to run, in order."""

    def __init__(self) -> None:
        self.runs: list[Invocation] = []
        self._changed = asyncio.Event()
        # What each run returned, by invocation id: the history an engine's
        # ``recorded_result`` reads.
        self.results: dict[str, RunResult] = {}
        # Each run's ``queued_at`` as given (when its wait began), and when it was asked for.
        self.queued_at: list[float | None] = []
        self.called_at: list[float] = []

    async def __call__(
        self,
        invocation: Invocation,
        *,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult:
        if recheck is not None:  # a dispatcher with a free slot looks again at once
            invocation = recheck(invocation)
        self.runs.append(invocation)
        self.queued_at.append(queued_at)
        self.called_at.append(time.monotonic())
        self._changed.set()
        result = RunResult(invocation.invocation_id, Outcome.SUCCEEDED)
        self.results[invocation.invocation_id] = result
        return result

    @property
    def codes(self) -> list[str]:
        return [run.callback.code for run in self.runs]

    async def ran(self, count: int) -> None:
        """Until ``count`` runs have been asked for (background firings)."""
        async with asyncio.timeout(10):
            while len(self.runs) < count:
                self._changed.clear()
                await self._changed.wait()


class Gated(Recorder):
    """Each run holds until the test opens the gate of its callback's code."""

    def __init__(self) -> None:
        super().__init__()
        self._gates: dict[str, asyncio.Event] = {}
        self._running: set[str] = set()
        self.most_at_once = 0

    def open(self, code: str) -> None:
        self._gates.setdefault(code, asyncio.Event()).set()

    async def __call__(
        self,
        invocation: Invocation,
        *,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult:
        code = invocation.callback.code
        self._running.add(code)
        self.most_at_once = max(self.most_at_once, len(self._running))
        try:
            result = await super().__call__(invocation, recheck=recheck, queued_at=queued_at)
            await self._gates.setdefault(code, asyncio.Event()).wait()
        finally:
            self._running.discard(code)
        return result


class Refusing(Recorder):
    """Raises ``error`` for the first ``times`` runs asked for (any callback), then runs."""

    def __init__(self, error: Exception, times: int) -> None:
        super().__init__()
        self._error = error
        self._left = times
        self.attempts: list[str] = []

    async def __call__(
        self,
        invocation: Invocation,
        *,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult:
        self.attempts.append(invocation.callback.code)
        if self._left:
            self._left -= 1
            raise self._error
        return await super().__call__(invocation, recheck=recheck, queued_at=queued_at)


def finish_firings(engine: TriggerEngine) -> None:
    """The queued firings' runs end, unrun (a repeat's tick is skipped while one has not)."""
    with engine.store.transaction() as db:
        db.execute("DELETE FROM firings")


def engine_at(path: Path, recorder: Recorder, **kwargs: Any) -> TriggerEngine:
    """An engine that is not started: it decides, and queues what it fires.

    Its results of record are what ``recorder`` ran (unless told): without them a
    waiting resend looked for its firings' results for ``RECORD_WAIT_S`` (30 s).
    """
    kwargs.setdefault("recorded_result", recorder.results.get)
    return TriggerEngine(TriggerStore(str(path / "triggers.db")), recorder, limits=LIMITS, **kwargs)


def no_labels() -> LabelClaims:
    """The labels of an empty trigger engine (its store in memory), for a FarmServicer."""
    return LabelClaims(TriggerStore(":memory:"))


class Engines(Protocol):
    def __call__(self, recorder: Recorder, *, start: bool = True, **kwargs: Any) -> TriggerEngine:
        """An engine on the test's database, started unless told; closed after the test."""


@asynccontextmanager
async def engines_made(
    open_engine: Callable[..., TriggerEngine],
) -> AsyncIterator[Callable[..., TriggerEngine]]:
    """A factory of ``open_engine``'s engines, each started unless ``start=False``; all closed after.

    The ``engines`` fixtures' body (tests/unit and tests/fleet): each engine's store is
    closed with it.
    """
    made: list[TriggerEngine] = []

    def make(*args: Any, start: bool = True, **kwargs: Any) -> TriggerEngine:
        engine = open_engine(*args, **kwargs)
        if start:
            engine.start()
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            await engine.close()
            engine.store.close()


def job(
    job_id: int, *callbacks: tuple[str, str], label: str = "", pgrp: int = 1, **extra: Any
) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": pgrp,
        "label": label,
        "user": "alice",
        **extra,
        "callbacks": [{"triggers": t, "language": "qube", "code": c} for t, c in callbacks],
    }
