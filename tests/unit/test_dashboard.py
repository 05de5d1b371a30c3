"""The dashboard without sockets: escaping, filters, long output, what a callback waits for, per-frame rows, access."""

from __future__ import annotations

import asyncio
import html
import inspect
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import grpc
import pytest
from prometheus_client import CollectorRegistry

from executor.api.runs import RunServicer
from executor.errors import InvalidRequestError
from executor.runs.history import RunHistory
from executor.runs.recorder import Recorder
from executor.visible_text import escaped, visible
from executor.web.app import Dashboard, Request, Response
from executor.web.auth import Access
from executor.web.explain import explain_callback, explain_from_engine, explain_from_latches
from executor.web.frame_strip import Frame, in_agenda_order, tally
from executor.web.html import Html, esc, tag
from executor.web.jobs_pages import frame_shape
from executor.web.runs_pages import STREAM_EDGE_BYTES, Excerpt, RunFilters, excerpt
from executor.web.source import (
    ExecutorSource,
    HealthNow,
    RunNotFound,
    SourceRefused,
    SourceUnavailable,
)
from supervisor_client import ExecutorRpcError
from supervisor_client.client import outcome_value
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.unit

HOSTILE = "<script>alert(1)</script>\"'&"


def callback(triggers: str, latches: list[bool], count: int = 0, maximum: int = 0) -> Any:
    return executor_pb2.RegisteredCallback(
        id=1,
        triggers=triggers,
        canonical_triggers=triggers,
        latches=latches,
        count=count,
        maximum=maximum,
        language="qube",
    )


class FakeSource:
    """Answers like ExecutorSource, from messages made here."""

    def __init__(self) -> None:
        result = executor_pb2.ExecuteResponse(
            outcome=executor_pb2.OUTCOME_FAILED,
            stdout=HOSTILE,
            failure=executor_pb2.Failure(message=HOSTILE, traceback=HOSTILE),
            actions=[executor_pb2.Action(verb="unblock", target="7", ok=False, message=HOSTILE)],
        )
        self.run = executor_pb2.Run(
            invocation_id="inv-1",
            job_id=7,
            triggers=HOSTILE,
            language="python",
            outcome=executor_pb2.OUTCOME_FAILED,
            work_name=HOSTILE,
            result=result,
        )

    def list_runs(self, **_: object) -> Any:
        return executor_pb2.ListRunsResponse(runs=[self.run])

    def get_run(self, invocation_id: str) -> Any:
        return self.run if invocation_id == "inv-1" else None

    def list_jobs(self, **_: object) -> Any:
        job = executor_pb2.RegisteredJob(
            id=7, pgrp=7, name=HOSTILE, callbacks=[callback("complete-job-self", [False])]
        )
        return executor_pb2.ListRegisteredJobsResponse(jobs=[job], total=1)

    def universal(self) -> Any:
        return executor_pb2.GetUniversalCallbacksResponse(errors=[HOSTILE])

    def metrics(self) -> Any:
        return executor_pb2.GetMetricsResponse(storage_problem=HOSTILE, health_status="SERVING")

    def health_now(self) -> HealthNow:
        # As ExecutorSource asks: one GetMetrics, the status read with the problems.
        metrics = self.metrics()
        return HealthNow(metrics.health_status, metrics.storage_problem, metrics.slots_problem)

    def refresh_metrics(self) -> None:
        pass


def get(path: str, **headers: str) -> Request:
    return Request.parse("GET", path, headers)


def test_tags_escape_text_and_attributes() -> None:
    built = tag("a", HOSTILE, href=HOSTILE, class_="x", hidden=True, title=None)
    assert "<script>" not in built and "&lt;script&gt;" in built
    assert 'href="&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;"' in built
    assert " hidden" in built and "title" not in built
    assert esc(Html("<b>")) == "<b>", "built HTML is not escaped twice"


@pytest.mark.parametrize(
    "path", ["/runs", "/runs/inv-1", "/jobs", "/universal", "/health", "/runs?part=rows"]
)
def test_no_page_lets_callback_text_become_markup(path: str) -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access(""))
    response = dashboard.handle(get(path))
    assert response.status == 200
    body = response.body.decode()
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_the_health_page_says_fired_runs_are_held_only_while_they_are() -> None:
    class Held(FakeSource):
        def metrics(self) -> Any:
            return executor_pb2.GetMetricsResponse(firings_held=HOSTILE)

    held = Dashboard(Held(), CollectorRegistry(), Access("")).handle(get("/health")).body.decode()
    assert "Fired runs held: &lt;script&gt;alert(1)&lt;/script&gt;" in held
    calm = Dashboard(FakeSource(), CollectorRegistry(), Access("")).handle(get("/health"))
    assert "Fired runs held" not in calm.body.decode()


def test_the_health_page_and_healthz_say_the_slots_are_stuck_only_while_they_are() -> None:
    class Stuck(FakeSource):
        def metrics(self) -> Any:
            return executor_pb2.GetMetricsResponse(slots_problem=HOSTILE)

    stuck = Dashboard(Stuck(), CollectorRegistry(), Access(""))
    assert "No slot to run in: &lt;script&gt;alert(1)&lt;/script&gt;" in (
        stuck.handle(get("/health")).body.decode()
    )
    assert json.loads(stuck.handle(get("/healthz")).body)["slots_problem"] == HOSTILE
    calm = Dashboard(FakeSource(), CollectorRegistry(), Access(""))
    assert "No slot to run in" not in calm.handle(get("/health")).body.decode()


def test_unknown_paths_and_methods() -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access(""))
    assert dashboard.handle(get("/runs/other")).status == 404
    assert dashboard.handle(get("/nowhere")).status == 404
    assert dashboard.handle(get("/static/../app.py")).status == 404
    assert dashboard.handle(Request.parse("PUT", "/runs", {})).status == 405


def test_a_post_where_only_get_is_served_is_a_405_in_the_path_s_kind() -> None:
    # It was a bare text "method not allowed" on every path, /healthz included.
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access(""))
    why = "Method not allowed ('POST'): this page answers GET and HEAD only"
    healthz = dashboard.handle(Request.parse("POST", "/healthz", {}, b"x"))
    assert (healthz.status, healthz.content_type) == (405, "application/json")
    assert json.loads(healthz.body) == {"status": "METHOD_NOT_ALLOWED", "why": why}
    assert ("Allow", "GET, HEAD") in healthz.headers
    metrics = dashboard.handle(Request.parse("POST", "/metrics", {}))
    assert (metrics.status, metrics.body) == (405, f"{why}\n".encode())
    runs = dashboard.handle(Request.parse("POST", "/runs", {}))
    assert (runs.status, runs.content_type) == (405, "text/html; charset=utf-8")
    assert html.escape(why) in runs.body.decode() and ("Allow", "GET, HEAD") in runs.headers


