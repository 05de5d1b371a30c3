"""Trigger parsing: atoms, contexts, extras, precedence, rendering, errors and limits."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.lexer import MAX_DEPTH, MAX_TRIGGER_BYTES
from executor.triggers.nodes import (
    And,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
    Or,
    atoms,
    parse_warnings,
    per_work,
    render,
    substitute,
    substitute_all,
)
from executor.triggers.parser import LIST_JOIN, parse, parse_trigger_list, parse_triggers

pytestmark = pytest.mark.unit

N = EventName
T = EventType


def atom(text: str) -> Atom:
    """The single atom ``text`` parses to."""
    parsed = parse(text)
    assert isinstance(parsed, Atom)
    return parsed


def a(name: str, type_: str, context: str, extra: str = "") -> Atom:
    return Atom(EventName(name), EventType(type_), context, extra)


# -- atoms ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name in EventName if name is not EventName.DUMMY])
def test_every_event_name_parses_on_a_job(name: EventName) -> None:
    assert atom(f"{name}-job-self") == Atom(name, T.JOB, "self")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("complete-job-self", a("complete", "job", "self")),
        ("done-subjob-self-5", a("done", "subjob", "self", "5")),
        ("complete-work-render-5", a("complete", "work", "render", "5")),
        ("running-host-self-node01", a("running", "host", "self", "node01")),
        ("dummy-time-self-800000000", a("dummy", "time", "self", "800000000")),
        ("dummy-repeat-self-800000000-3600", a("dummy", "repeat", "self", "800000000-3600")),
        ("global", a("dummy", "global", "")),
        ("globaltime-10000", a("dummy", "globaltime", "", "10000")),
        ("globalrepeat-10000-60", a("dummy", "globalrepeat", "", "10000-60")),
    ],
)
def test_every_event_type(text: str, expected: Atom) -> None:
    parsed = atom(text)
    assert parsed == expected
    assert parsed.warnings == ()
    assert render(parsed) == text


@pytest.mark.parametrize(
    ("context", "canonical", "kind"),
    [
        ("self", "self", ContextKind.SELF),
        ("parent", "parent", ContextKind.PARENT),
        ("19294", "19294", ContextKind.JOB_ID),
        ("007", "7", ContextKind.JOB_ID),
        ("9223372036854775807", "9223372036854775807", ContextKind.JOB_ID),
        ("0009223372036854775807", "9223372036854775807", ContextKind.JOB_ID),
        ("render", "render", ContextKind.LABEL),
        ("ribgenLabel", "ribgenLabel", ContextKind.LABEL),
        ("qube0", "qube0", ContextKind.LABEL),
        ("shot_010.comp", "shot_010.comp", ContextKind.LABEL),
        ("Self", "Self", ContextKind.LABEL),
    ],
)
def test_every_context_form(context: str, canonical: str, kind: ContextKind) -> None:
    parsed = atom(f"done-job-{context}")
    assert parsed.context == canonical
    assert parsed.context_kind is kind


@pytest.mark.parametrize(
    ("text", "extra"),
    [
        ("failed-work-self-*", "*"),
        ("done-work-self-*", "*"),
        ("timeout-work-self-*", "*"),
        ("timeout-subjob-self-*", "*"),
        ("running-host-self-*", "*"),
        ("complete-work-self-1-10", "1-10"),
        ("complete-work-self--5", "-5"),
        ("complete-work-self-Initialize", "Initialize"),
        ("complete-work-self-a--b-", "a--b-"),
        ("complete-work-self-frame.0001.exr", "frame.0001.exr"),
        ("complete-subjob-self-0", "0"),
        ("complete-subjob-self-007", "7"),
        ("complete-host-self-render-01.farm", "render-01.farm"),
        ("dummy-repeat-self-0-1", "0-1"),
        ("dummy-repeat-self-007-060", "7-60"),
    ],
)
def test_extras_wildcards_and_hyphens(text: str, extra: str) -> None:
    assert atom(text).extra == extra


def test_atoms_keep_column_and_text_as_written() -> None:
    expr = parse("  complete-job-007 &&\tfailed-job-self-*")
    first, second = atoms(expr)
    assert (first.column, first.text, first.context) == (3, "complete-job-007", "7")
    assert (second.column, second.text, second.extra) == (23, "failed-job-self-*", "")


def test_an_extra_on_a_job_event_is_ignored_with_a_warning() -> None:
    parsed = atom("failed-job-self-*")
    assert parsed == a("failed", "job", "self")
    assert len(parsed.warnings) == 1
    assert "ignored" in parsed.warnings[0]
    assert parse_warnings(parsed) == [f"failed-job-self-* (column 1): {parsed.warnings[0]}"]


def test_a_hyphenated_label_reads_as_label_plus_ignored_extra() -> None:
    parsed = atom("complete-job-my-label")
    assert parsed.context == "my"
    assert "a label cannot contain '-'" in parsed.warnings[0]


def test_time_types_accept_other_names_with_a_warning() -> None:
    parsed = atom("complete-time-self-100")
    assert parsed == a("complete", "time", "self", "100")
    assert "dummy" in parsed.warnings[0]


def test_clean_atoms_have_no_warnings() -> None:
    assert parse_warnings(parse("complete-job-self && done-work-self-*")) == []


# -- operators, precedence, parentheses -------------------------------------------------

A = a("complete", "job", "self")
B = a("complete", "job", "parent")
C = a("done", "job", "7")
D = a("failed", "work", "self", "*")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("complete-job-self || complete-job-parent && done-job-7", Or((A, And((B, C))))),
        ("complete-job-self && complete-job-parent || done-job-7", Or((And((A, B)), C))),
        ("(complete-job-self || complete-job-parent) && done-job-7", And((Or((A, B)), C))),
        ("complete-job-self && (complete-job-parent || done-job-7)", And((A, Or((B, C))))),
        ("complete-job-self && complete-job-parent && done-job-7", And((A, B, C))),
        ("(complete-job-self && complete-job-parent) && done-job-7", And((A, B, C))),
        ("complete-job-self && (complete-job-parent && done-job-7)", And((A, B, C))),
        ("complete-job-self || complete-job-parent || done-job-7", Or((A, B, C))),
        ("((complete-job-self))", A),
        ("complete-job-self&&complete-job-parent||done-job-7", Or((And((A, B)), C))),
        ("complete-job-self\n&&\tcomplete-job-parent", And((A, B))),
        ("(complete-job-self)&&(complete-job-parent)", And((A, B))),
        ("complete-job-self and complete-job-parent", And((A, B))),
        ("complete-job-self AND complete-job-parent OR done-job-7", Or((And((A, B)), C))),
        ("complete-job-self Or complete-job-parent aNd done-job-7", Or((A, And((B, C))))),
        ("complete-job-self and(complete-job-parent or done-job-7)", And((A, Or((B, C))))),
        (
            "complete-job-self || complete-job-parent && done-job-7 || failed-work-self-*",
            Or((A, And((B, C)), D)),
        ),
        (
            "(complete-job-self || (complete-job-parent || done-job-7)) && failed-work-self-*",
            And((Or((A, B, C)), D)),
        ),
    ],
)
def test_precedence_associativity_and_parentheses(text: str, expected: Expr) -> None:
    assert parse(text) == expected


def test_atoms_are_numbered_left_to_right() -> None:
    expr = parse("(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5")
    assert [x.context for x in atoms(expr)] == ["ribgen", "render", "composite"]


def test_the_same_atom_twice_gets_two_slots() -> None:
    assert len(atoms(parse("complete-job-self || complete-job-self"))) == 2


# -- rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("complete-job-self", "complete-job-self"),
        ("(complete-job-self)", "complete-job-self"),
        ("complete-job-self&&complete-job-parent", "complete-job-self && complete-job-parent"),
        ("done-job-007 and done-job-8", "done-job-7 && done-job-8"),
        ("(done-job-1 && done-job-2) || done-job-3", "done-job-1 && done-job-2 || done-job-3"),
        ("done-job-1 && (done-job-2 || done-job-3)", "done-job-1 && (done-job-2 || done-job-3)"),
        ("(done-job-1 || done-job-2) && (done-job-3)", "(done-job-1 || done-job-2) && done-job-3"),
        ("((done-job-1 || done-job-2)) || done-job-3", "done-job-1 || done-job-2 || done-job-3"),
        ("failed-job-self-*", "failed-job-self"),
        ("complete-subjob-self-05", "complete-subjob-self-5"),
        ("globalrepeat-010-5", "globalrepeat-10-5"),
        ("complete-work-self--5 OR global", "complete-work-self--5 || global"),
    ],
)
def test_render_is_canonical_and_round_trips(text: str, canonical: str) -> None:
    expr = parse(text)
    assert render(expr) == canonical
    assert parse(render(expr)) == expr
    assert render(parse(render(expr))) == canonical


def test_render_round_trips_a_deep_mixed_tree() -> None:
    text = "(" * 10 + "done-job-1 || done-job-2 && (done-job-3 || done-job-4)" + ")" * 10
    text = f"{text} && ({text} || complete-work-x-*) || (globaltime-5 && {text})"
    expr = parse(text)
    assert parse(render(expr)) == expr


@pytest.mark.parametrize(
    "build",
    [
        lambda: And((A,)),
        lambda: Or(()),
        lambda: And((A, And((B, C)))),
        lambda: Or((Or((A, B)), C)),
    ],
)
def test_nodes_refuse_shapes_that_would_not_round_trip(build: Callable[[], Expr]) -> None:
    with pytest.raises((ValueError, TypeError)):
        build()


# -- lists -------------------------------------------------------------------------------


def test_a_trigger_list_is_the_or_of_its_items() -> None:
    expr = parse_trigger_list(["complete-job-self", "done-job-7 && complete-job-parent"])
    assert expr == Or((A, And((C, B))))
    assert parse_trigger_list(["complete-job-self"]) == A
    assert parse_trigger_list(["done-job-1 || done-job-2", "done-job-3"]) == parse(
        "done-job-1 || done-job-2 || done-job-3"
    )


def test_parse_triggers_takes_a_string_or_a_list() -> None:
    assert parse_triggers("complete-job-self") == A
    assert parse_triggers(["complete-job-self"]) == A


def test_trigger_list_errors_name_the_item() -> None:
    with pytest.raises(TriggerSyntaxError) as caught:
        parse_trigger_list(["complete-job-self", "complete-jb-self"])
    assert caught.value.item == 1
    assert caught.value.column == 10
    assert str(caught.value).startswith("trigger list item 1: unknown event type 'jb' at column 10")


def test_an_empty_trigger_list_is_an_error() -> None:
    with pytest.raises(TriggerSyntaxError, match="empty trigger list at column 1"):
        parse_trigger_list([])


def test_a_string_is_not_a_trigger_list() -> None:
    with pytest.raises(TypeError):
        parse_trigger_list("complete-job-self")


def test_trigger_list_items_share_one_size_budget() -> None:
    item = " || ".join(["complete-job-self"] * 1000)  # about 21 KB
    with pytest.raises(TriggerSyntaxError, match="trigger list too long") as caught:
        parse_trigger_list([item] * 4)
    assert caught.value.item == 3


# -- errors ------------------------------------------------------------------------------

NAMES = (
    "one of complete, done, submit, killed, blocked, failed, running, waiting, assigned, "
    "removed, modified, timeout, dummy"
)
TYPES = "one of job, subjob, work, host, time, repeat, global, globaltime, globalrepeat"
CONTEXTS = "self, parent, a job id or a label (letters, digits, '_' and '.')"
QTIME = "a Qube time (whole seconds since 2000-01-01 05:00:00 UTC)"
INTERVAL = "'<T>-<seconds>' with a positive interval in seconds"
JOB_IDS = "a job id from 1 to 9223372036854775807"


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "empty trigger at column 1; expected an event such as 'complete-job-self'"),
        ("   \t", 1, "empty trigger at column 1; expected an event such as 'complete-job-self'"),
        (
            "complete-jb-self",
            10,
            f"unknown event type 'jb' at column 10; expected {TYPES}",
        ),
        ("finished-job-self", 1, f"unknown event name 'finished' at column 1; expected {NAMES}"),
        ("unblock-job-1234", 1, f"unknown event name 'unblock' at column 1; expected {NAMES}"),
        (
            "Complete-job-self",
            1,
            "unknown event name 'Complete' at column 1; expected 'complete' (event names are"
            " lower case)",
        ),
        (
            "COMPLETE-job-self",
            1,
            "unknown event name 'COMPLETE' at column 1; expected 'complete' (event names are"
            " lower case)",
        ),
        (
            "complete-JOB-self",
            10,
            "unknown event type 'JOB' at column 10; expected 'job' (event types are lower case)",
        ),
        ("-job-self", 1, f"missing event name at column 1; expected {NAMES}"),
        ("complete", 9, f"missing event type at column 9; expected {TYPES}"),
        ("complete--self", 10, f"missing event type at column 10; expected {TYPES}"),
        ("complete-job", 13, f"missing context at column 13; expected {CONTEXTS}"),
        ("complete-job-", 14, f"missing context at column 14; expected {CONTEXTS}"),
        ("complete-job-ren@der", 14, f"bad context 'ren@der' at column 14; expected {CONTEXTS}"),
        ("complete-job-*", 14, f"bad context '*' at column 14; expected {CONTEXTS}"),
        (
            "complete-job-123456789012345678901",
            14,
            f"job id '123456789012345678901' out of range at column 14; expected {JOB_IDS}",
        ),
        # 2^63 fits 20 digits but no stored id: it reached SQLite as an OverflowError.
        (
            "complete-job-9223372036854775808",
            14,
            f"job id '9223372036854775808' out of range at column 14; expected {JOB_IDS}",
        ),
        (
            "done-job-self && failed-job-18446744073709551615",
            29,
            f"job id '18446744073709551615' out of range at column 29; expected {JOB_IDS}",
        ),
        # No job has id 0 (an event of job 0 is refused): such an atom would wait for ever.
        ("complete-job-0", 14, f"job id '0': no job has id 0 at column 14; expected {JOB_IDS}"),
        ("done-work-000-5", 11, f"job id '000': no job has id 0 at column 11; expected {JOB_IDS}"),
        (
            "complete-work-self",
            19,
            (
                "missing work name at column 19; "
                "expected a work name, '*' or {work} (each work item of this job)"
            ),
        ),
        (
            "complete-work-self-",
            20,
            (
                "missing work name at column 20; "
                "expected a work name, '*' or {work} (each work item of this job)"
            ),
        ),
        (
            "done-subjob-self",
            17,
            "missing subjob id at column 17; expected a subjob id (0, 1, ...) or '*'",
        ),
        (
            "done-subjob-self-x",
            18,
            "bad subjob id 'x' at column 18; expected a subjob id (0, 1, ...) or '*'",
        ),
        (
            "done-subjob-self--5",
            18,
            "bad subjob id '-5' at column 18; expected a subjob id (0, 1, ...) or '*'",
        ),
        (
            "done-subjob-self-99999999999",
            18,
            "bad subjob id '99999999999' at column 18; expected a subjob id (0, 1, ...) or '*'",
        ),
        ("running-host-self", 18, "missing host name at column 18; expected a host name or '*'"),
        ("dummy-time-self", 16, f"missing time at column 16; expected {QTIME}"),
        ("dummy-time-self-soon", 17, f"bad time 'soon' at column 17; expected {QTIME}"),
        ("dummy-time-self--5", 17, f"bad time '-5' at column 17; expected {QTIME}"),
        ("dummy-time-self-1.5", 17, f"bad time '1.5' at column 17; expected {QTIME}"),
        (
            # Past the year 9999: said so, not "bad time" (an independent client's finding).
            "dummy-time-self-999999999999",
            17,
            "time '999999999999' is past the year 9999 at column 17;"
            " expected a Qube time of at most 252455597999 (9999-12-31 23:59:59 UTC)",
        ),
        (
            "dummy-repeat-self-0-99999999999999999999",
            21,
            "repeat interval '99999999999999999999' too long at column 21;"
            " expected a repeat interval of at most 252455597999 seconds",
        ),
        (
            # Its second tick would be past the year 9999 (it was accepted, and `why` for it
            # died with "year 10026 is out of range"; probe 92).
            "dummy-repeat-self-849851933-252455597999",
            29,
            "repeat interval '252455597999' after time 849851933 ticks past the year 9999"
            " at column 29; expected a repeat interval of at most 251605746066 seconds after"
            " that time (T + interval at most 252455597999, 9999-12-31 23:59:59 UTC)",
        ),
        (
            "globalrepeat-252455597000-1000",
            27,
            "repeat interval '1000' after time 252455597000 ticks past the year 9999"
            " at column 27; expected a repeat interval of at most 999 seconds after"
            " that time (T + interval at most 252455597999, 9999-12-31 23:59:59 UTC)",
        ),
        ("globaltime-x", 12, f"bad time 'x' at column 12; expected {QTIME}"),
        ("globaltime", 11, f"missing time at column 11; expected {QTIME}"),
        ("dummy-repeat-self-5", 20, f"missing repeat interval at column 20; expected {INTERVAL}"),
        ("globalrepeat-5-", 16, f"missing repeat interval at column 16; expected {INTERVAL}"),
        (
            "dummy-repeat-self-5-0",
            21,
            f"bad repeat interval '0' at column 21; expected {INTERVAL}",
        ),
        (
            "dummy-repeat-self-5-1-2",
            21,
            f"bad repeat interval '1-2' at column 21; expected {INTERVAL}",
        ),
        ("global-5", 7, "unexpected '-5' after 'global' at column 7; expected 'global' alone"),
        (
            "dummy-job-self",
            7,
            (
                "event type 'job' after 'dummy' at column 7; "
                "expected time or repeat (e.g. 'dummy-time-self-<T>')"
            ),
        ),
        (
            "dummy-globaltime-self-5",
            1,
            (
                "event type 'globaltime' takes no name or context at column 1; "
                "expected 'globaltime-<T>'"
            ),
        ),
        (
            "complete-job-self &&",
            21,
            "unexpected end of trigger at column 21; expected an event or '('",
        ),
        (
            "|| complete-job-self",
            1,
            "unexpected '||' at column 1; expected an event or '('",
        ),
        (
            "complete-job-self && || complete-job-parent",
            22,
            "unexpected '||' at column 22; expected an event or '('",
        ),
        (
            "complete-job-self and",
            22,
            "unexpected end of trigger at column 22; expected an event or '('",
        ),
        ("complete-job-self & complete-job-parent", 19, "'&' alone at column 19; expected '&&'"),
        ("complete-job-self | complete-job-parent", 19, "'|' alone at column 19; expected '||'"),
        ("complete-job-self &&& done-job-1", 21, "'&' alone at column 21; expected '&&'"),
        ("(complete-job-self", 1, "unclosed '(' at column 1; expected a matching ')'"),
        (
            "((complete-job-self) && (done-job-1)",
            1,
            "unclosed '(' at column 1; expected a matching ')'",
        ),
        (
            "complete-job-self)",
            18,
            "unmatched ')' at column 18; expected '&&', '||' or end of trigger",
        ),
        ("()", 2, "unexpected ')' at column 2; expected an event or '('"),
        (
            "complete-job-self complete-job-parent",
            19,
            (
                "unexpected event 'complete-job-parent' at column 19; "
                "expected '&&', '||' or end of trigger"
            ),
        ),
        (
            "complete-job-self (done-job-1)",
            19,
            "unexpected '(' at column 19; expected '&&', '||' or end of trigger",
        ),
        (
            "(complete-job-self done-job-1)",
            20,
            "unexpected event 'done-job-1' at column 20; expected '&&', '||' or ')'",
        ),
        (
            "complete-job-self && complete-wrok-self-1",
            31,
            f"unknown event type 'wrok' at column 31; expected {TYPES}",
        ),
    ],
)
def test_malformed_triggers(text: str, column: int, message: str) -> None:
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(text)
    err = caught.value
    assert str(err) == message
    assert err.column == column
    assert err.expression == text
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("text", "column", "context", "expected"),
    [
        ("dummy-time-parent-100", 12, "parent", "'dummy-time-self-<T>' (the job's own timer"),
        ("dummy-time-987654-100", 12, "987654", "'dummy-time-self-<T>' (the job's own timer"),
        ("dummy-repeat-render-100-60", 14, "render", "'dummy-repeat-self-<T>-<interval>'"),
        ("complete-time-parent-100", 15, "parent", "'complete-time-self-<T>'"),
    ],
)
def test_a_time_atom_of_another_context_than_self_is_refused(
    text: str, column: int, context: str, expected: str
) -> None:
    # It is the owning job's timer, fired in its context: another context would claim
    # another job's clock (and `why` explained it so) while the owner's fired.
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(text)
    err = caught.value
    assert str(err).startswith(f"a {text.split('-')[1]} event's context is 'self', not '{context}'")
    assert expected in str(err)
    assert err.column == column


def test_errors_survive_pickling() -> None:
    with pytest.raises(TriggerSyntaxError) as caught:
        parse_trigger_list(["complete-job-self", "complete-jb-self"])
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 - our own bytes
    assert str(copy) == str(caught.value)
    assert (copy.column, copy.item, copy.reason) == (10, 1, "unknown event type 'jb'")


def test_hand_built_atoms_take_plain_strings_and_are_validated() -> None:
    built = Atom("done", "work", "self", "*")  # type: ignore[arg-type]  # strings on purpose
    assert built.name is EventName.DONE
    assert built.type is EventType.WORK
    assert built == atom("done-work-self-*")
    with pytest.raises(ValueError, match="not a valid EventName"):
        Atom("finished", "job", "self")  # type: ignore[arg-type]  # strings on purpose


def test_pretty_puts_a_caret_under_the_column() -> None:
    with pytest.raises(TriggerSyntaxError) as caught:
        parse("complete-jb-self")
    assert caught.value.pretty() == (
        f"unknown event type 'jb' at column 10; expected {TYPES}\n  complete-jb-self\n           ^"
    )


def test_pretty_aligns_the_caret_past_tabs_and_cuts_long_expressions() -> None:
    with pytest.raises(TriggerSyntaxError) as caught:
        parse("\tcomplete-job-self &")
    lines = caught.value.pretty().splitlines()
    assert lines[1:] == ["   complete-job-self &", "                     ^"]

    long = " || ".join(["complete-job-self"] * 50) + " || complete-jb-self"
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(long)
    _, shown, caret = caught.value.pretty().splitlines()
    assert shown.startswith("  ...")
    assert len(shown) < 100
    assert shown[caret.index("^") :].startswith("jb-self")


# -- limits ------------------------------------------------------------------------------


def test_the_largest_allowed_trigger_parses() -> None:
    unit = "complete-job-self || "
    text = unit * ((MAX_TRIGGER_BYTES - 17) // len(unit)) + "complete-job-self"
    assert len(text) <= MAX_TRIGGER_BYTES
    assert len(atoms(parse(text))) > 3000


def test_the_canonical_form_of_an_accepted_trigger_is_accepted_too() -> None:
    # Written without spaces: 64,978 bytes, under the limit; its canonical form, with one
    # space each side of every operator, 71,816: what `triggers check` prints was refused.
    compact = "||".join(["complete-job-self"] * 3420)
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(compact)
    # The first atom whose canonical text ends past the limit: atom 3121, 21 bytes each.
    assert caught.value.column == 3120 * 19 + 1
    assert str(caught.value) == (
        f"trigger too long in its canonical form at column {3120 * 19 + 1}; expected at most"
        f" {MAX_TRIGGER_BYTES} bytes (UTF-8) written canonically too, with one space each"
        " side of every operator (71816 bytes)"
    )
    assert len(atoms(parse(compact, stored=True))) == 3420  # registered before: still read
    # The largest compact trigger accepted: its canonical form is at the limit, and parses.
    largest = "||".join(["complete-job-self"] * ((MAX_TRIGGER_BYTES + 4) // 21))
    canonical = render(parse(largest))
    assert len(canonical) <= MAX_TRIGGER_BYTES < len(canonical) + 21
    assert parse(canonical) == parse(largest)


def test_a_trigger_list_joined_is_a_trigger_parse_accepts() -> None:
    # The items are stored joined with ' || ': those 4 bytes count toward the limit.
    first = " || ".join(["complete-job-self"] * 1600)  # 33,596 bytes
    second = " || ".join(["complete-job-self"] * 1520)  # 31,916 bytes: 20 to spare, joined
    at_limit = [first, second + " || done-job-1234567"]
    assert len(LIST_JOIN.join(at_limit)) == MAX_TRIGGER_BYTES
    assert parse(LIST_JOIN.join(at_limit)) == parse_trigger_list(at_limit)
    over = [first, second + " || done-job-12345678"]  # 65,533 bytes as items, 65,537 joined
    with pytest.raises(TriggerSyntaxError) as caught:
        parse_trigger_list(over)
    assert (caught.value.item, caught.value.column) == (1, len(second) + 21)
    assert str(caught.value).startswith(
        f"trigger list item 1: trigger list too long at column {len(second) + 21}; expected at"
        f" most {MAX_TRIGGER_BYTES} bytes (UTF-8) in all items together"
    )
    with pytest.raises(TriggerSyntaxError, match="too long"):
        parse(LIST_JOIN.join(over))
    # Nesting: the join adds no parentheses, so 64 levels stay 64.
    deep = "(" * MAX_DEPTH + "complete-job-self" + ")" * MAX_DEPTH
    assert parse(LIST_JOIN.join([deep, "done-job-1"])) == parse_trigger_list([deep, "done-job-1"])


def test_a_one_megabyte_trigger_fails_fast() -> None:
    text = "complete-job-self || " * 50_000
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(text)
    assert caught.value.column == MAX_TRIGGER_BYTES + 1
    assert str(caught.value) == (
        f"trigger too long at column {MAX_TRIGGER_BYTES + 1}; "
        f"expected at most {MAX_TRIGGER_BYTES} bytes (UTF-8)"
    )


def test_the_size_limit_counts_utf8_bytes() -> None:
    text = "complete-work-self-" + "é" * (MAX_TRIGGER_BYTES // 2)
    with pytest.raises(TriggerSyntaxError, match="trigger too long") as caught:
        parse(text)
    assert caught.value.column == 20 + (MAX_TRIGGER_BYTES - 19) // 2


def test_a_hundred_thousand_nested_parentheses_fail_fast() -> None:
    # The size guard answers before any parenthesis is parsed (no RecursionError).
    text = "(" * 100_000 + "complete-job-self" + ")" * 100_000
    with pytest.raises(TriggerSyntaxError, match="trigger too long") as caught:
        parse(text)
    assert caught.value.column == MAX_TRIGGER_BYTES + 1


def test_deep_nesting_within_the_size_limit_fails_at_the_first_parenthesis_too_deep() -> None:
    text = "(" * 30_000 + "complete-job-self" + ")" * 30_000
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(text)
    assert caught.value.column == MAX_DEPTH + 1
    assert str(caught.value) == (
        f"parentheses nested too deep at column {MAX_DEPTH + 1}; "
        f"expected at most {MAX_DEPTH} levels of parentheses"
    )


def test_nesting_up_to_the_limit_parses() -> None:
    text = "(" * MAX_DEPTH + "complete-job-self" + ")" * MAX_DEPTH
    assert parse(text) == A
    mixed = "(complete-job-self && " * MAX_DEPTH + "done-job-7" + ")" * MAX_DEPTH
    assert len(atoms(parse(mixed))) == MAX_DEPTH + 1
    with pytest.raises(TriggerSyntaxError, match="nested too deep"):
        parse("(" + mixed + ")")


# -- the {work} placeholder -------------------------------------------------------------


def test_the_work_placeholder_makes_a_per_work_atom_and_substitutes() -> None:
    expr = parse("complete-work-ribgen-{work} && complete-job-setup")
    first, second = atoms(expr)
    assert first.per_work and not second.per_work
    assert per_work(expr)
    assert render(substitute_all(expr, "7")) == "complete-work-ribgen-7 && complete-job-setup"
    assert substitute(first, "7").text == "complete-work-ribgen-7"
    assert render(parse(render(expr))) == render(expr)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "complete-work-ribgen-{frame}",
            "unknown placeholder '{frame}' at column 22; "
            "expected a work name, '*' or {work} (each work item of this job)",
        ),
        (
            "complete-subjob-self-{work}",
            "the {work} placeholder in a subjob atom at column 22; "
            "expected {work} in a work atom only (it names a work item of this job)",
        ),
        (
            "complete-job-self-{work}",
            "the {work} placeholder in a job atom at column 19; "
            "expected {work} in a work atom only (it names a work item of this job)",
        ),
        (
            "running-host-self-{work}",
            "the {work} placeholder in a host atom at column 19; "
            "expected {work} in a work atom only (it names a work item of this job)",
        ),
    ],
)
def test_a_placeholder_anywhere_else_is_refused_with_what_would_do(text: str, message: str) -> None:
    with pytest.raises(TriggerSyntaxError) as caught:
        parse(text)
    assert str(caught.value) == message


def test_a_control_character_in_a_bad_trigger_is_shown_as_an_escape() -> None:
    # Before, `triggers check`, `explain` and `farm submit` printed the ESC and U+202E raw.
    with pytest.raises(TriggerSyntaxError) as raised:
        parse("done-job-\x1b[2Jx\u202e")

    assert str(raised.value).startswith("bad context '\\x1b[2Jx\\u202e' at column 10;")
    assert raised.value.pretty().splitlines()[1:] == [
        "  done-job-\\x1b[2Jx\\u202e",
        "           ^",
    ]
    assert raised.value.pretty().isprintable() is False  # only its two line breaks
    assert "".join(raised.value.pretty().splitlines()).isprintable()


def test_the_caret_stays_under_its_character_after_an_escape() -> None:
    error = TriggerSyntaxError("unknown event type 'jb'", 7, "job", "\x07done-jb-self")

    shown, caret = error.pretty().splitlines()[1:]
    assert shown[caret.index("^") :] == "jb-self"


def test_a_stored_repeat_ticking_past_the_year_9999_is_still_read() -> None:
    # Registered before T + interval was bounded: its callback is still explained and fired.
    (atom,) = atoms(parse("dummy-repeat-self-849851933-252455597999", stored=True))
    assert atom.extra == "849851933-252455597999"
    assert (
        render(parse("globalrepeat-252455597999-5", stored=True)) == "globalrepeat-252455597999-5"
    )
