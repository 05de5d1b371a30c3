"""Argument parsing of `cbexec runs` / `cbexec run` (pure functions; the commands run in service tests)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from executor.cli import build_parser
from executor.cli.runs import item_agreed, parse_event, parse_since

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", NOW - 45),
        ("30m", NOW - 1800),
        ("1h", NOW - 3600),
        ("2d", NOW - 172_800),
        ("1w", NOW - 604_800),
        ("1.5h", NOW - 5400),
        ("1699990000", 1_699_990_000.0),
        ("2023-11-14T22:00:00+00:00", datetime(2023, 11, 14, 22, tzinfo=UTC).timestamp()),
    ],
)
def test_since_accepts_durations_iso_and_unix(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(expected)


def test_since_iso_without_offset_is_local_time() -> None:
    assert parse_since("2023-11-14T22:00:00", NOW) == datetime(2023, 11, 14, 22).timestamp()


@pytest.mark.parametrize("text", ["yesterday", "1y", "-5m", "", "9" * 310, "9" * 310 + "s"])
def test_since_refuses_the_rest(text: str) -> None:
    # 310 digits were read as inf and sent on, refused by the executor (probe 179).
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, NOW)


def test_event_splits_into_name_type_context_extra() -> None:
    assert parse_event("complete-job-self") == {
        "name": "complete",
        "type": "job",
        "context": "self",
        "extra": "",
    }
    assert parse_event("complete-work-render-1-10") == {
        "name": "complete",
        "type": "work",
        "context": "render",
        "extra": "1-10",
    }
    assert parse_event("done-job") == {"name": "done", "type": "job", "context": "", "extra": ""}
    with pytest.raises(ValueError, match="name-type"):
        parse_event("complete")


@pytest.mark.parametrize(
    ("event", "work", "subjob", "agreed"),
    [
        # Probe 144: qb.event()['extra'] said '' (work) or '-1' (subjob) beside the item.
        ("complete-work-self", "5", -1, ("5", "5", -1)),
        ("complete-subjob-self", "", 0, ("0", "", 0)),
        # The event's extra is the item when the options leave it out.
        ("complete-work-self-5,6", "", -1, ("5,6", "5,6", -1)),
        ("complete-subjob-self-3", "", -1, ("3", "", 3)),
        ("complete-work-self-5", "5", 2, ("5", "5", 2)),  # a work event's instance too
        ("complete-subjob-self-3", "", 3, ("3", "", 3)),
        # Left as given: none, a wildcard, what the executor refuses, another type.
        ("complete-work-self", "", -1, ("", "", -1)),
        ("complete-work-self-*", "5", -1, ("*", "5", -1)),
        ("complete-subjob-self-*", "", 1, ("*", "", 1)),
        ("complete-subjob-self-x", "", -1, ("x", "", -1)),
        ("complete-job-self", "5", 1, ("", "5", 1)),
    ],
)
def test_run_event_and_item_options_name_one_item(
    event: str, work: str, subjob: int, agreed: tuple[str, str, int]
) -> None:
    given = parse_event(event)
    after, work, subjob = item_agreed(given, work, subjob)
    assert after is not None
    assert (after["extra"], work, subjob) == agreed
    assert {k: v for k, v in after.items() if k != "extra"} == {
        k: v for k, v in given.items() if k != "extra"
    }


@pytest.mark.parametrize(
    ("event", "work", "subjob", "said"),
    [
        ("complete-work-self-5", "6", -1, "--work '6' names another work item than --event's '5'"),
        ("complete-subjob-self-2", "", 3, "--subjob 3 names another instance than --event's '2'"),
    ],
)
def test_run_event_and_item_options_naming_two_items_are_refused(
    event: str, work: str, subjob: int, said: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(said) + "$"):
        item_agreed(parse_event(event), work, subjob)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "show", "-x1796581591"], "-x1796581591"),  # Execute takes such an id
        (["runs", "show", "--timeout", "5", "-x1"], "-x1"),
        (["runs", "show", "-x1", "--timeout", "5"], "-x1"),
        (["runs", "show", "--", "--address"], "--address"),  # an option's name: after --
        (["runs", "show", "abcd"], "abcd"),
    ],
)
def test_runs_show_takes_an_id_that_starts_with_a_dash(argv: list[str], expected: str) -> None:
    assert build_parser().parse_args(argv).invocation_id == expected


def test_runs_show_without_an_id_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["runs", "show"])
    assert exited.value.code == 2
    assert "the following arguments are required: ID" in capsys.readouterr().err