def test_a_failing_source_is_a_503_and_a_bug_a_500_with_an_incident() -> None:
    class Broken(FakeSource):
        def list_runs(self, **_: object) -> Any:
            from executor.web.source import SourceUnavailable

            raise SourceUnavailable("the executor did not answer within 5 s")

        def universal(self) -> Any:
            raise KeyError("bug")

    dashboard = Dashboard(Broken(), CollectorRegistry(), Access(""))
    assert dashboard.handle(get("/runs")).status == 503
    broken = dashboard.handle(get("/universal"))
    assert broken.status == 500 and b"incident" in broken.body and b"bug" not in broken.body


def test_healthz_of_an_executor_that_does_not_answer_is_a_503_in_json() -> None:
    class Silent(FakeSource):
        def metrics(self) -> Any:
            raise SourceUnavailable("the executor did not answer within 5 s")

    response = Dashboard(Silent(), CollectorRegistry(), Access("")).handle(get("/healthz"))
    assert response.status == 503 and response.content_type == "application/json"
    assert json.loads(response.body) == {
        "status": "UNKNOWN",
        "why": "the executor did not answer within 5 s",
    }


def test_healthz_of_a_stop_that_begins_between_its_calls_is_not_serving_in_json() -> None:
    """The race of a stop (repro: /healthz polled during SIGTERM), made deterministic."""

    class StoppingMidway(FakeSource):
        dashboard: Dashboard

        def metrics(self) -> Any:
            self.dashboard.stop_answering()  # the stop begins after /healthz was let in
            raise SourceUnavailable("CANCELLED: the client is closed; open a new one to call again")

    source = StoppingMidway()
    source.dashboard = Dashboard(source, CollectorRegistry(), Access(""))
    response = source.dashboard.handle(get("/healthz"))
    assert response.status == 503 and response.content_type == "application/json"
    assert json.loads(response.body) == {
        "status": "NOT_SERVING",
        "why": "the executor is stopping",
    }


def test_a_request_the_executor_refuses_is_a_400_with_its_reason() -> None:
    class Refusing(FakeSource):
        def get_run(self, invocation_id: str) -> Any:
            raise SourceRefused(f"{invocation_id!r} is the start of several runs; give more")

    dashboard = Dashboard(Refusing(), CollectorRegistry(), Access(""))
    page = dashboard.handle(get("/runs/abcd"))
    assert page.status == 400
    assert "&#x27;abcd&#x27; is the start of several runs; give more" in page.body.decode()


@contextmanager
def source_on_a_loop(client: object, **options: Any) -> Iterator[ExecutorSource]:
    """An ExecutorSource over ``client``, made on its loop's thread as the server makes it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def make() -> ExecutorSource:
            return ExecutorSource(loop, cast(Any, client), cast(Any, None), **options)

        yield asyncio.run_coroutine_threadsafe(make(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_run_with_no_record_says_why_in_the_executors_words() -> None:
    # Probe 184: a run in progress was "No run 'x' in the history.", as an unknown id is,
    # where GetRun and `cbexec runs show` say it is in progress.
    in_progress = (
        "run 'x' is in progress (running) at this executor: its record is made when it ends"
    )

    class Running(FakeSource):
        def get_run(self, invocation_id: str) -> Any:
            raise RunNotFound(in_progress)

    dashboard = Dashboard(Running(), CollectorRegistry(), Access(""))
    for path in ("/runs/x", "/run?id=x", "/runs/x?stream=stdout"):
        page = dashboard.handle(get(path))
        assert page.status == 404, path
        assert html.escape(in_progress) in page.body.decode(), path


def test_a_record_whose_id_runs_again_says_so() -> None:
    source = FakeSource()
    source.run.newer_run_in_progress = True
    page = Dashboard(source, CollectorRegistry(), Access("")).handle(get("/runs/inv-1"))
    assert "A newer run of this id is in progress" in page.body.decode()
    assert (
        "A newer run"
        not in Dashboard(FakeSource(), CollectorRegistry(), Access(""))
        .handle(get("/runs/inv-1"))
        .body.decode()
    )


def test_the_source_tells_a_refused_request_from_an_executor_that_is_away() -> None:
    class Client:
        async def get_run(self, invocation_id: str) -> Any:
            code = {
                "abcd": grpc.StatusCode.INVALID_ARGUMENT,
                "gone": grpc.StatusCode.NOT_FOUND,
            }.get(invocation_id, grpc.StatusCode.UNAVAILABLE)
            raise ExecutorRpcError(code, f"about {invocation_id}")

    with source_on_a_loop(Client()) as source:
        with pytest.raises(SourceRefused, match="about abcd"):
            source.get_run("abcd")
        with pytest.raises(RunNotFound, match="about gone"):
            source.get_run("gone")
        with pytest.raises(SourceUnavailable, match="UNAVAILABLE: about down"):
            source.get_run("down")


def test_healthz_answers_at_once_from_the_last_status_while_the_loop_is_held() -> None:
    # A statement waiting on the store's lock timeout holds the loop a moment: /healthz
    # took 5-7 s then (probe 110), and a probe with a 1-2 s timeout took it for dead.
    class Client:
        async def get_metrics(self) -> Any:
            return executor_pb2.GetMetricsResponse(
                storage_problem="the store is read-only", health_status="NOT_SERVING"
            )

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def make() -> ExecutorSource:  # made on the loop's thread, as the server does
            return ExecutorSource(loop, cast(Any, Client()), cast(Any, None), timeout_s=1.5)

        source = asyncio.run_coroutine_threadsafe(make(), loop).result(5)
        dashboard = Dashboard(source, CollectorRegistry(), Access(""))
        fresh = dashboard.handle(get("/healthz"))
        said = {
            "status": "NOT_SERVING",
            "storage_problem": "the store is read-only",
            "slots_problem": "",
        }
        assert (fresh.status, json.loads(fresh.body)) == (503, said)
        loop.call_soon_threadsafe(time.sleep, 5.0)  # the loop held
        started = time.monotonic()
        held = dashboard.handle(get("/healthz"))
        assert time.monotonic() - started < 1.0
        assert (held.status, json.loads(held.body)) == (503, said)
        time.sleep(1.5)  # the last answer is now older than the source's timeout
        unknown = json.loads(dashboard.handle(get("/healthz")).body)
        assert unknown["status"] == "UNKNOWN" and "did not answer within 1.5 s" in unknown["why"]
    finally:

        async def settle() -> None:  # the asks sent while the loop was held, answered
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(settle(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_healthz_says_the_status_read_with_its_problems() -> None:
    # A Check, then a GetMetrics, straddled a storage failure: 200 SERVING beside a
    # storage_problem (probe 175, F4). Now both come from the one GetMetrics.
    class Client:
        async def health(self) -> str:
            return "SERVING"  # what a Check just before the failure said

        async def get_metrics(self) -> Any:
            return executor_pb2.GetMetricsResponse(
                storage_problem="cannot write outbox.db", health_status="NOT_SERVING"
            )

    with source_on_a_loop(Client()) as source:
        answer = Dashboard(source, CollectorRegistry(), Access("")).handle(get("/healthz"))
        assert (answer.status, json.loads(answer.body)) == (
            503,
            {
                "status": "NOT_SERVING",
                "storage_problem": "cannot write outbox.db",
                "slots_problem": "",
            },
        )


def test_run_filters_parse_and_round_trip() -> None:
    filters, problem = RunFilters.parse(
        {"job": "12", "outcome": "failed", "language": "perl", "since": "1h"}, now=10_000.0
    )
    assert (filters.job_id, filters.outcome, filters.language, filters.since) == (
        12,
        "FAILED",
        "perl",
        6400.0,
    )
    assert problem == ""
    assert (
        RunFilters.parse(dict(part.split("=") for part in filters.query().split("&")), 10_000.0)[0]
        == filters
    )
    bad, problem = RunFilters.parse({"job": "x", "outcome": "meh", "since": "soon"}, 0.0)
    assert bad == RunFilters()
    assert "job 'x'" in problem and "outcome 'MEH'" in problem and "since 'soon'" in problem


def test_what_a_callback_still_waits_for() -> None:
    half = explain_callback(callback("complete-job-render && complete-work-self-2", [True, False]))
    assert [a.latched for a in half.atoms] == [True, False]
    assert half.waiting_for == "work item '2' of this job completes"

    either = explain_callback(
        callback("(complete-job-a && complete-job-b) || failed-job-self", [True, False, False])
    )
    assert either.waiting_for == ("(the job labelled 'b' completes) OR this job fails")
    spent = explain_callback(callback("complete-job-self", [False], count=1, maximum=1))
    assert spent.spent and spent.waiting_for == ""


def test_per_frame_callbacks_share_a_shape() -> None:
    assert frame_shape("complete-work-self-12") == ("complete-work-self-{frame}", "12")
    assert frame_shape("complete-work-12-5 && complete-work-self-5") == (
        "complete-work-12-{frame} && complete-work-self-{frame}",
        "5",
    )
    assert frame_shape("complete-work-self-1 && complete-work-self-2") is None
    assert frame_shape("complete-job-self") is None
    assert frame_shape("complete-work-self-*") is None


# -- one callback per frame: a {work} callback, and one callback written per frame --------

WORK_TRIGGER = "complete-work-sA-{work} && complete-work-sB-{work}"


def work_items(
    *groups: tuple[list[str], int, list[bool]], maximum: int = 0
) -> list[executor_pb2.WorkItemExplanation]:
    """ExplainCallbacks' work items: (names, count, latches) each."""
    return [
        executor_pb2.WorkItemExplanation(
            work_names=names,
            count=count,
            latches=latches,
            spent=bool(maximum) and count >= maximum,
            waiting="" if maximum and count >= maximum else "complete-work-sB-{work}",
        )
        for names, count, latches in groups
    ]


