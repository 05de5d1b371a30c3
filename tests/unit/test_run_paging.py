"""Keyset paging through the run history: page tokens, and pages of a real SQLite history.

The ``check_*`` functions take any history, so the fleet tests run them on PostgreSQL
too (``tests/fleet/test_run_paging.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.errors import InvalidRequestError
from executor.model import Outcome
from executor.runs.history import RunHistory
from executor.runs.paging import RunFilters, RunKey, decode_page_token, encode_page_token
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.unit

EVERY_RUN = RunFilters()


@pytest.fixture
def history(tmp_path: Path) -> Iterator[RunHistory]:
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=1000)
    yield history
    history.close()


def record(
    history: RunHistory,
    name: str,
    started_at: float,
    *,
    job_id: int = 10,
    outcome: Outcome = Outcome.SUCCEEDED,
) -> None:
    history.record(invocation(name, job_id=job_id), result(name, outcome), started_at=started_at)


def walk(history: RunHistory, filters: RunFilters, limit: int) -> list[list[str]]:
    """Every page, through the tokens ListRuns would hand out."""
    pages, token = [], ""
    while True:
        after = decode_page_token(token, filters) if token else None
        page = history.list_page(filters, limit=limit, after=after)
        pages.append([run.invocation_id for run in page.runs])
        token = encode_page_token(page.next, filters) if page.next else ""
        if not token:
            return pages


# -- the token ------------------------------------------------------------------------------


def test_a_token_gives_back_its_key_with_the_filters_it_was_made_for() -> None:
    filters = RunFilters(job_id=5, outcome=Outcome.FAILED, since=1712345678.123456, language="perl")
    key = RunKey(1712345699.0000002, 42)
    token = encode_page_token(key, filters)
    assert decode_page_token(token, filters) == key
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token), "URL-safe as it is"
    assert len(token) < 150, "short enough to copy from a terminal"


@pytest.mark.parametrize(
    "other",
    [
        RunFilters(job_id=6, outcome=Outcome.FAILED, since=100.0),
        RunFilters(job_id=5, since=100.0),
        RunFilters(job_id=5, outcome=Outcome.FAILED, since=100.5),
        RunFilters(job_id=5, outcome=Outcome.FAILED),
        RunFilters(job_id=5, outcome=Outcome.FAILED, since=100.0, language="python"),
        RunFilters(job_id=5, outcome=Outcome.FAILED, since=100.0, shadow_only=True),
        EVERY_RUN,
    ],
)
def test_a_token_with_other_filters_is_refused_naming_both(other: RunFilters) -> None:
    made_for = RunFilters(job_id=5, outcome=Outcome.FAILED, since=100.0)
    token = encode_page_token(RunKey(200.0, 1), made_for)
    with pytest.raises(InvalidRequestError) as refused:
        decode_page_token(token, other)
    message = str(refused.value)
    assert message.startswith("page_token was made for other filters (job_id 5, outcome FAILED")
    assert f"not these ({other.describe()})" in message
    assert "leave page_token empty" in message


def _forged(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


GOOD = {"v": 1, "at": 200.0, "row": 3, "f": [None, None, None, None, False]}


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "abc",
        "!!!!",
        "é",
        "x" * 5000,
        _forged(GOOD) + "!",  # a stray character the decoder would skip
        _forged(GOOD)[:-4],  # cut short
        _forged({**GOOD, "v": 2}),  # another version
        _forged({**GOOD, "v": True}),
        _forged({**GOOD, "at": "200"}),
        _forged({**GOOD, "at": float("nan")}),
        _forged({**GOOD, "row": -1}),
        _forged({**GOOD, "row": 1.5}),
        # Beyond what a store's signed 64-bit row id holds, or what a float holds.
        _forged({**GOOD, "row": 2**63}),
        _forged({**GOOD, "row": 10**30}),
        _forged({**GOOD, "at": 10**400}),
        _forged({**GOOD, "f": [None, None, 10**400, None, False]}),
        _forged({**GOOD, "f": [None, "BOGUS", None, None, False]}),
        _forged({**GOOD, "f": [None, None, None, None]}),
        _forged({**GOOD, "f": [True, None, None, None, False]}),
        _forged({**GOOD, "f": [None, None, None, None, 0]}),
        _forged({k: v for k, v in GOOD.items() if k != "row"}),
        _forged({**GOOD, "extra": 1}),
        _forged([GOOD]),
        _forged("a string"),
        base64.urlsafe_b64encode(b"\xff\xfe not utf-8").decode(),
        # Another API's page token, e.g. a bare offset.
        base64.urlsafe_b64encode(b"offset=50").decode(),
    ],
)
def test_a_malformed_or_foreign_token_is_refused_saying_what_to_give(token: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        decode_page_token(token, EVERY_RUN)
    message = str(refused.value)
    assert message.startswith("page_token ") and "is not a ListRuns page token" in message
    assert "next_page_token of an earlier ListRuns answer" in message
    assert len(message) < 300, "a long token is shown cut"


def test_the_forged_good_token_is_one_indeed() -> None:
    """The malformed ones above differ from an accepted token only where they say."""
    assert decode_page_token(_forged(GOOD), EVERY_RUN) == RunKey(200.0, 3)


def test_the_largest_row_id_a_store_holds_is_a_key_the_history_pages_after(
    history: RunHistory,
) -> None:
    record(history, "run-0", 100.0)
    key = decode_page_token(_forged({**GOOD, "row": 2**63 - 1}), EVERY_RUN)
    assert key == RunKey(200.0, 2**63 - 1)
    assert [run.invocation_id for run in history.list_page(EVERY_RUN, limit=5, after=key).runs] == [
        "run-0"
    ]


# -- pages of a history ---------------------------------------------------------------------


def check_pages_cover_every_run_once_newest_first(history: RunHistory) -> None:
    for n in range(7):
        record(history, f"run-{n}", 100.0 + n)
    assert walk(history, EVERY_RUN, limit=3) == [
        ["run-6", "run-5", "run-4"],
        ["run-3", "run-2", "run-1"],
        ["run-0"],
    ]
    # A last page that is full still ends the walk: no token leads to an empty page.
    assert walk(history, EVERY_RUN, limit=7) == [[f"run-{n}" for n in range(6, -1, -1)]]
    assert history.list_page(EVERY_RUN, limit=7).next is None
    assert history.list_page(EVERY_RUN, limit=6).next is not None


def check_runs_that_started_at_once_are_split_across_pages_without_loss(
    history: RunHistory,
) -> None:
    """The row id breaks the tie: a page may end between two runs of one start time."""
    for n in range(5):
        record(history, f"tie-{n}", 500.0)
    record(history, "after", 600.0)
    record(history, "before", 400.0)
    pages = walk(history, EVERY_RUN, limit=2)
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    listed = [name for page in pages for name in page]
    assert listed == [run.invocation_id for run in history.list_runs(limit=100)]
    assert listed[0] == "after" and listed[-1] == "before"
    assert sorted(listed[1:6]) == [f"tie-{n}" for n in range(5)]


def check_every_page_keeps_the_filters(history: RunHistory) -> None:
    for n in range(10):
        record(
            history,
            f"f-{n}",
            1000.0 + n,
            job_id=1 if n % 2 else 2,
            outcome=Outcome.FAILED if n % 3 else Outcome.SUCCEEDED,
        )
    failed_of_job_1 = RunFilters(job_id=1, outcome=Outcome.FAILED, since=1002.0)
    # Job 1's failures since 1002: 5 and 7 (3 and 9 succeeded, 1 is too early).
    assert walk(history, failed_of_job_1, limit=1) == [["f-7"], ["f-5"]]
    assert walk(history, RunFilters(language="perl"), limit=2) == [[]]
    assert walk(history, RunFilters(job_id=2), limit=4) == [
        ["f-8", "f-6", "f-4", "f-2"],
        ["f-0"],
    ]


def check_runs_recorded_between_pages_neither_shift_nor_repeat(history: RunHistory) -> None:
    for n in range(6):
        record(history, f"old-{n}", 100.0 + n)
    first = history.list_page(EVERY_RUN, limit=2)
    assert [r.invocation_id for r in first.runs] == ["old-5", "old-4"]
    token = encode_page_token(first.next, EVERY_RUN) if first.next else ""
    # Newer runs finish meanwhile: with OFFSET 2 the next page would list old-5, old-4 again.
    for n in range(3):
        record(history, f"new-{n}", 200.0 + n)
    # And one recorded late, that started before the first page's last run: it belongs
    # after it, so a later page lists it (none skipped).
    record(history, "late", 103.5)
    rest: list[str] = []
    while token:
        page = history.list_page(EVERY_RUN, limit=2, after=decode_page_token(token, EVERY_RUN))
        rest += [r.invocation_id for r in page.runs]
        token = encode_page_token(page.next, EVERY_RUN) if page.next else ""
    assert rest == ["late", "old-3", "old-2", "old-1", "old-0"]


def check_a_shadow_page_carries_results(history: RunHistory) -> None:
    for n in range(5):
        shadow = n % 2 == 0  # 0, 2, 4
        run = dataclasses.replace(invocation(f"s-{n}"), shadow=shadow)
        history.record(run, result(f"s-{n}"), started_at=300.0 + n)
    only_shadow = RunFilters(shadow_only=True)
    first = history.list_page(only_shadow, limit=2)
    assert [r.invocation_id for r in first.runs] == ["s-4", "s-2"]
    assert all(r.result == result(r.invocation_id) for r in first.runs)
    assert first.next is not None
    last = history.list_page(only_shadow, limit=2, after=first.next)
    assert [r.invocation_id for r in last.runs] == ["s-0"] and last.next is None


def check_a_shadow_page_ends_before_its_results_pass_the_bound(history: RunHistory) -> None:
    # 1,000 shadow runs of 16 MiB outputs made one answer no client could take.
    big = 12 << 20
    for n in range(4):
        run = dataclasses.replace(invocation(f"b-{n}"), shadow=True)
        history.record(
            run, dataclasses.replace(result(f"b-{n}"), stdout="x" * big), started_at=400.0 + n
        )
    pages = walk(history, RunFilters(shadow_only=True), limit=1000)
    assert pages == [["b-3", "b-2"], ["b-1", "b-0"]]  # 24 MiB each: a third would pass 32


CHECKS = [
    check_pages_cover_every_run_once_newest_first,
    check_runs_that_started_at_once_are_split_across_pages_without_loss,
    check_every_page_keeps_the_filters,
    check_runs_recorded_between_pages_neither_shift_nor_repeat,
    check_a_shadow_page_carries_results,
    check_a_shadow_page_ends_before_its_results_pass_the_bound,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_sqlite_history_pages(history: RunHistory, check: object) -> None:
    assert callable(check)
    check(history)


def test_list_runs_is_the_first_page(history: RunHistory) -> None:
    for n in range(4):
        record(history, f"run-{n}", 10.0 + n)
    first = history.list_page(EVERY_RUN, limit=3)
    assert history.list_runs(limit=3) == list(first.runs)
