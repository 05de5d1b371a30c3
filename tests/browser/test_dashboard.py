"""The dashboard in a real browser (Debian's headless Chromium): live runs, a run's page, what a callback waits for.

Skipped, with the reason, only where Chromium or its driver is not installed;
``.ci/run`` installs both, so CI always runs these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisor_client import ExecutorClient, FarmClient
from tests.conftest import TEST_UID_BASE, Stack, running_stack, stack_settings
from tests.helpers.browser import Browser, chromium, missing
from tests.service.test_runs import FAIL, run_py

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
]

INJECTION = (
    "print('<script>window.__pwned = 1</script>')\n"
    "print('<img src=x onerror=\"window.__pwned = 2\">')\n"
    "print('</pre><b id=\"escaped\">bold</b>')"
)


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = stack_settings(tmp_path / "data", http_bind="127.0.0.1:0")
    async with running_stack(settings) as stack:
        yield stack


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as opened:
        yield opened


def page(stack: Stack, path: str) -> str:
    return f"http://127.0.0.1:{stack.running.http_port}{path}"


async def test_a_run_appears_without_a_reload_and_its_page_shows_the_output(
    web: Stack, browser: Browser
) -> None:
    await browser.open(page(web, "/runs"))
    await browser.wait_for("#runs-body", containing="No runs match")
    await browser.script("window.__sameDocument = true")

    done = await run_py(web, "print('frame 1001 rendered')", 41)

    row = f'tr[data-key="{done.invocation_id}"]'
    assert "SUCCEEDED" in await browser.wait_for(row)
    assert await browser.script("return window.__sameDocument") is True, "no reload"
    await browser.click(f"{row} a.mono")
    assert "frame 1001 rendered" in await browser.wait_for("#stdout")
    assert done.invocation_id in await browser.text("table.facts")


async def test_a_failing_run_is_shown_failed_with_its_message(web: Stack, browser: Browser) -> None:
    bad = await run_py(web, FAIL, 42)
    await browser.open(page(web, "/runs?outcome=FAILED"))
    row = await browser.wait_for(f'tr[data-key="{bad.invocation_id}"]')
    assert "FAILED" in row and "42" in row
    await browser.open(page(web, f"/runs/{bad.invocation_id}"))
    assert "ValueError: bad frame range" in await browser.wait_for("#failure")
    assert "about to fail" in await browser.text("#stdout")


async def test_what_an_and_trigger_still_waits_for(web: Stack, browser: Browser) -> None:
    await web.client.register_job(
        {
            "id": 43,
            "name": "comp",
            "agenda": [{"name": "1"}, {"name": "2"}],
            "callbacks": [
                {
                    "triggers": "complete-work-self-1 && complete-work-self-2",
                    "language": "qube",
                    "code": "unblock-self",
                }
            ],
        }
    )
    await browser.open(page(web, "/jobs?job=43"))
    # In the trigger engine's words (ExplainCallbacks, as `cbexec triggers why` says it).
    waiting = await browser.wait_for("td.waiting")
    assert "complete-work-self-1: this job" in waiting and "complete-work-self-2" in waiting
    assert "work 1 is in the agenda, no event seen yet" in waiting

    await web.client.publish_event(name="complete", type="work", job_id=43, work_name="1")

    # The page updates by itself: the half that happened is no longer waited for, and the
    # callback's journal (listed under it) says which event latched it.
    waiting = await browser.wait_for("td.waiting", containing="latched complete-work-self-1")
    open_now, *journal = waiting.splitlines()
    assert "complete-work-self-2" in open_now and "complete-work-self-1" not in open_now
    assert "complete-work-43-1: latched complete-work-self-1" in journal[-1]
    assert "complete-work-self-1" in await browser.text(".latch.on")
    assert "0 / ∞" in await browser.text("tr[data-callback] td.num")


async def test_one_callback_per_frame_is_a_strip_of_its_frames(
    web: Stack, browser: Browser
) -> None:
    # Probe 50: a {work} callback was a plain row, its atoms all "○" while two items were
    # half latched; a frame link that fired for one frame of three read "1 / 1"; callbacks
    # written per frame were labelled "complete-work-sA-{frame}" and "3 fired, 2 waiting".
    frames = ["1", "2", "3", "4", "5", "6"]
    work = "complete-work-sA-{work} && complete-work-sB-{work}"
    jobs: list[dict[str, Any]] = [
        {"name": "sA", "label": "sA", "agenda": frames},
        {"name": "sB", "label": "sB", "agenda": frames},
        {
            "name": "sC",
            "label": "sC",
            "agenda": frames,
            "callbacks": [{"triggers": work, "language": "qube", "code": "unblock-work-self"}],
        },
        {"name": "sD", "label": "sD", "agenda": frames[:3], "dependency": "link-complete-work-sB"},
        {
            "name": "sE",
            "label": "sE",
            "agenda": frames[:5],
            "callbacks": [
                {"triggers": f"complete-work-sA-{f}", "language": "qube", "code": "unblock-self"}
                for f in frames[:5]
            ],
        },
    ]
    async with FarmClient(web.channel) as farm:
        submitted = await farm.submit_jobs(jobs)
        a, b, c, d, e = (job.id for job in submitted.jobs)
        await farm.change_work(job_id=a, work=["1-3"], change="complete")
        await farm.change_work(job_id=b, work=["1"], change="complete")
    await web.settle()

    cells = (
        "return [...document.querySelectorAll(arguments[0])].map(e => [e.className, e.textContent])"
    )
    await browser.open(page(web, f"/jobs?job={c}"))
    await browser.wait_for(f"#job-{c} .frame")
    assert await browser.script(cells, f"#job-{c} .frame") == [
        ["frame fired again", "1"],
        ["frame partly", "2"],
        ["frame partly", "3"],
        ["frame waiting", "4"],
        ["frame waiting", "5"],
        ["frame waiting", "6"],
    ]
    assert await browser.text(f"#job-{c} p.tally") == (
        "6 work items: 1 fired and waiting again, 2 half latched, 3 waiting, nothing latched"
    )
    half = await browser.text(f"#job-{c} .latch.some")
    assert "complete-work-sA-{work}" in half and "2 of 6" in half
    assert "1 in all" in await browser.text(f"#job-{c} td.num")

    await browser.open(page(web, f"/jobs?job={d}"))
    fired = await browser.wait_for(f"#job-{d} td.num")
    assert "1 / 1" not in fired and "1 in all" in fired and "at most 1 per item" in fired
    assert await browser.script(cells, f"#job-{d} .frame") == [
        ["frame fired", "1"],
        ["frame waiting", "2"],
        ["frame waiting", "3"],
    ]

    await browser.open(page(web, f"/jobs?job={e}"))
    row = await browser.wait_for(f"#job-{e} tr.frame-group")
    assert "{frame}" not in row
    assert "complete-work-sA-1 … complete-work-sA-5" in row
    assert "5 callbacks, one per frame (1 … 5): 3 fired and waiting again, 2 waiting" in row


async def test_a_job_of_100000_frames_is_a_small_page_that_says_what_it_leaves_out(
    web: Stack, browser: Browser
) -> None:
    # Probe 53: one {work} job of 100,000 frames drew a cell per frame, a 9.9 MB page that
    # an open tab fetched again every few seconds (five such jobs: 49 MB, 30 s to load).
    frames = [str(n) for n in range(1, 100_001)]
    # Half latched by each frame that completes; it never fires (the job does not fail).
    trigger = "complete-work-self-{work} && failed-job-self"
    job = {
        "name": "big",
        "agenda": frames,
        "callbacks": [{"triggers": trigger, "language": "qube", "code": "unblock-self"}],
    }
    async with FarmClient(web.channel) as farm:
        (big,) = (await farm.submit_jobs([job])).jobs
        await farm.change_work(job_id=big.id, work=["1-1000"], change="complete")
    await web.settle()

    await browser.open(page(web, "/jobs"))
    strip = await browser.wait_for(f"#job-{big.id} .frames")
    cells = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    assert await browser.script(cells, f"#job-{big.id} .frame") == [
        "1 … 1000",
        "1001 … 100000",
    ], strip
    assert await browser.text(f"#job-{big.id} p.tally") == (
        "100000 work items: 1000 half latched, 99000 waiting, nothing latched"
    )
    assert await browser.text(f"#job-{big.id} p.strip-summary") == (
        "100000 frames drawn as 2 runs of the same state; each frame in full: "
        f"cbexec triggers why {big.id}:1 --work NAME"
    )
    length = await browser.script("return document.documentElement.outerHTML.length")
    assert length < 64 << 10
    # What the open tab fetches again every 2 s is as small.
    refreshed = await browser.script(
        "const x = new XMLHttpRequest(); x.open('GET', '/jobs?part=body', false); x.send();"
        "return x.responseText.length"
    )
    assert refreshed < 64 << 10


async def test_a_newline_in_a_job_name_is_shown_as_an_escape(web: Stack, browser: Browser) -> None:
    # It reached the <h2> raw, and Chromium drew it as a space: "real 999\x0dprod".
    await web.client.register_job(
        {
            "id": 46,
            "name": "real\n999\rprod",
            "label": "lab\u202eel",
            "callbacks": [{"triggers": "complete-job-self", "code": "unblock-self"}],
        }
    )
    await browser.open(page(web, "/jobs?job=46"))
    heading = await browser.wait_for("#job-46 h2")
    assert heading.startswith("Job 46 real\\x0a999\\x0dprod"), heading
    assert "lab\\u202eel" in heading


async def test_printed_markup_stays_text(web: Stack, browser: Browser) -> None:
    hostile = await run_py(web, INJECTION, 44)
    for path in ("/runs", f"/runs/{hostile.invocation_id}"):
        await browser.open(page(web, path))
        await browser.wait_for("main h1")
        assert await browser.script("return window.__pwned === undefined") is True, path
    stdout = await browser.wait_for("#stdout")
    assert "<script>window.__pwned = 1</script>" in stdout
    assert '<img src=x onerror="window.__pwned = 2">' in stdout
    assert await browser.script("return document.getElementById('escaped')") is None


async def test_a_run_at_the_output_cap_loads_whole_and_says_what_it_leaves_out(
    web: Stack, browser: Browser
) -> None:
    # Both streams at 16 MiB made a 34 MB page; Chromium parsed it so slowly that the
    # server dropped the connection, and the page ended mid-stderr with nothing to say so.
    code = (
        "import sys\n"
        "sys.stdout.write('first line\\n' + 'o' * (16 << 20))\n"
        "sys.stderr.write('e' * ((16 << 20) - 20) + 'last of stderr')\n"
    )
    async with ExecutorClient(web.address) as client:  # the suite's channel keeps 4 MiB
        done = await client.execute_callback(
            language="python",
            code=code,
            job={"id": 45, "user": "root"},
            limits={"output_bytes": 16 << 20},
        )
    await browser.open(page(web, f"/runs/{done.invocation_id}"))
    assert "cbexec" in await browser.wait_for("footer"), "the page arrived whole"
    assert (await browser.text("#stdout")).startswith("first line")
    assert "bytes not shown" in await browser.text("#stderr-cut")
    assert (await browser.text("#stderr-end")).endswith("last of stderr")
    length = await browser.script("return document.documentElement.outerHTML.length")
    assert length < 1 << 20

    # The whole stream is one link away (its content is checked in tests/service/test_http.py;
    # Chromium takes half a minute to lay out one 16 MiB line).
    link = await browser.script("return document.querySelector('#stderr-cut a').href")
    assert link == page(web, f"/runs/{done.invocation_id}?stream=stderr")


async def test_signing_in_with_the_token(tmp_path: Path, browser: Browser) -> None:
    settings = stack_settings(tmp_path / "data", http_bind="127.0.0.1:0", auth_token="t0ken")
    async with running_stack(settings) as web:
        await browser.open(page(web, "/health"))
        await browser.wait_for("form.login")
        await browser.type("input[name=token]", "t0ken")
        await browser.click("form.login button")
        assert "SERVING" in await browser.wait_for("#serving")
        assert browser.url.endswith("/health")


async def test_two_executors_on_one_host_keep_their_own_sign_ins(
    tmp_path: Path, browser: Browser
) -> None:
    # Cookies are per host, not per port: under one cookie name, signing in to the
    # second executor signed the browser out of the first.
    first = stack_settings(tmp_path / "a", http_bind="127.0.0.1:0", auth_token="t0ken")
    second = stack_settings(
        tmp_path / "b",
        http_bind="127.0.0.1:0",
        auth_token="other-t0ken",
        sandbox_uid_base=TEST_UID_BASE + 8,
    )
    async with running_stack(first) as one, running_stack(second) as other:
        for web, token in ((one, "t0ken"), (other, "other-t0ken")):
            await browser.open(page(web, "/health"))
            await browser.wait_for("form.login")
            await browser.type("input[name=token]", token)
            await browser.click("form.login button")
            assert "SERVING" in await browser.wait_for("#serving")
        for web in (one, other):
            await browser.open(page(web, "/health"))
            await browser.wait_for("main h1")
            assert browser.url == page(web, "/health"), "still signed in, not sent to /login"