class WorkSource(FakeSource):
    """Job 9: one {work} callback over six frames, explained by the engine (ExplainCallbacks)."""

    def __init__(self, items: list[executor_pb2.WorkItemExplanation], maximum: int = 0) -> None:
        super().__init__()
        fired = sum(item.count * len(item.work_names) for item in items)
        self.callback = executor_pb2.RegisteredCallback(
            id=1,
            job_id=9,
            triggers=WORK_TRIGGER,
            canonical_triggers=WORK_TRIGGER,
            language="qube",
            count=fired,
            maximum=maximum,
            latches=[False, False],
            per_work_item=True,
        )
        atoms = [
            executor_pb2.AtomExplanation(slot=slot, atom=atom, description=f"job {slot + 1}")
            for slot, atom in enumerate(WORK_TRIGGER.split(" && "))
        ]
        self.reply = executor_pb2.ExplainCallbacksResponse(
            job_id=9,
            callbacks=[
                executor_pb2.CallbackExplanation(
                    callback=self.callback, atoms=atoms, work_items=items
                )
            ],
        )

    def list_jobs(self, **_: object) -> Any:
        job = executor_pb2.RegisteredJob(id=9, pgrp=9, name="sC", callbacks=[self.callback])
        return executor_pb2.ListRegisteredJobsResponse(jobs=[job], total=1)

    def explain(self, job_id: int, journal_limit: int = 5, **_: object) -> Any:
        return self.reply if job_id == 9 else None


def jobs_html(source: Any, *, engine: bool = True) -> str:
    explain = explain_from_engine(source) if engine else explain_from_latches
    dashboard = Dashboard(source, CollectorRegistry(), Access(""), explain=explain)
    return dashboard.handle(get("/jobs?job=9")).body.decode()


class NotAttachedSource(FakeSource):
    """Job 9 as the engine explains it: a universal line loaded since it registered."""

    NOTE = (
        "universal lines loaded after this job's registration are not attached to it:"
        f" /srv/callback/{HOSTILE}.py = done-job-self; a job takes the current set when it"
        " is registered again"
    )

    def __init__(self, callbacks: list[Any]) -> None:
        super().__init__()
        self.callbacks = callbacks

    def list_jobs(self, **_: object) -> Any:
        job = executor_pb2.RegisteredJob(id=9, pgrp=9, callbacks=self.callbacks)
        return executor_pb2.ListRegisteredJobsResponse(jobs=[job], total=1)

    def explain(self, job_id: int, journal_limit: int = 5, **_: object) -> Any:
        return executor_pb2.ExplainCallbacksResponse(
            job_id=9,
            pgrp=9,
            callbacks=[executor_pb2.CallbackExplanation(callback=cb) for cb in self.callbacks],
            universal_not_attached=self.NOTE,
        )


@pytest.mark.parametrize("callbacks", [[], [callback("complete-job-self", [False])]])
def test_the_jobs_page_says_which_universal_lines_a_job_does_not_hold(
    callbacks: list[Any],
) -> None:
    # It said "No callbacks." and nothing of the line a reload had just added (probe).
    page = jobs_html(NotAttachedSource(callbacks))

    assert f'<p class="hint job-note">{esc(NotAttachedSource.NOTE)}</p>' in page
    assert HOSTILE not in page
    # From the latches alone (the engine not asked) nothing is known of it.
    assert "job-note" not in jobs_html(NotAttachedSource(callbacks), engine=False)


def strip_cells(page: str) -> list[tuple[str, str]]:
    """(class, frame) of each cell of the page's strips, in order."""
    return re.findall(r'<span class="(frame[^"]*)" title="[^"]*">([^<]*)</span>', page)


