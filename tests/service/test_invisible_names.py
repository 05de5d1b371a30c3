"""Names that differ by an invisible character are told apart on the dashboard and by the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import running_stack
from tests.helpers.cli import cbexec
from tests.service.test_http import fetch, http_settings, url

pytestmark = pytest.mark.service

# The probe's names: each drew exactly as "shot010" in Chromium, the character raw in it.
LOOK_ALIKES = {
    "shot\xad010": "shot\\xad010",  # soft hyphen
    "shot010\U000e0041\U000e0042": "shot010\\U000e0041\\U000e0042",  # tag characters
    "shot\ufe0f010": "shot\\ufe0f010",  # a variation selector on a letter
    "shot\u034f010": "shot\\u034f010",  # combining grapheme joiner
    "shot\u180e010": "shot\\u180e010",  # Mongolian vowel separator
    "shot010\u3164": "shot010\\u3164",  # Hangul filler
}


def hidden(name: str) -> set[str]:
    """The characters of ``name`` that "shot010" does not have."""
    return set(name) - set("shot010")


async def test_a_look_alike_job_name_shows_its_invisible_character_as_an_escape(
    tmp_path: Path,
) -> None:
    async with running_stack(http_settings(tmp_path)) as web:
        for job_id, (name, shown) in enumerate(LOOK_ALIKES.items(), start=8001):
            await web.client.register_job({"id": job_id, "name": name, "label": name})
            status, _, page = await fetch(url(web, f"/jobs?job={job_id}"))
            assert status == 200
            assert shown in page, name
            assert not hidden(name) & set(page), name
        # The farm's own copy of such a job, as `cbexec farm show` prints it.
        assert web.running.reference is not None
        for name, shown in LOOK_ALIKES.items():
            job = web.running.reference.submit([{"name": name, "label": name, "user": "u"}])[0]
            said = await cbexec("farm", "show", str(job["id"]), address=web.address)
            assert said.code == 0, said.err
            head = said.out.splitlines()[0]
            assert f"'{shown}'" in head and f"label '{shown}'" in head, head
            assert not hidden(name) & set(said.out), said.out
