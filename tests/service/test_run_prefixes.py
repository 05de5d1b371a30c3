"""A run by a prefix of its id: too short or ambiguous is the caller's mistake, said as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import running_stack
from tests.helpers.cli import cbexec
from tests.service.test_http import fetch, http_settings, url

pytestmark = pytest.mark.service


async def test_a_prefix_too_short_or_of_several_runs_is_a_400_and_a_clear_cli_error(
    tmp_path: Path,
) -> None:
    async with running_stack(http_settings(tmp_path)) as web:
        for suffix in ("1", "2"):
            await web.client.execute_callback(
                language="python",
                code="print('hi')",
                job={"id": 7, "user": "alice"},
                invocation_id=f"abcdef-{suffix}",
            )
        status, _, page = await fetch(url(web, "/runs/abcd"))
        assert status == 400, page
        assert "is the start of several runs" in page and "give more of the id" in page
        status, _, page = await fetch(url(web, "/runs/abc"))
        assert status == 400, page
        assert "too short: give at least 4 characters of the id" in page
        status, _, page = await fetch(url(web, "/runs/abcdef-1"))
        assert status == 200, page
        status, _, _ = await fetch(url(web, "/runs/zzzz"))
        assert status == 404

        said = await cbexec("runs", "show", "abc", address=web.address)
        assert said.code == 3, said
        assert said.err.strip() == (
            "cbexec: INVALID_ARGUMENT: no run 'abc' in the history; as a prefix it is too "
            "short: give at least 4 characters of the id"
        )
        said = await cbexec("runs", "show", "abcd", address=web.address)
        assert said.code == 3 and "give more of the id" in said.err, said