def test_a_work_callback_is_a_strip_of_its_items_with_their_latches() -> None:
    # Before, a {work} callback was a plain row: no frame cells, and every atom "○"
    # (waiting) while items 2 and 3 were half latched (probe 50).
    source = WorkSource(
        work_items(
            (["2"], 0, [True, False]),
            (["3"], 0, [True, False]),
            (["10", "4", "5"], 0, [False, False]),
            (["1"], 1, [False, False]),
        )
    )
    page = jobs_html(source)
    assert strip_cells(page) == [
        ("frame fired again", "1"),
        ("frame partly", "2"),
        ("frame partly", "3"),
        ("frame waiting", "4"),
        ("frame waiting", "5"),
        ("frame waiting", "10"),
    ]
    assert "6 work items: 1 fired and waiting again, 2 half latched, 3 waiting" in page
    sa, sb = re.findall(r'<span class="(latch[^"]*)" title="[^"]*">(.*?)</span></span>', page)
    assert sa == ("latch some", '◐ complete-work-sA-{work}<span class="count"> 2 of 6')
    assert sb == ("latch", '○ complete-work-sB-{work}<span class="count"> 0 of 6')
    assert "1 in all" in page and "no maximum" in page
    assert 'title="frame 1: fired once; waiting to fire again for' in page
    assert "work 1: fired once; waiting again for complete-work-sB-{work}" in page


def test_a_work_callbacks_maximum_is_per_item() -> None:
    # A frame-link dependency (maximum 1 per frame) that fired for one frame of three
    # read "1 / 1", as if it were spent.
    source = WorkSource(
        work_items((["1"], 1, [False, False]), (["2", "3"], 0, [False, False]), maximum=1),
        maximum=1,
    )
    page = jobs_html(source)
    assert "1 / 1" not in page
    assert "1 in all" in page and "at most 1 per item" in page
    assert strip_cells(page) == [
        ("frame fired", "1"),
        ("frame waiting", "2"),
        ("frame waiting", "3"),
    ]
    assert "3 work items: 1 fired the maximum, 2 waiting, nothing latched" in page
    assert "frame 1: fired once, its maximum: it fires no more" in page


def test_a_work_callback_known_only_by_its_latches_does_not_claim_its_items_wait() -> None:
    page = jobs_html(WorkSource(work_items((["1"], 0, [True, False]))), engine=False)
    assert "○" not in page and "✓" not in page
    assert "each work item latches on its own" in page


class PerFrameSource(FakeSource):
    """Job 9: the same trigger written once for each of frames 1-5; frames 1-3 fired."""

    def __init__(self, maximum: int) -> None:
        super().__init__()
        self.maximum = maximum

    def list_jobs(self, **_: object) -> Any:
        callbacks = [
            executor_pb2.RegisteredCallback(
                id=frame,
                triggers=f"complete-work-jobA-{frame}",
                canonical_triggers=f"complete-work-jobA-{frame}",
                language="qube",
                count=1 if frame <= 3 else 0,
                maximum=self.maximum,
                latches=[False],
            )
            for frame in range(1, 6)
        ]
        job = executor_pb2.RegisteredJob(id=9, pgrp=9, name="jobB", callbacks=callbacks)
        return executor_pb2.ListRegisteredJobsResponse(jobs=[job], total=1)


def test_per_frame_callbacks_are_named_in_words_and_counted_truly() -> None:
    # The row was labelled "complete-work-jobA-{frame}", which the grammar refuses, and
    # callbacks without a maximum, all waiting again, were "5 fired, 0 waiting".
    page = jobs_html(PerFrameSource(maximum=0), engine=False)
    assert "{frame}" not in page
    assert (
        '<span class="mono">complete-work-jobA-1</span> … '
        '<span class="mono">complete-work-jobA-5</span>'
    ) in page
    assert "5 callbacks, one per frame (1 … 5): 3 fired and waiting again, 2 waiting" in page
    assert [css for css, _ in strip_cells(page)] == ["frame fired again"] * 3 + [
        "frame waiting"
    ] * 2

    spent = jobs_html(PerFrameSource(maximum=1), engine=False)
    assert "3 fired the maximum, 2 waiting, nothing latched" in spent
    assert [css for css, _ in strip_cells(spent)][:3] == ["frame fired"] * 3


def test_frames_in_agenda_order_and_their_states() -> None:
    assert in_agenda_order(["10", "2", "1-10", "b", "1", "a2", "a10"]) == [
        "1",
        "1-10",
        "2",
        "10",
        "a2",
        "a10",
        "b",
    ]
    assert in_agenda_order(["9" * 5000, "1"])[0] == "1"  # no int() of 5000 digits
    assert Frame("1", count=2, maximum=2, latched=False).state == "spent"
    assert Frame("1", count=2, maximum=3, latched=False).state == "again"
    assert Frame("1", count=2, maximum=0, latched=True).state == "partly"
    assert Frame("1", count=0, maximum=1, latched=False).state == "waiting"
    frames = [Frame("1", 1, 0, False), Frame("2", 0, 0, False), Frame("3", 0, 0, False)]
    assert tally(frames) == "1 fired and waiting again, 2 waiting, nothing latched"


def test_access_by_bearer_or_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("executor.web.auth.WRONG_TOKEN_DELAY_S", 0)
    access = Access("tok", exempt_probes=True)
    assert access.allowed("/metrics", {}) and access.allowed("/login", {})
    assert not access.allowed("/runs", {})
    assert access.allowed("/runs", {"authorization": "Bearer tok"})
    assert not access.allowed("/runs", {"authorization": "Bearer tok2"})
    assert access.sign_in("wrong") is None
    cookie = access.sign_in("tok")
    assert cookie is not None and "tok;" not in cookie
    session = {"cookie": cookie.split(";", 1)[0]}
    assert access.allowed("/runs", session)
    access.sign_out(session)
    assert not access.allowed("/runs", session)
    assert not access.allowed("/runs", {"cookie": "cbexec_session=forged"})
    assert Access("").allowed("/runs", {}), "no token: open, as the gRPC port is"


def test_sessions_expire() -> None:
    now = SimpleNamespace(t=0.0)
    access = Access("tok", clock=lambda: now.t)
    cookie = access.sign_in("tok")
    assert cookie is not None
    session = {"cookie": cookie.split(";", 1)[0]}
    now.t = 13 * 3600.0
    assert not access.allowed("/runs", session)


def post_login(token: str, next_: str) -> Request:
    return Request.parse("POST", "/login", {}, urlencode({"token": token, "next": next_}).encode())


