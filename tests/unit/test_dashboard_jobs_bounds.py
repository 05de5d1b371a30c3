"""The jobs page stays bounded: long strips drawn in runs, rows and jobs cut, what is left out said."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from executor.web import explain as explain_module
from executor.web.app import Dashboard
from executor.web.auth import Access
from executor.web.explain import (
    MAX_ATOMS_SHOWN,
    MAX_WORK_ITEM_LINES,
    explain_from_engine,
    explain_from_latches,
)
from executor.web.frame_strip import MAX_STRIP_CELLS, Frame, draw_strip
from executor.web.jobs_pages import JOBS_PER_PAGE, MAX_CALLBACK_ROWS, PAGE_BUDGET_BYTES
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.unit.test_dashboard import (
    FakeSource,
    WorkSource,
    get,
    jobs_html,
    strip_cells,
    work_items,
)

pytestmark = pytest.mark.unit

FRAMES = 100_000
NAMES = [str(frame) for frame in range(1, FRAMES + 1)]
# The run page's bound (tests/browser: a run at the output cap stays below it).
ONE_MIB = 1 << 20


def frames(states: str) -> list[Frame]:
    """A frame per letter: f fired again, p half latched, w waiting."""
    return [
        Frame(str(n), count=1 if s == "f" else 0, maximum=0, latched=s == "p")
        for n, s in enumerate(states, 1)
    ]


def test_a_strip_is_a_cell_per_frame_up_to_its_bound_then_runs_of_one_state() -> None:
    short = draw_strip(frames("f" * MAX_STRIP_CELLS))
    assert short.html.count('class="frame ') == MAX_STRIP_CELLS and not short.summary

    drawn = draw_strip(frames("f" * 150 + "p" + "w" * 150))
    assert strip_cells(drawn.html) == [
        ("frame run fired again", "1 … 150"),
        ("frame partly", "151"),
        ("frame run waiting", "152 … 301"),
    ]
    assert drawn.summary == "301 frames drawn as 3 runs of the same state"
    assert drawn.first_left_out == ""
    assert 'title="frames 152 … 301 (150 frames): waiting, nothing latched"' in drawn.html


def test_a_strip_of_more_runs_than_its_bound_draws_the_first_and_counts_the_rest() -> None:
    drawn = draw_strip(frames("fw" * 1000))
    assert drawn.html.count('class="frame ') == MAX_STRIP_CELLS + 1
    assert drawn.html.count('class="frame more"') == 1
    left_out = 2000 - MAX_STRIP_CELLS
    assert f"… {left_out} more frames</span>" in drawn.html
    assert drawn.first_left_out == str(MAX_STRIP_CELLS + 1)
    assert drawn.summary == (
        f"2000 frames in 2000 runs of the same state; the first {MAX_STRIP_CELLS} runs "
        f"drawn, {left_out} frames after them not"
    )


def test_a_cell_shows_a_cut_name_and_cut_waiting_words() -> None:
    name, waiting = "n" * 1024, "complete-work-a-1 && " * 3000
    cell = draw_strip([Frame(name, 0, 0, False, waiting)]).html
    assert len(cell) < 1000
    assert "more characters]" in cell


@pytest.mark.parametrize(
    ("groups", "cells", "said"),
    [
        # A render finishing in order: three runs.
        (
            [
                (NAMES[:40000], 1, [False, False]),
                (NAMES[40000:40010], 0, [True, False]),
                (NAMES[40010:], 0, [False, False]),
            ],
            [
                ("frame run fired again", "1 … 40000"),
                ("frame run partly", "40001 … 40010"),
                ("frame run waiting", "40011 … 100000"),
            ],
            "100000 frames drawn as 3 runs of the same state; each frame in full: "
            "cbexec triggers why 9:1 --work NAME",
        ),
        # Every other frame fired: no two neighbours alike.
        (
            [(NAMES[::2], 1, [False, False]), (NAMES[1::2], 0, [False, False])],
            None,
            f"100000 frames in 100000 runs of the same state; the first {MAX_STRIP_CELLS} "
            f"runs drawn, {FRAMES - MAX_STRIP_CELLS} frames after them not; each frame in "
            "full: cbexec triggers why 9:1 --work NAME",
        ),
    ],
)
def test_a_work_callback_of_100000_frames_is_a_small_page_that_says_what_it_left_out(
    groups: list[tuple[list[str], int, list[bool]]],
    cells: list[tuple[str, str]] | None,
    said: str,
) -> None:
    # It drew 100,000 cells: a 9.9 MB page, fetched again every 2 s by an open tab.
    page = jobs_html(WorkSource(work_items(*groups)))
    assert len(page.encode()) < 64 << 10
    if cells is not None:
        assert strip_cells(page) == cells
    else:
        assert len(strip_cells(page)) == MAX_STRIP_CELLS + 1
    assert said in html.unescape(page)
    assert "100000 work items: " in page, "the tally counts every frame"


def test_what_a_work_callback_waits_for_lists_its_first_item_groups_and_counts_the_rest() -> None:
    # One group per count: each frame fired a different number of times.
    groups = [([name], n, [False, False]) for n, name in enumerate(NAMES[:500], 1)]
    page = html.unescape(jobs_html(WorkSource(work_items(*groups))))
    waiting = re.search(r'<td class="waiting">(.*?)</td>', page, re.S)
    assert waiting is not None
    assert waiting.group(1).count("waiting again for") == MAX_WORK_ITEM_LINES
    assert f"{500 - MAX_WORK_ITEM_LINES} more lines of work items: cbexec triggers why 9:1" in page


class ManyCallbacksSource(FakeSource):
    """Jobs 100, 99, ...: ``callbacks`` callbacks each, none of them one per frame."""

    def __init__(self, callbacks: int, trigger_bytes: int = 0) -> None:
        super().__init__()
        self.callbacks = callbacks
        self.padding = " || complete-job-x" * (trigger_bytes // 18)
        self.asked: list[dict[str, object]] = []

    def job(self, job_id: int) -> Any:
        callbacks = [
            executor_pb2.RegisteredCallback(
                id=n,
                job_id=job_id,
                triggers=f"done-job-j{n}{self.padding}",
                canonical_triggers=f"done-job-j{n}{self.padding}",
                language="qube",
            )
            for n in range(1, self.callbacks + 1)
        ]
        return executor_pb2.RegisteredJob(id=job_id, pgrp=job_id, callbacks=callbacks)

    def list_jobs(self, **asked: Any) -> Any:
        self.asked.append(asked)
        if asked["job_id"]:
            return executor_pb2.ListRegisteredJobsResponse(
                jobs=[self.job(asked["job_id"])], total=1
            )
        top = asked["before"] - 1 if asked["before"] else 100
        ids = range(top, max(top - asked["limit"], 0), -1)
        return executor_pb2.ListRegisteredJobsResponse(jobs=[self.job(i) for i in ids], total=100)


def dashboard(source: Any) -> Dashboard:
    return Dashboard(source, CollectorRegistry(), Access(""), explain=explain_from_latches)


def test_a_job_shows_a_bounded_number_of_rows_and_says_how_many_more_it_has() -> None:
    page = dashboard(ManyCallbacksSource(120)).handle(get("/jobs?job=7")).body.decode()
    assert page.count("<tr data-callback=") == MAX_CALLBACK_ROWS
    assert (
        f"{120 - MAX_CALLBACK_ROWS} more callbacks are not shown (a job shows at most "
        f"{MAX_CALLBACK_ROWS} rows, up to 256 KiB): cbexec triggers why 7 lists them all."
    ) in page


def test_a_page_of_large_jobs_stops_at_its_budget_and_the_next_page_goes_on() -> None:
    # Twenty jobs of long triggers: each about 300 KiB of rows.
    source = ManyCallbacksSource(5, trigger_bytes=20 << 10)
    board = dashboard(source)
    body = board.handle(get("/jobs?part=body")).body.decode()
    assert len(body.encode()) < ONE_MIB
    shown = [int(n) for n in re.findall(r'<section class="job" id="job-(\d+)"', body)]
    assert 1 <= len(shown) < JOBS_PER_PAGE
    assert len(body.encode()) >= PAGE_BUDGET_BYTES or len(shown) == 1
    assert f"{JOBS_PER_PAGE - len(shown)} more jobs of this page are on the next one" in body
    older = re.search(r'<a href="([^"]*)">Older jobs →</a>', body)
    assert older is not None and html.unescape(older.group(1)) == f"/jobs?before={shown[-1]}"

    following = board.handle(get(f"/jobs?part=body&before={shown[-1]}")).body.decode()
    assert re.findall(r'id="job-(\d+)"', following)[0] == str(shown[-1] - 1)


def test_a_page_of_small_jobs_shows_them_all() -> None:
    body = dashboard(ManyCallbacksSource(2)).handle(get("/jobs?part=body")).body.decode()
    assert body.count('<section class="job"') == JOBS_PER_PAGE
    assert "more jobs of this page" not in body
    assert '<a href="/jobs?before=81">Older jobs →</a>' in body


HUGE_ATOMS = 2_000  # a legal trigger: under 64 KiB


class HugeTriggersSource(ManyCallbacksSource):
    """Job 7: 150 callbacks of 2,000 atoms each; ExplainCallbacks answers what it is asked."""

    def job(self, job_id: int) -> Any:
        callbacks = [
            executor_pb2.RegisteredCallback(
                id=n,
                job_id=job_id,
                triggers=(
                    text := " || ".join(f"complete-work-self-w{k}" for k in range(HUGE_ATOMS))
                ),
                canonical_triggers=text,
                latches=[False] * HUGE_ATOMS,
                language="qube",
            )
            for n in range(1, 151)
        ]
        return executor_pb2.RegisteredJob(id=job_id, pgrp=job_id, callbacks=callbacks)

    def explain(self, job_id: int, journal_limit: int = 5, **asked: Any) -> Any:
        self.asked.append(asked)
        callbacks = self.job(job_id).callbacks[: asked["limit"]]
        return executor_pb2.ExplainCallbacksResponse(
            job_id=job_id,
            callbacks=[
                executor_pb2.CallbackExplanation(
                    callback=callback,
                    atoms=[
                        executor_pb2.AtomExplanation(atom=f"complete-work-self-w{k}")
                        for k in range(min(asked["max_atoms"] or HUGE_ATOMS, HUGE_ATOMS))
                    ],
                    atoms_left_out=max(HUGE_ATOMS - (asked["max_atoms"] or HUGE_ATOMS), 0),
                )
                for callback in callbacks
            ],
            next_after_callback_id=callbacks[-1].id,
        )


@pytest.mark.parametrize("engine", [True, False])
def test_a_job_of_huge_triggers_is_explained_only_as_far_as_its_rows_show(
    engine: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 150 callbacks of 2,500 atoms: the whole ExplainCallbacks was 120 MB, built for every
    # refresh of a page that shows a few rows, and the page answered 503 after 5 s.
    source = HugeTriggersSource(0)
    explain = explain_from_engine(source) if engine else explain_from_latches
    board = Dashboard(source, CollectorRegistry(), Access(""), explain=explain)
    from_latches: list[int] = []
    made = explain_module.explain_callback

    def counted(callback: Any) -> Any:
        from_latches.append(callback.id)
        return made(callback)

    monkeypatch.setattr(explain_module, "explain_callback", counted)
    answer = board.handle(get("/jobs?job=7"))
    page = answer.body.decode()

    assert answer.status == 200
    assert len(answer.body) < ONE_MIB
    rows = page.count("<tr data-callback=")
    assert 1 <= rows < MAX_CALLBACK_ROWS
    # Each of the 150 was explained from its latches (2,500 atoms parsed and described).
    assert len(from_latches) <= (0 if engine else rows)
    if engine:
        (asked,) = source.asked[1:]  # after list_jobs
        assert asked["max_atoms"] == MAX_ATOMS_SHOWN
        assert isinstance(asked["limit"], int) and asked["limit"] <= rows + 1, (
            "the engine explains the callbacks shown, no more"
        )
    assert page.count('class="latch"') == rows * MAX_ATOMS_SHOWN
    assert (
        f"{HUGE_ATOMS - MAX_ATOMS_SHOWN} more atoms not shown (a row shows {MAX_ATOMS_SHOWN}):"
        " cbexec triggers why 7:1"
    ) in page
    if not engine:  # the words of what it waits for name as many atoms as the row shows
        waiting = re.search(r'<td class="waiting">(.*?)</td>', page, re.S)
        assert waiting is not None and waiting.group(1).count(" OR ") == MAX_ATOMS_SHOWN
