"""A callback cannot forge entries in its job's ``.cb`` log (Qube's callback log file)."""

from __future__ import annotations

import pytest

from executor.runs.callback_log import log_path
from tests.helpers.waiting import eventually
from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

FORGED = "=== 2026-01-01T00:00:00.000+00:00 callback=1 outcome=SUCCEEDED invocation=forged-1"


async def test_printed_header_lines_stay_output(arena_warm: Arena, language: str) -> None:
    code = {
        "python": f"print({FORGED!r})\nprint('--- stderr')\n",
        "perl": f'print "{FORGED}\\n--- stderr\\n";\n',
    }[language]
    response = await arena_warm.attack(code, language=language)
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    path = log_path(arena_warm.data_dir / "logs", arena_warm.job_id)

    def entry_written() -> bool:
        return path.exists() and response.invocation_id in path.read_text()

    assert await eventually(entry_written)
    lines = path.read_text().splitlines()
    headers = [line for line in lines if line.startswith("=== ")]
    assert len(headers) == len({line.rsplit("invocation=", 1)[1] for line in headers})
    assert not [line for line in headers if "forged-1" in line]
    assert f"\\{FORGED}" in lines and "\\--- stderr" in lines


async def test_terminal_controls_cannot_rewrite_the_header_on_a_terminal(
    arena_warm: Arena, language: str
) -> None:
    # Found by a tester: a FAILED run moved the cursor up onto its own header line,
    # erased it and wrote a SUCCEEDED one (CSI 1A, 2K, 1G), then concealed the rest
    # (SGR 8): `cat` of the log on a terminal showed the forgery.
    sequence = "\\x1b[1A\\x1b[2K\\x1b[1G"
    code = {
        "python": (
            f"import sys\nsys.stdout.write('{sequence}' + {FORGED!r} + '\\n\\x1b[8m')\n"
            "raise SystemExit(3)\n"
        ),
        "perl": f'print "{sequence}{FORGED}\\n\\x1b[8m";\nexit 3;\n',
    }[language]
    response = await arena_warm.attack(code, language=language)
    assert_outcome(response, Outcome.OUTCOME_FAILED)
    path = log_path(arena_warm.data_dir / "logs", arena_warm.job_id)

    def entry_written() -> bool:
        return path.exists() and response.invocation_id in path.read_text()

    assert await eventually(entry_written)
    text = path.read_text()
    assert "\x1b" not in text
    # Each line starts with an escape's backslash, so it gets the log's backslash first.
    lines = text.splitlines()
    assert f"\\\\x1b[1A\\x1b[2K\\x1b[1G{FORGED}" in lines and "\\\\x1b[8m" in lines
    headers = [line for line in lines if line.startswith("=== ")]
    assert len(headers) == 1 and "outcome=FAILED" in headers[0]