@pytest.mark.parametrize(
    "target",
    [
        "/runs\r\nSet-Cookie: injected=1; Domain=.example.com\r\nX-Injected: yes",
        "/runs\nX-Injected: yes",
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "/ /evil.example",
        "https://evil.example/",
        "runs",
        "/runs\u2028",
        "/runs\x00",
        "",
    ],
)
def test_sign_in_goes_only_to_a_path_of_this_server(
    monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.setattr("executor.web.auth.WRONG_TOKEN_DELAY_S", 0)
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok"))
    signed_in = dashboard.handle(post_login("tok", target))
    assert signed_in.status == 303
    assert dict(signed_in.headers)["Location"] == "/runs"
    assert [name for name, _ in signed_in.headers].count("Set-Cookie") == 1
    form = dashboard.handle(get("/login?" + urlencode({"next": target}))).body.decode()
    assert 'name="next" value="/runs"' in form, "an attacker's link puts nothing in the form"
    wrong = dashboard.handle(post_login("guess", target)).body.decode()
    assert 'name="next" value="/runs"' in wrong


def test_sign_in_keeps_a_path_and_query_and_encodes_what_a_header_cannot_carry() -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok"))
    kept = dashboard.handle(post_login("tok", "/jobs?job=3&before=9"))
    assert dict(kept.headers)["Location"] == "/jobs?job=3&before=9"
    encoded = dashboard.handle(post_login("tok", "/runs/é%41"))
    assert dict(encoded.headers)["Location"] == "/runs/%C3%A9%41"
    for response in (kept, encoded):
        for _, value in response.headers:
            value.encode("ascii")  # http.server writes headers as Latin-1: ASCII always fits


def test_signing_in_where_no_token_is_needed_goes_on_to_the_page() -> None:
    # It answered "That is not this executor's token." to any form sent (probe 62).
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access(""))
    for response in (
        dashboard.handle(post_login("anything", "/jobs")),
        dashboard.handle(get("/login?next=/jobs")),
    ):
        assert response.status in (302, 303)
        assert dict(response.headers)["Location"] == "/jobs"
        assert "Set-Cookie" not in dict(response.headers)


def test_the_way_to_sign_in_carries_only_a_safe_next() -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok"))
    html = {"accept": "text/html"}
    sent = dashboard.handle(get("/jobs?job=3", **html))
    assert dict(sent.headers)["Location"] == "/login?next=/jobs%3Fjob%3D3"
    for hostile in ("/\\evil.example", "//evil.example", "/x/../\\evil.example"):
        refused = dashboard.handle(get(hostile, **html))
        assert dict(refused.headers)["Location"] == "/login?next=/runs", hostile
    # A target in absolute form is its path: the way back stays on this server.
    absolute = dashboard.handle(get("http://evil.example/jobs?job=3", **html))
    assert dict(absolute.headers)["Location"] == "/login?next=/jobs%3Fjob%3D3"
    # Kept as sent, still encoded: a path of this server (a run id holding a backslash).
    encoded = dashboard.handle(get("/runs/a%5Cb%3Fc", **html))
    assert dict(encoded.headers)["Location"] == "/login?next=/runs/a%255Cb%253Fc"


class RequestBuildingSource(FakeSource):
    """Builds the request messages the real client would, and keeps what the pages asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[dict[str, object]] = []

    def list_runs(self, **filters: Any) -> Any:
        executor_pb2.ListRunsRequest(job_id=filters["job_id"], limit=filters["limit"])
        self.asked.append(filters)
        return super().list_runs()

    def list_jobs(self, **query: Any) -> Any:
        executor_pb2.ListRegisteredJobsRequest(
            job_id=query["job_id"], limit=query["limit"], before_job_id=query["before"]
        )
        self.asked.append(query)
        return super().list_jobs()


TOO_LARGE = str(1 << 64)
MAX_ID = str((1 << 63) - 1)


@pytest.mark.parametrize("value", ["9" * 310, "9" * 310 + "s", "9" * 310 + "d"])
def test_a_since_past_what_a_float_holds_is_a_notice_on_runs(value: str) -> None:
    # Probe 179: read as inf, sent on, and the page answered 400 with the executor's words.
    source = RequestBuildingSource()
    dashboard = Dashboard(source, CollectorRegistry(), Access(""))
    response = dashboard.handle(get(f"/runs?since={value}"))
    assert response.status == 200
    assert source.asked[-1]["since"] == 0, "the bad filter is left out"
    assert ": out of range; expected a duration" in response.body.decode()


@pytest.mark.parametrize("value", [TOO_LARGE, "9" * 5000, str(1 << 63)])
def test_a_job_filter_too_large_for_an_id_is_a_notice_on_runs(value: str) -> None:
    source = RequestBuildingSource()
    dashboard = Dashboard(source, CollectorRegistry(), Access(""))
    for path in (f"/runs?job={value}", f"/runs?part=rows&job={value}"):
        response = dashboard.handle(get(path))
        assert response.status == 200, path
        assert source.asked[-1]["job_id"] == 0, "the bad filter is left out"
    assert (
        f"is out of range (0 to {MAX_ID})"
        in dashboard.handle(get(f"/runs?job={value}")).body.decode()
    )


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/jobs?job=abc", "job 'abc' is not a job id"),
        ("/jobs?job=-5", "job '-5' is not a job id"),
        ("/jobs?before=abc", "before 'abc' is not a job id"),
        (f"/jobs?job={TOO_LARGE}", "is out of range"),
        (f"/jobs?before={'9' * 5000}", "is out of range"),
        ("/runs?job=abc", "job 'abc' is not a job id"),
        (f"/runs?job={TOO_LARGE}", "is out of range"),
        ("/runs?limit=abc", "limit 'abc' is not a whole number from 1 up"),
        ("/runs?limit=-5", "limit '-5' is not a whole number from 1 up"),
    ],
)
def test_every_bad_filter_value_is_left_out_with_a_notice(path: str, said: str) -> None:
    # One rule on both pages (it was a notice on /runs, a silently dropped filter or a
    # 400 on /jobs): the page answers, without the value, and says so.
    source = RequestBuildingSource()
    dashboard = Dashboard(source, CollectorRegistry(), Access(""))
    response = dashboard.handle(get(path))
    assert response.status == 200
    body = response.body.decode()
    assert 'class="notice warn">Left out of the filter: ' in body
    assert html.escape(said) in body
    assert source.asked[-1].get("job_id") == 0 and source.asked[-1].get("before", 0) == 0
    page, _, query = path.partition("?")
    live = dashboard.handle(get(f"{page}?part={'rows' if page == '/runs' else 'body'}&{query}"))
    assert live.status == 200 and b"Left out" not in live.body, "the notice is the page's"


def test_a_good_filter_gets_no_notice() -> None:
    dashboard = Dashboard(RequestBuildingSource(), CollectorRegistry(), Access(""))
    for path in ("/jobs?job=7", "/jobs?before=9", "/jobs?job=", "/runs?job=7&limit=5"):
        assert b"Left out" not in dashboard.handle(get(path)).body, path


@pytest.mark.parametrize("path", ["/runs?job=²", "/runs?limit=²", "/jobs?job=²", "/jobs?before=²"])
def test_digits_python_reads_as_digits_but_not_as_numbers_are_no_500(path: str) -> None:
    response = Dashboard(RequestBuildingSource(), CollectorRegistry(), Access("")).handle(
        get(path.replace("²", "%C2%B2"))
    )
    assert response.status == 200


def test_the_largest_id_and_limit_still_filter() -> None:
    source = RequestBuildingSource()
    dashboard = Dashboard(source, CollectorRegistry(), Access(""))
    assert dashboard.handle(get(f"/runs?job={MAX_ID}&limit={'9' * 5000}")).status == 200
    assert (source.asked[-1]["job_id"], source.asked[-1]["limit"]) == (int(MAX_ID), 1000)
    assert dashboard.handle(get(f"/jobs?job={MAX_ID}")).status == 200
    assert source.asked[-1]["job_id"] == int(MAX_ID)


# -- control and bidi characters ----------------------------------------------------------

SPOOF = "frame\u202e1\x00\x1b]0;title\x07\u2066x\r\u2029\ufeff"


class SpoofingSource(FakeSource):
    """Every caller's string of FakeSource's holds controls that would act if sent raw."""

    def __init__(self) -> None:
        super().__init__()
        self.run.work_name = SPOOF
        self.run.triggers = SPOOF
        self.run.result.stdout = SPOOF + "\r\nsecond line\r\n"
        self.run.result.failure.message = SPOOF

    def list_jobs(self, **_: object) -> Any:
        job = executor_pb2.RegisteredJob(
            id=7, pgrp=7, name=SPOOF, callbacks=[callback("complete-job-self", [False])]
        )
        return executor_pb2.ListRegisteredJobsResponse(jobs=[job], total=1)


@pytest.mark.parametrize("path", ["/runs", "/runs/inv-1", "/jobs", "/runs?part=rows"])
def test_control_and_bidi_characters_reach_a_page_as_visible_escapes(path: str) -> None:
    body = Dashboard(SpoofingSource(), CollectorRegistry(), Access("")).handle(get(path)).body
    text = body.decode()
    for raw in ("\u202e", "\u2066", "\x00", "\x1b", "\x07", "\u2029", "\ufeff"):
        assert raw not in text, (path, raw)
    assert r"frame\u202e1\x00\x1b]0;title\x07\u2066x\x0d\u2029\ufeff" in text


# A name with a line end: its own escape, never drawn as a space (probe 50).
NEWLINED = "real\n999\tx\r\nprod"
NEWLINED_SHOWN = r"real\x0a999\x09x\x0d\x0aprod"


class NewlinedSource(FakeSource):
    """Every one-line string a scheduler or callback sends holds a tab and line ends."""

    def __init__(self) -> None:
        super().__init__()
        self.run.work_name = NEWLINED
        self.run.triggers = NEWLINED
        self.run.event.CopyFrom(types_pb2.Event(name="complete", type="work", extra=NEWLINED))
        self.run.result.failure.exception_type = NEWLINED
        del self.run.result.actions[:]
        self.run.result.actions.add(verb="unblock", target=NEWLINED, message=NEWLINED)

    def list_jobs(self, **_: object) -> Any:
        job = executor_pb2.RegisteredJob(
            id=7,
            pgrp=7,
            name=NEWLINED,
            label=NEWLINED,
            user=NEWLINED,
            callbacks=[callback(f"complete-work-{NEWLINED}-1", [False])],
        )
        job.callbacks[0].universal = True
        job.callbacks[0].source = NEWLINED
        return executor_pb2.ListRegisteredJobsResponse(jobs=[job], total=1)

    def universal(self) -> Any:
        cb = executor_pb2.UniversalCallback(source=NEWLINED, language="qube", triggers=NEWLINED)
        directory = executor_pb2.UniversalDirectory(path=NEWLINED, has_conf=True, callbacks=[cb])
        return executor_pb2.GetUniversalCallbacksResponse(
            directories=[directory], errors=[NEWLINED]
        )


def _outside_blocks(body: str) -> str:
    """The page without what is many lines by nature: its <pre>s and a failure's message."""
    body = re.sub(r"<pre[^>]*>.*?</pre>", "", body, flags=re.S)
    return re.sub(r'<p class="failure-message" id="failure">.*?</p>', "", body, flags=re.S)


