"""Take the README's screenshots of the dashboard: a demo executor, some runs and jobs, headless Chromium.

Usage: python scripts/screenshots.py [--out scripts/screenshots]

Starts an executor in this process (embedded supervisor, loopback, a temporary data
dir, the HTTP side port on a free port), runs a few callbacks (one fails, one prints
markup), registers a compositing job with an ``&&`` trigger and a job with one
callback per frame, publishes half of what they wait for, loads a universal callback,
and saves a PNG of each main page. Uses Debian's chromium and chromedriver, as the
browser tests do (tests/helpers/browser.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor import server  # noqa: E402
from executor.config import Settings  # noqa: E402
from supervisor_client import ExecutorClient  # noqa: E402
from tests.helpers.browser import chromium, missing  # noqa: E402

RENDER = "print('rendering frames 1-24 of shot_010')\nprint('<script>alert(1)</script> stays text')"
FAIL = "print('checking the frame range')\nraise ValueError('frame range 1-24 overlaps job 1201')"


async def populate(client: ExecutorClient, reference: object) -> str:
    """Runs, jobs and latches to show; returns the failed run's invocation id."""
    submit = reference.submit  # type: ignore[attr-defined]
    job = submit([{"name": "shot_010_render", "user": "alice", "status": "pending"}])[0]
    for code in (RENDER, "import time; time.sleep(0.3)\nprint('ok')", "x = qb.jobid()"):
        await client.execute_callback(language="python", code=code, job=job)
    failed = await client.execute_callback(language="python", code=FAIL, job=job)
    await client.execute_callback(language="qube", code="unblock-self", job=job)
    await client.execute_callback(
        language="perl", code='print "perl says hi\\n";', job=job, owner="alice"
    )
    await client.register_job(
        {"id": 1200, "name": "shot_010_lighting", "label": "lighting", "user": "alice"}
    )
    await client.register_job(
        {
            "id": 1201,
            "name": "shot_010_comp",
            "label": "comp",
            "pgrp": 1200,
            "user": "alice",
            "callbacks": [
                {
                    "triggers": "complete-job-lighting && complete-job-fx",
                    "language": "qube",
                    "code": "unblock-self",
                },
                {"triggers": "failed-job-self", "language": "qube", "code": "mail-status"},
            ],
        }
    )
    await client.register_job(
        {
            "id": 1202,
            "name": "shot_010_frames",
            "user": "bob",
            "agenda": [{"name": str(frame)} for frame in range(1, 49)],
            "callbacks": [
                *(
                    {
                        "triggers": f"complete-work-1200-{frame}",
                        "language": "qube",
                        "code": "unblock-work-self",
                        "maximum": 1,
                    }
                    for frame in range(1, 49)
                ),
                # The same, written once: one callback for every frame.
                {
                    "triggers": "complete-work-1200-{work} && complete-work-self-{work}",
                    "language": "qube",
                    "code": "unblock-work-self",
                },
            ],
        }
    )
    await client.publish_event(name="complete", type="job", job_id=1200)
    for frame in range(1, 18):
        await client.publish_event(name="complete", type="work", job_id=1200, work_name=str(frame))
    for frame in range(1, 7):
        await client.publish_event(name="complete", type="work", job_id=1202, work_name=str(frame))
    return failed.invocation_id


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "screenshots")
    args = parser.parse_args()
    if missing():
        print(f"screenshots: {missing()}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cbexec-shots-") as tmp:
        universal = Path(tmp) / "callback"
        universal.mkdir()
        (universal / "notify.qcb").write_text("mail-status")
        (universal / "callbacks.conf").write_text("notify.qcb = done-job-self\n")
        settings = Settings(
            bind="127.0.0.1:0",
            http_bind="127.0.0.1:0",
            data_dir=Path(tmp) / "data",
            universal_callback_path=str(universal),
            max_concurrent=4,
        )
        running = await server.start(settings)
        try:
            async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
                failed = await populate(client, running.reference)
            base = f"http://127.0.0.1:{running.http_port}"
            async with chromium() as browser:
                for path, name in (
                    ("/runs", "runs"),
                    (f"/runs/{failed}", "run"),
                    ("/jobs", "jobs"),
                    ("/universal", "universal"),
                    ("/health", "health"),
                ):
                    await browser.open(base + path)
                    await browser.wait_for("main h1")
                    await browser.screenshot(args.out / f"{name}.png")
                    print(args.out / f"{name}.png")
        finally:
            await running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
