"""Callback logs in Qube's place and shape, with the size cap and rotation."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from executor import visible_text
from executor.model import CallbackSpec, Failure, Invocation, Limits, Outcome, RunResult
from executor.runs import callback_log
from executor.runs.callback_log import CallbackLog, format_entry, log_path

pytestmark = pytest.mark.unit

WHEN = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def invocation(job_id: int = 5042, triggers: str = "complete-job-self") -> Invocation:
    return Invocation(
        invocation_id="inv-1",
        callback=CallbackSpec("python", "print('hi')", triggers, id=3),
        job={"id": job_id},
        limits=Limits(1, 1, 1, 1, 1, 1),
    )


def test_path_is_qubes_job_log_layout(tmp_path: Path) -> None:
    assert log_path(tmp_path, 5042) == tmp_path / "job/5000/5042/5042.cb"
    assert log_path(tmp_path, 999) == tmp_path / "job/0/999/999.cb"
    assert log_path(tmp_path, 1000) == tmp_path / "job/1000/1000/1000.cb"


def test_entry_has_header_then_output() -> None:
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        exit_code=1,
        stdout="hello\n",
        stderr="warn",
        stderr_truncated=True,
        failure=Failure("ZeroDivisionError: division by zero", "ZeroDivisionError", "Traceback\n"),
    )
    text = format_entry(invocation(triggers="(a && b) || c"), result, WHEN)
    lines = text.splitlines()
    assert lines[0] == (
        '=== 2023-11-14T22:13:20.250+00:00 callback=3 trigger="(a && b) || c" '
        "language=python outcome=FAILED invocation=inv-1 policy=job"
    )
    assert lines[1:] == [
        "hello",
        "--- stderr",
        "warn",
        "[stderr truncated at the output_bytes limit]",
        "--- failure: ZeroDivisionError: division by zero",
        "Traceback",
    ]


def test_appends_runs_to_the_jobs_file(tmp_path: Path) -> None:
    log = CallbackLog(tmp_path, max_bytes=1 << 20)
    for n in range(3):
        path = log.append(
            invocation(), RunResult(f"inv-{n}", Outcome.SUCCEEDED, stdout=f"run {n}"), WHEN
        )
    assert path == tmp_path / "job/5000/5042/5042.cb"
    text = path.read_text()
    assert re.findall(r"invocation=(\S+)", text) == ["inv-0", "inv-1", "inv-2"]
    assert re.findall(r"^run \d$", text, re.MULTILINE) == ["run 0", "run 1", "run 2"]


def test_rotates_at_the_cap_and_keeps_one_generation(tmp_path: Path) -> None:
    log = CallbackLog(tmp_path, max_bytes=1000)
    path = log_path(tmp_path, 5042)
    for n in range(30):
        log.append(invocation(), RunResult(f"inv-{n}", Outcome.SUCCEEDED, stdout="x" * 100), WHEN)
        assert path.stat().st_size <= 1000
    rotated = path.with_name("5042.cb.1")
    assert rotated.exists() and rotated.stat().st_size <= 1000
    assert "invocation=inv-29" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["5042.cb", "5042.cb.1"]


def test_an_entry_larger_than_the_cap_is_cut(tmp_path: Path) -> None:
    log = CallbackLog(tmp_path, max_bytes=500)
    path = log.append(invocation(), RunResult("big", Outcome.SUCCEEDED, stdout="é" * 5000), WHEN)
    data = path.read_bytes()
    assert len(data) <= 500
    assert data.startswith(b"=== ")
    lines = data.decode().splitlines()
    assert lines[2].startswith("[... ") and lines[2].endswith(" bytes of stdout left out ...]")
    assert re.fullmatch(r"é+", lines[1]) and re.fullmatch(r"é+", lines[3])


def test_a_cut_entry_keeps_the_failure_and_the_end_of_stderr(tmp_path: Path) -> None:
    # Found by a tester: the cut kept the head of a large stdout and lost the stderr
    # section, the failure line and the traceback, which say why the callback failed.
    stdout = "".join(f"out {n}\n" for n in range(2000))
    stderr = "".join(f"err {n}\n" for n in range(2000))
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        stdout=stdout,
        stderr=stderr,
        failure=Failure("RuntimeError: boom", "RuntimeError", "Traceback\n" + "  frame\n" * 999),
    )
    path = CallbackLog(tmp_path, max_bytes=4096).append(invocation(), result, WHEN)
    text = path.read_text()
    assert len(text.encode()) <= 4096
    lines = text.splitlines()
    assert lines[0].startswith("=== ") and lines[1] == "out 0"
    assert "--- stderr" in lines and "--- failure: RuntimeError: boom" in lines
    stderr_section = lines[
        lines.index("--- stderr") + 1 : lines.index("--- failure: RuntimeError: boom")
    ]
    assert stderr_section[0] == "err 0" and stderr_section[-1] == "err 1999"
    assert lines[-1] == "  frame" and "Traceback" in lines
    # Each stream's middle is left out, with a marker saying how much of it.
    markers = [line for line in lines if line.startswith("[... ")]
    assert [m.split(" bytes of ")[1] for m in markers] == [
        "stdout left out ...]",
        "stderr left out ...]",
        "traceback left out ...]",
    ]
    # The kept pieces and the bytes left out add up to the stream as written.
    out_kept = lines[1 : lines.index(markers[0])]
    out_tail = lines[lines.index(markers[0]) + 1 : lines.index("--- stderr")]
    shown = len(("\n".join(out_kept) + "\n").encode()) + len(("\n".join(out_tail) + "\n").encode())
    assert shown + int(markers[0].split()[1]) in (len(stdout), len(stdout) + 1, len(stdout) + 2)


@pytest.mark.parametrize("cap", [700, 1000, 4096, 16_003, 20_000])
def test_a_cut_entry_stays_within_the_cap_and_forges_nothing(tmp_path: Path, cap: int) -> None:
    text = ("line\n=== forged\n\x1b[1A" * 1000) + "é" * 3000 + "\n=== tail forged"
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        stdout=text,
        stderr=text,
        failure=Failure("E: " + text, "E", text),
    )
    data = CallbackLog(tmp_path / str(cap), cap).append(invocation(), result, WHEN).read_bytes()
    assert len(data) <= cap
    lines = data.decode().splitlines()
    assert [line for line in lines if line.startswith("=== ")] == [lines[0]]
    sections = [line for line in lines if line.startswith("--- ")]
    assert len(sections) == 2 and sections[0] == "--- stderr"
    assert sections[1].startswith("--- failure: E: line")


def test_an_entry_within_the_cap_is_whole(tmp_path: Path) -> None:
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        stdout="a" * 300,
        stderr="b" * 300,
        failure=Failure("E: x", "E", "tb\n"),
    )
    whole = format_entry(invocation(), result, WHEN)
    assert format_entry(invocation(), result, WHEN, len(whole.encode())) == whole
    assert "[... " not in whole


def test_callback_text_cannot_forge_a_header_or_a_section() -> None:
    forged = "=== 2026-01-01T00:00:00.000+00:00 callback=9 outcome=SUCCEEDED invocation=forged\n"
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        stdout=f"before\n{forged}--- stderr\n\\already escaped\n",
        stderr=forged,
        failure=Failure(f"boom\n{forged}", "ValueError", f"Traceback\n{forged}"),
    )
    entry = format_entry(invocation(), result, WHEN)
    headers = [line for line in entry.splitlines() if line.startswith("=== ")]
    sections = [line for line in entry.splitlines() if line.startswith("--- ")]
    assert len(headers) == 1 and headers[0].endswith("invocation=inv-1 policy=job")
    assert sections == ["--- stderr", "--- failure: boom"]
    assert f"\\{forged}" in entry and "\\--- stderr" in entry and "\\\\already escaped" in entry
    assert "before\n" in entry  # ordinary lines are left as written


@pytest.mark.parametrize(
    ("brk", "written"),
    [
        ("\r", "\\x0d"),
        ("\x0b", "\\x0b"),
        ("\x0c", "\\x0c"),
        ("\x1c", "\\x1c"),
        ("\x85", "\\x85"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ],
)
def test_no_line_break_of_any_reader_lets_text_forge_a_header(brk: str, written: str) -> None:
    # `cat` shows "abc\r=== ..." as the header alone; splitlines() splits on the rest.
    # Each is written as an escape: the newline is the only line break left.
    forged = "=== 2026-01-01T00:00:00.000+00:00 callback=9 outcome=SUCCEEDED invocation=forged"
    result = RunResult("inv-1", Outcome.SUCCEEDED, stdout=f"abc{brk}{forged}{brk}--- stderr\n")
    entry = format_entry(invocation(), result, WHEN)
    lines = entry.splitlines()
    assert [line for line in lines if line.startswith("=== ")] == [lines[0]]
    assert not any(line.startswith("--- stderr") for line in lines)
    assert lines[1] == f"abc{written}{forged}{written}--- stderr"


def test_terminal_controls_in_callback_text_cannot_rewrite_the_header_on_a_terminal() -> None:
    # Found by a tester: a FAILED run printed "up a line, erase it, column 1" and a
    # SUCCEEDED header of its own, then "conceal"; `cat` of the log showed the forgery.
    forged = "=== 2026-01-01T00:00:00.000+00:00 callback=9 outcome=SUCCEEDED invocation=forged"
    controls = "\x1b[1A\x1b[2K\x1b[1G\x9b1A\x07\x00\x7f\r\x0b\x85\u2028"
    text = f"{controls}{forged}\n\x1b[8m"
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        stdout=text,
        stderr=text,
        failure=Failure(f"boom{controls}", "ValueError", f"Traceback{controls}\n"),
    )
    entry = format_entry(invocation(), result, WHEN)
    body = entry.partition("\n")[2]

    # Only the tab and the newline stay as written; every other control is an escape.
    assert not [char for char in body if not char.isprintable() and char not in "\t\n"]
    assert "\\x1b[1A\\x1b[2K\\x1b[1G\\x9b1A\\x07\\x00\\x7f\\x0d\\x0b\\x85\\u2028" in body
    assert "--- failure: boom\\x1b[1A" in body
    assert [line for line in entry.splitlines() if line.startswith("=== ")] == [
        entry.splitlines()[0]
    ]


def test_a_line_that_starts_with_an_escaped_control_gets_the_backslash_too() -> None:
    # Its escape begins with a backslash: escaped as any such line, so a line's first
    # backslash is always the log's.
    result = RunResult("inv-1", Outcome.SUCCEEDED, stdout="\x1b[1Gx\n")
    lines = format_entry(invocation(), result, WHEN).splitlines()
    assert lines[1:] == ["\\\\x1b[1Gx"]


def test_a_universal_callback_is_named_by_its_file() -> None:
    universal = Invocation(
        invocation_id="inv-2",
        callback=CallbackSpec(
            "qube", "mail-status", "done-job-self", id=4, source="/etc/cb/mail-status.qcb"
        ),
        job={"id": 7},
        limits=Limits(1, 1, 1, 1, 1, 1),
    )
    header = format_entry(universal, RunResult("inv-2", Outcome.SUCCEEDED), WHEN).splitlines()[0]
    assert " callback=mail-status.qcb trigger=" in header


def test_a_control_character_in_a_universal_files_name_is_escaped_in_the_header() -> None:
    universal = Invocation(
        invocation_id="inv-3",
        callback=CallbackSpec(
            "python", "print(1)", "done-job-self", id=4, source="/etc/cb/ev\x1b[31mil\u202e.py"
        ),
        job={"id": 7},
        limits=Limits(1, 1, 1, 1, 1, 1),
    )
    header = format_entry(universal, RunResult("inv-3", Outcome.SUCCEEDED), WHEN).splitlines()[0]
    assert " callback=ev\\x1b[31mil\\u202e.py trigger=" in header


# The escape's definition: every control character but the tab and the newline written
# as an escape, then a backslash before each line that starts as one of ours, as one
# regular expression (what it was: ~0.8 s for 16 MiB).
_CONTROLS: dict[str, str | int | None] = {
    "\r": "\\x0d",
    "\x1b": "\\x1b",
    "\x0b": "\\x0b",
    "\x1e": "\\x1e",
    "\x85": "\\x85",
    "\u2028": "\\u2028",
}
_DEFINITION = re.compile(r"(?:^|(?<=\n))(?==== |--- |\\)")


def test_the_escape_is_its_definition_on_any_text() -> None:
    pieces = [
        "\n",
        "\r",
        "\r\n",
        "\x1b",
        "\x0b",
        "\x1e",
        "\x85",
        "\u2028",
        "=== ",
        "--- ",
        "\\",
        "=",
        "x",
        "é",
    ]
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        stdout = format_entry(invocation(), RunResult("i", Outcome.SUCCEEDED, stdout=text), WHEN)
        shown = text.translate(str.maketrans(_CONTROLS))
        assert stdout.partition("\n")[2] == _DEFINITION.sub(r"\\", shown) + (
            "" if not text or text.endswith("\n") else "\n"
        ), repr(text)


def test_an_entry_of_control_characters_is_escaped_in_runs_and_in_bounded_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Probe 153: 2 x 16 MiB of \x01, escaped one Python call per character and again at
    # each try of a cut, held the bookkeeping thread ~40 s. Counted, not timed: the
    # per-character escapes made, and the characters escaped in all, per entry.
    per_character, escaped_chars = 0, 0
    code, escaped = visible_text._code, callback_log._escaped

    def counted_code(char: str) -> str:
        nonlocal per_character
        per_character += 1
        return code(char)

    def counted_escaped(text: str) -> str:
        nonlocal escaped_chars
        escaped_chars += len(text)
        return escaped(text)

    monkeypatch.setattr(visible_text, "_code", counted_code)
    monkeypatch.setattr(callback_log, "_escaped", counted_escaped)
    cap = 10 * 1024 * 1024  # callback_log_max_bytes's default
    output = "\x01" * (16 * 1024 * 1024)
    result = RunResult("ctl", Outcome.SUCCEEDED, stdout=output, stderr=output)

    entry = format_entry(invocation(), result, WHEN, cap)

    assert len(entry.encode()) <= cap
    assert entry.splitlines()[1].startswith("\\\\x01\\x01")  # a backslash starts a line
    assert per_character == 0
    assert escaped_chars <= 2 * cap