@pytest.mark.parametrize("path", ["/runs", "/runs/inv-1", "/jobs", "/universal"])
def test_a_line_end_in_a_name_or_trigger_is_shown_as_an_escape(path: str) -> None:
    # Before, the jobs page wrote a job name's newline raw into its <h2> (the CR beside
    # it as \x0d): Chromium drew it as a space, "real 999".
    body = Dashboard(NewlinedSource(), CollectorRegistry(), Access("")).handle(get(path)).body
    main = _outside_blocks(body.decode().split("<main>", 1)[1])
    assert "\n" not in main and "\t" not in main and "\r" not in main, path
    assert NEWLINED_SHOWN in main, path


def test_a_stream_and_a_traceback_keep_their_line_ends() -> None:
    source = NewlinedSource()
    source.run.result.stdout = "frame 1\nframe 2\r\n\tdone"
    source.run.result.failure.message = "bad\nframe"
    body = Dashboard(source, CollectorRegistry(), Access("")).handle(get("/runs/inv-1")).body
    text = body.decode()
    assert '<pre id="stdout">frame 1\nframe 2\r\n\tdone</pre>' in text
    assert ">bad\nframe</p>" in text


def test_a_line_end_and_right_to_left_letters_stay_as_written() -> None:
    assert visible("שלום\tok\r\nnext\n") == "שלום\tok\r\nnext\n"
    assert visible("a\rb\x7f\x9b\u200f") == r"a\x0db\x7f\x9b\u200f"


def test_separators_and_invisible_characters_are_escaped_as_the_cli_escapes_them() -> None:
    # Before, the dashboard showed U+2028, U+2029 and U+FEFF raw ('nm\u2029para\ufeffx'
    # read "nm parax") while `farm show` printed them as escapes.
    for char in "\u2028\u2029\ufeff\u200b\u2060\u2064":
        assert visible(f"a{char}b") == escaped(f"a{char}b") == f"a\\u{ord(char):04x}b"
    assert visible("\u0645\u06cc\u200c\u0634\u0648\u062f") == "\u0645\u06cc\u200c\u0634\u0648\u062f"


# -- long output ----------------------------------------------------------------------------


