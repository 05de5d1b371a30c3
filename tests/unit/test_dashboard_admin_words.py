"""What the dashboard's pages say to an admin, in the words the ``cbexec`` command uses (probe 78)."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from executor.cli.metrics import format_metrics
from executor.web.app import Dashboard
from executor.web.auth import Access
from executor.web.runs_pages import RunFilters
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.unit.test_dashboard import FakeSource, RequestBuildingSource, get

pytestmark = pytest.mark.unit


def _text(body: bytes) -> str:
    """The page's words, as a reader sees them (tags out, whitespace squeezed)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", " ", body.decode())))


class ZygoteSource(FakeSource):
    def metrics(self) -> Any:
        zygote = executor_pb2.Zygote
        return executor_pb2.GetMetricsResponse(
            zygotes=[
                zygote(language="python", pid=31591, warm=True),
                # Before its first perl callback: no pid, and not gone cold either.
                zygote(language="perl", pid=0, warm=True),
                zygote(language="dsl", pid=0, warm=True, died=True, restarts=1),
                zygote(language="qube", pid=0, warm=False, died=True, restarts=5),
            ],
            universal_reload_errors=1,
        )


def test_a_zygote_is_warm_on_the_health_page_only_while_it_runs() -> None:
    # Found by a tester: "perl | not started | 0 | warm" while cbexec metrics said not started.
    dashboard = Dashboard(ZygoteSource(), CollectorRegistry(), Access(""))
    rows = re.findall(r"<tr>(.*?)</tr>", dashboard.handle(get("/health")).body.decode(), re.S)
    cells = {
        cols[0]: cols[1:]
        for cols in (
            [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows
        )
        if cols and cols[0] in ("python", "perl", "dsl", "qube")
    }
    assert cells["python"] == ["pid 31591", "0", "warm"]
    assert cells["perl"] == ["not started", "0", "-"]
    assert cells["dsl"] == ["not running (died; starts again at the next run)", "1", "-"]
    assert cells["qube"] == [
        "not running (died)",
        "5",
        "failing: children start cold until a retry works",
    ]
    text = format_metrics(ZygoteSource().metrics())
    assert "perl    not started, 0 restarts\n" in text
    assert "warm" not in text.split("zygote", 1)[1].split("\n")[1], "the CLI's perl line"


def test_the_health_page_counts_one_reload_problem_in_the_singular() -> None:
    dashboard = Dashboard(ZygoteSource(), CollectorRegistry(), Access(""))
    text = _text(dashboard.handle(get("/health")).body)
    assert "Last reload 1 problem " in text


@pytest.mark.parametrize("limit", ["2000", "1001", "9" * 5000])
def test_a_limit_above_1000_is_said_to_be_cut_to_1000_not_left_out(limit: str) -> None:
    # Found by a tester: "Left out of the filter: limit 2000" above a page of 1000 runs.
    filters, problem = RunFilters.parse({"limit": limit}, 0.0)
    assert filters.limit == 1000 and problem == ""
    source = RequestBuildingSource()
    dashboard = Dashboard(source, CollectorRegistry(), Access(""))
    text = _text(dashboard.handle(get(f"/runs?limit={limit}")).body)
    assert source.asked[-1]["limit"] == 1000
    assert "Left out" not in text
    shown = limit if len(limit) < 13 else f"{limit[:12]}..."
    assert f"limit {shown} cut to 1000: a page lists 1000 runs at most" in text


def test_a_cut_limit_and_a_bad_filter_each_get_their_notice() -> None:
    dashboard = Dashboard(RequestBuildingSource(), CollectorRegistry(), Access(""))
    text = _text(dashboard.handle(get("/runs?limit=2000&job=abc")).body)
    assert "Left out of the filter: job 'abc' is not a job id" in text
    assert "limit 2000 cut to 1000" in text


class ShadowSource(FakeSource):
    def universal(self) -> Any:
        callbacks = [
            executor_pb2.UniversalCallback(
                source="/cb/done.py", language="python", triggers="done-job-self", policy="job"
            ),
            executor_pb2.UniversalCallback(
                source="/cb/sh.py",
                language="python",
                triggers="done-job-self",
                policy="admin",
                shadow=True,
            ),
        ]
        directory = executor_pb2.UniversalDirectory(path="/cb", has_conf=True, callbacks=callbacks)
        return executor_pb2.GetUniversalCallbacksResponse(directories=[directory])


def test_the_universal_page_marks_a_shadow_callback_and_says_each_policy() -> None:
    # Found by a tester: "sh.py [shadow]" was listed like a callback that acts. The
    # POLICY column of `cbexec runs` writes "admin (shadow)"; the page writes it so too.
    dashboard = Dashboard(ShadowSource(), CollectorRegistry(), Access(""))
    text = _text(dashboard.handle(get("/universal")).body)
    assert "File Language Trigger Policy " in text
    assert "done.py python done-job-self job " in text
    assert "sh.py python done-job-self admin (shadow) " in text