def test_a_long_stream_shows_its_two_ends_and_how_much_lies_between() -> None:
    source = FakeSource()
    middle = "m" * (5 << 20)
    source.run.result.stdout = "START" + "é" * 10 + middle + "THE END"
    source.run.result.stderr = "short"
    dashboard = Dashboard(source, CollectorRegistry(), Access(""))

    page = dashboard.handle(get("/runs/inv-1"))

    assert page.status == 200 and len(page.body) < 400 << 10
    text = page.body.decode()
    total = len(source.run.result.stdout.encode())
    shown = excerpt(source.run.result.stdout)
    assert shown.hidden_bytes == total - 2 * STREAM_EDGE_BYTES
    assert f"… {shown.hidden_bytes:,} bytes not shown … " in text
    assert '<pre id="stdout">START' in text and "THE END</pre>" in text
    assert 'href="/runs/inv-1?stream=stdout"' in text
    assert '<pre id="stderr">short</pre>' in text and "stderr-cut" not in text

    whole = sent(dashboard.handle(get("/runs/inv-1?stream=stdout")))
    assert whole.status == 200 and whole.content_type == "text/plain; charset=utf-8"
    assert whole.body == source.run.result.stdout.encode()
    assert sent(dashboard.handle(get("/runs/inv-1?stream=stderr"))).body == b"short"
    assert dashboard.handle(get("/runs/inv-1?stream=env")).status == 400
    assert dashboard.handle(get("/runs/other?stream=stdout")).status == 404


def sent(response: Response) -> Response:
    """As the side port does once a response is sent: a stream gives its slot back."""
    if response.sent is not None:
        response.sent()
    return response


def test_a_stream_is_cut_on_character_boundaries() -> None:
    text = "x€" * 1000  # 4000 bytes; 1001 bytes from either end split a "€"
    shown = excerpt(text, 1001)
    assert shown.head.endswith("x") and shown.tail.startswith("x€")
    assert len(shown.head.encode()) + shown.hidden_bytes + len(shown.tail.encode()) == 4000
    assert excerpt("a" * 2002, 1001) == Excerpt("a" * 2002)


def test_a_stream_needs_the_page_s_access() -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok"))
    assert dashboard.handle(get("/runs/inv-1?stream=stdout")).status == 401
    allowed = dashboard.handle(get("/runs/inv-1?stream=stdout", authorization="Bearer tok"))
    assert allowed.status == 200


@pytest.mark.parametrize(
    ("headers", "told"),
    [
        ({}, b"this executor requires 'Authorization: Bearer <token>'\n"),
        (
            {"authorization": "Basic dG9r"},
            b"this executor requires 'Authorization: Bearer <token>'\n",
        ),
        (
            {"authorization": "Bearer guessed-secret"},
            b"the bearer token does not match this executor's token\n",
        ),
    ],
)
def test_a_refused_script_is_told_what_was_wrong_never_the_token(
    headers: dict[str, str], told: bytes
) -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok"))
    refused = dashboard.handle(get("/metrics", **headers))
    assert (refused.status, refused.body) == (401, told)


# -- the session cookie ----------------------------------------------------------------------


def test_each_side_port_has_its_own_session_cookie() -> None:
    first, second = Access("tok", port=50052), Access("tok", port=50062)
    cookie = first.sign_in("tok")
    assert cookie is not None and cookie.startswith("cbexec_session_50052=")
    assert "Domain" not in cookie and "; Path=/;" in cookie
    other = second.sign_in("tok")
    assert other is not None and other.startswith("cbexec_session_50062=")
    # A browser sends both (cookies are per host, not per port): each port reads its own.
    both = {"cookie": f"{cookie.split(';', 1)[0]}; {other.split(';', 1)[0]}"}
    assert first.allowed("/runs", both) and second.allowed("/runs", both)


def test_under_tls_the_cookie_takes_the_host_prefix() -> None:
    cookie = Access("tok", port=443, secure_cookie=True).sign_in("tok")
    assert cookie is not None and cookie.startswith("__Host-cbexec_session_443=")
    assert "; Secure" in cookie and "; Path=/;" in cookie and "Domain" not in cookie


# -- paging ---------------------------------------------------------------------------------


class HistorySource(FakeSource):
    """ListRuns as the executor answers it: its servicer on a real history.

    A refusal comes out as ExecutorSource makes it (``SourceRefused``, the status's text).
    """

    def __init__(self, history: RunHistory) -> None:
        super().__init__()

        async def read_history(read: Callable[[RunHistory], Any]) -> Any:
            return read(history)  # the recorder's reads, here on the loop

        recorder = SimpleNamespace(history=history, read_history=read_history)
        self._servicer = RunServicer(cast(Recorder, recorder))
        self.tokens: list[str] = []

    def list_runs(self, **asked: Any) -> Any:
        request = executor_pb2.ListRunsRequest(
            job_id=asked["job_id"],
            language=asked["language"],
            since=asked["since"],
            limit=asked["limit"],
            page_token=asked["page_token"],
        )
        if asked["outcome"]:
            request.outcome = outcome_value(asked["outcome"])
        self.tokens.append(asked["page_token"])
        list_runs = inspect.unwrap(RunServicer.ListRuns)  # the domain error, not context.abort
        try:
            return asyncio.run(list_runs(self._servicer, request, None))
        except InvalidRequestError as err:
            raise SourceRefused(str(err)) from err


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[Dashboard]:
    """A dashboard over a history of five runs of job 7 and one of job 8, a minute apart."""
    history = RunHistory(tmp_path / "runs.db", retention_days=1, max_runs=100)
    start = time.time() - 600
    for n in range(5):
        history.record(invocation(f"r-{n}", job_id=7), result(f"r-{n}"), started_at=start + 60 * n)
    history.record(invocation("other", job_id=8), result("other"), started_at=start + 30)
    yield Dashboard(HistorySource(history), CollectorRegistry(), Access(""))
    history.close()


def listed(body: str) -> list[str]:
    return re.findall(r'<tr data-key="([^"]+)"', body)


def link(body: str, link_id: str) -> str | None:
    found = re.search(rf'<a href="([^"]*)" id="{link_id}">', body)
    return html.unescape(found.group(1)) if found else None


def test_older_runs_leads_through_every_page_with_the_filters_kept(paged: Dashboard) -> None:
    body = paged.handle(get("/runs?job=7&limit=2")).body.decode()
    assert listed(body) == ["r-4", "r-3"]
    assert link(body, "newest-runs") is None
    older = link(body, "older-runs")
    assert older is not None and older.startswith("/runs?job=7&limit=2&page_token=")

    body = paged.handle(get(older)).body.decode()
    assert "Left out" not in body
    assert listed(body) == ["r-2", "r-1"]
    assert link(body, "newest-runs") == "/runs?job=7&limit=2"
    older = link(body, "older-runs")
    assert older is not None
    # The live region refreshes the older page itself, links included.
    rows = paged.handle(get(older.replace("/runs?", "/runs?part=rows&"))).body.decode()
    assert listed(rows) == ["r-0"] and link(rows, "older-runs") is None
    assert link(rows, "newest-runs") == "/runs?job=7&limit=2"

    body = paged.handle(get(older)).body.decode()
    assert listed(body) == ["r-0"] and link(body, "older-runs") is None
    assert f'data-live="/runs?{html.escape(older[6:])}&amp;part=rows"' in body


def test_a_relative_since_is_fixed_to_the_time_it_meant_for_older_pages(paged: Dashboard) -> None:
    body = paged.handle(get("/runs?job=7&since=1h&limit=3")).body.decode()
    assert listed(body) == ["r-4", "r-3", "r-2"]
    older = link(body, "older-runs")
    assert older is not None
    since = parse_qs(urlsplit(older).query)["since"][0]
    assert abs(float(since) - (time.time() - 3600)) < 60
    body = paged.handle(get(older)).body.decode()
    assert "Left out" not in body, "the token's filters are the link's"
    assert listed(body) == ["r-1", "r-0"]


@pytest.mark.parametrize("kind", ["other filters", "garbage"])
def test_a_page_token_the_executor_refuses_is_left_out_with_a_notice(
    paged: Dashboard, kind: str
) -> None:
    older = link(paged.handle(get("/runs?job=7&limit=2")).body.decode(), "older-runs")
    assert older is not None
    token = parse_qs(urlsplit(older).query)["page_token"][0]
    path = f"/runs?job=8&page_token={token}" if kind == "other filters" else "/runs?page_token=x"
    response = paged.handle(get(path))
    assert response.status == 200
    body = html.unescape(response.body.decode())
    said = "page_token was made for other filters" if kind == "other filters" else "page_token 'x'"
    assert f"Left out of the filter: {said}" in body
    assert "the newest runs are shown." in body
    newest = ["other"] if kind == "other filters" else ["r-4", "r-3", "r-2", "r-1", "other", "r-0"]
    assert listed(body) == newest
    assert "page_token" not in body.split('data-live="', 1)[1].split('"', 1)[0]


# -- two Authorization headers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens", [("wrong", "tok"), ("tok", "wrong"), ("tok", "tok")], ids=["wr", "rw", "rr"]
)
@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/runs"])
def test_two_authorization_headers_are_refused_whatever_they_hold(
    tokens: tuple[str, str], path: str
) -> None:
    # As the gRPC port: judging one of them would depend on their order, which a proxy
    # adding its own header decides (wrong then right was let in).
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok"))
    sent = [("Authorization", f"Bearer {token}") for token in tokens]
    refused = dashboard.handle(Request.parse("GET", path, [*sent, ("Accept", "text/html")]))
    assert refused.status == 401
    assert b"the request carried more than one" in refused.body
    assert ("WWW-Authenticate", 'Bearer realm="cbexec"') in refused.headers
    if path == "/healthz":
        assert json.loads(refused.body)["status"] == "UNAUTHENTICATED"
    if path == "/runs":  # the dashboard's page, not the sign-in form: it would not help
        assert refused.content_type.startswith("text/html") and b"<!doctype" in refused.body.lower()


def test_two_authorization_headers_on_an_open_path_are_not_judged() -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access("tok", exempt_probes=True))
    twice = [("Authorization", "Bearer a"), ("authorization", "Bearer b")]
    assert dashboard.handle(Request.parse("GET", "/healthz", twice)).status == 200
    assert dashboard.handle(Request.parse("GET", "/login", twice)).status == 200


@pytest.mark.parametrize("path", ["/metrics", "/healthz"])
@pytest.mark.parametrize("token", ["", "tok"])
def test_probes_are_never_kept_by_a_cache(path: str, token: str) -> None:
    # Every page says no-store; an answer that needed the token must not sit in a cache.
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access(token))
    for headers in ({"authorization": f"Bearer {token}"}, {}):
        answer = dashboard.handle(get(path, **headers))
        assert ("Cache-Control", "no-store") in answer.headers, (answer.status, headers)


def test_only_a_static_file_may_be_cached() -> None:
    dashboard = Dashboard(FakeSource(), CollectorRegistry(), Access(""))
    static = dashboard.handle(get("/static/app.css"))
    assert [v for n, v in static.headers if n == "Cache-Control"] == ["max-age=300"]
    for path in ("/", "/static/nothing.css", "/login"):
        answer = dashboard.handle(get(path))
        assert ("Cache-Control", "no-store") in answer.headers, path


def test_a_wrong_token_waits_in_its_own_connection_and_the_right_one_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A wrong bearer header had no delay at all; then one lock for the whole port queued
    # every wrong token behind the others, and a scraper's old token held the port's
    # connections from everyone (probes 60, 62, 65). The connection bound limits guessers.
    monkeypatch.setattr("executor.web.auth.WRONG_TOKEN_DELAY_S", 0.3)
    access = Access("tok")
    guesses = [
        *(lambda: access.sign_in("wrong") for _ in range(3)),
        *(lambda: access.allowed("/runs", {"authorization": "Bearer wrong"}) for _ in range(3)),
    ]
    threads = [threading.Thread(target=guess) for guess in guesses]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    right = time.monotonic()
    assert access.allowed("/runs", {"authorization": "Bearer tok"})
    assert access.sign_in("tok") is not None
    assert time.monotonic() - right < 0.15, "the right token never waits for the guessers"
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    assert 0.3 <= took < 6 * 0.3, "each wrong token waits its delay, none waits for another"


class DotIdSource(FakeSource):
    """Runs whose invocation ids are the path segments "." and ".." (the proto allows them)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = {}
        for invocation_id in (".", "..", "a.."):
            run = executor_pb2.Run()
            run.CopyFrom(self.run)
            run.invocation_id = invocation_id
            self.runs[invocation_id] = run

    def list_runs(self, **_: object) -> Any:
        return executor_pb2.ListRunsResponse(runs=list(self.runs.values()))

    def get_run(self, invocation_id: str) -> Any:
        return self.runs.get(invocation_id)


def test_a_run_whose_id_is_a_dot_segment_has_a_link_a_browser_keeps() -> None:
    # /runs/.. was resolved by the browser to /runs (the list), %2e%2e as well.
    dashboard = Dashboard(DotIdSource(), CollectorRegistry(), Access(""))
    listed = dashboard.handle(get("/runs")).body.decode()
    for invocation_id in (".", "..", "a.."):
        found = re.search(rf'<a href="([^"]*)" title="{re.escape(invocation_id)}"', listed)
        assert found is not None, invocation_id
        # As a browser takes a link: dot segments of the path resolved, then asked.
        followed = urlsplit(urljoin("http://executor/runs", html.unescape(found.group(1))))
        target = followed.path + (f"?{followed.query}" if followed.query else "")
        page = dashboard.handle(get(target))
        assert page.status == 200, (invocation_id, target)
        assert f"Run {invocation_id}" in page.body.decode(), target
        stream = re.search(r'href="([^"]*stream=stdout)"', page.body.decode())
        assert stream is not None
        followed = urlsplit(urljoin("http://executor/runs", html.unescape(stream.group(1))))
        text = dashboard.handle(get(f"{followed.path}?{followed.query}"))
        if text.sent is not None:  # its stream slot back, as the server gives it once sent
            text.sent()
        assert (text.status, text.content_type) == (200, "text/plain; charset=utf-8"), target
