"""Checks at registration: warnings, strict refusals, pending labels resolved later, universal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.errors import InvalidRequestError
from executor.runtimes.check import check_source
from executor.triggers.checks import CheckKind, Surroundings, job_checks, trigger_checks
from executor.triggers.evaluate import JobPlace
from executor.triggers.parsed import check_trigger, trigger_warnings
from executor.triggers.parser import parse
from executor.triggers.universal import UniversalConfigError, load_universal
from tests.helpers.trigger_engines import Engines, Recorder, engine_at

pytestmark = pytest.mark.unit

OWNER = JobPlace(15, pid=0, pgrp=3, label="comp")
AROUND = Surroundings(
    OWNER,
    labels={"comp": 15, "ribgen": 12, "render": 14, "shot-v2": 16},
    agendas={15: ["1", "2", "3"], 12: ["1", "2", "3"], 14: ["1", "2"]},
)


def found(trigger: str, where: Surroundings = AROUND) -> list[tuple[CheckKind, str]]:
    return [(check.kind, check.message) for check in trigger_checks(parse(trigger), 1, where)]


def test_a_sound_trigger_passes() -> None:
    assert found("complete-work-ribgen-2 && complete-job-render && done-work-self-*") == []


def test_a_label_typo_names_the_labels_there_and_the_closest() -> None:
    assert found("complete-work-ribgn-*") == [
        (
            CheckKind.UNKNOWN_LABEL,
            "label 'ribgn' names no job in pgrp 3 yet (labels there: comp, render, ribgen, "
            "shot-v2); did you mean 'ribgen'?",
        )
    ]


def test_a_work_name_not_in_the_agenda() -> None:
    assert found("complete-work-render-7") == [
        (CheckKind.UNKNOWN_WORK, "work '7' is not in the agenda of job 14 (1-2)")
    ]


@pytest.mark.parametrize(
    ("agenda", "extra", "item"),
    [
        (["Initialize", "render", "cleanup"], "0", "Initialize"),
        (["Initialize", "render", "cleanup"], "2", "cleanup"),
        (["1", "2"], "0", "1"),  # a frame agenda: frame 0 is no item, index 0 is frame 1
    ],
)
def test_a_work_index_that_is_no_work_name_says_triggers_name_items_by_name(
    agenda: list[str], extra: str, item: str
) -> None:
    # Found by an independent client: Qube's doc says a work event takes a "work id or
    # work name"; cbexec matches names only, and the warning did not say so.
    where = Surroundings(OWNER, labels={"comp": 15}, agendas={15: agenda})
    names = ",".join(agenda) if agenda[0] != "1" else "1-2"
    assert found(f"complete-work-self-{extra}", where) == [
        (
            CheckKind.UNKNOWN_WORK,
            f"work '{extra}' is not in the agenda of job 15 ({names}); work triggers name"
            f" agenda items by name, not by index: item {extra} is named '{item}'",
        )
    ]


@pytest.mark.parametrize(
    ("agenda", "extra", "item"),
    [
        (["1", "2", "3", "4"], "01", "1"),  # the index hint named '2'
        (["1", "2", "3", "4"], "003", "3"),
        (["001", "002"], "1", "001"),
        (["0010", "render"], "10", "0010"),
    ],
)
def test_a_frame_number_padded_otherwise_asks_for_the_frame_it_spells(
    agenda: list[str], extra: str, item: str
) -> None:
    # Found by a probe: '01' on a frame agenda 1-4 was read as index 1, pointing at '2'.
    where = Surroundings(OWNER, labels={"comp": 15}, agendas={15: agenda})
    (problem,) = found(f"complete-work-self-{extra}", where)
    assert problem[0] == CheckKind.UNKNOWN_WORK
    assert problem[1].endswith(
        f"; did you mean '{item}'? (work items are matched by name, exactly)"
    ), problem[1]
    assert "index" not in problem[1]


def test_a_number_past_the_agenda_is_only_not_in_it() -> None:
    where = Surroundings(OWNER, labels={"comp": 15}, agendas={15: ["Initialize", "render"]})
    assert found("complete-work-self-2", where) == [
        (CheckKind.UNKNOWN_WORK, "work '2' is not in the agenda of job 15 (Initialize,render)")
    ]


@pytest.mark.parametrize(
    ("context", "meant"),
    [("SELF", "self"), ("Self", "self"), ("PARENT", "parent"), ("Parent", "parent")],
)
def test_a_label_that_is_self_or_parent_in_other_case_asks_did_you_mean(
    context: str, meant: str
) -> None:
    # Found by an independent client: complete-job-SELF waited for a job labelled SELF,
    # and the warning gave no hint (a label is case sensitive: SELF may be a job's label).
    assert found(f"complete-job-{context}") == [
        (
            CheckKind.UNKNOWN_LABEL,
            f"label '{context}' names no job in pgrp 3 yet (labels there: comp, render, ribgen,"
            f" shot-v2); did you mean '{meant}'? (contexts are lower case; '{context}' is read"
            " as a label)",
        )
    ]
    labelled = Surroundings(OWNER, labels={"comp": 15, context: 17}, agendas={})
    assert found(f"complete-job-{context}", labelled) == []  # a job holds it: meant so


def test_a_trigger_alone_warns_that_self_in_other_case_is_a_label() -> None:
    # What `cbexec triggers check` and a universal callback's load print (no job around).
    assert trigger_warnings("complete-job-SELF && done-work-Parent-1") == [
        "complete-job-SELF: 'SELF' is read as a label, not as 'self' (contexts are lower"
        " case; a label is case sensitive)",
        "done-work-Parent-1: 'Parent' is read as a label, not as 'parent' (contexts are lower"
        " case; a label is case sensitive)",
    ]


def test_the_work_placeholder_checks_every_item_of_the_job_against_the_other_agenda() -> None:
    assert found("complete-work-ribgen-{work}") == []
    assert found("complete-work-render-{work}") == [
        (
            CheckKind.UNKNOWN_WORK,
            "work items 3 of job 15 are not in the agenda of job 14 (1-2): "
            "for them {work} never matches",
        )
    ]


def test_an_unknown_agenda_is_not_checked() -> None:
    assert found("complete-work-77-9") == []


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ("done-job-parent", "job 15 has no parent (pid 0): 'parent' names no job"),
        (
            "global",
            "nothing fires 'global' on its own; use globaltime-<T> or globalrepeat-<T>-<seconds>",
        ),
    ],
)
def test_atoms_that_can_never_happen(trigger: str, message: str) -> None:
    assert found(trigger) == [(CheckKind.NEVER_HAPPENS, message)]


def test_an_event_the_scheduler_does_not_publish() -> None:
    declared = Surroundings(OWNER, AROUND.labels, AROUND.agendas, frozenset({"complete", "failed"}))
    assert found("done-job-render && failed-work-self-*", declared) == []
    assert found("running-job-render", declared) == [
        (
            CheckKind.NEVER_HAPPENS,
            "the scheduler publishes complete, failed: no 'running-job' event will come",
        )
    ]
    per_type = Surroundings(OWNER, AROUND.labels, AROUND.agendas, frozenset({"running-job"}))
    assert found("running-job-render", per_type) == []
    assert [kind for kind, _ in found("running-work-self-*", per_type)] == [CheckKind.NEVER_HAPPENS]


def test_the_declared_events_are_named_shortly() -> None:
    # The embedded farm declares 17 NAME-TYPE entries; listed one by one they hid the point.
    farm = frozenset(
        {f"{n}-{t}" for n in ("complete", "running") for t in ("job", "work")} | {"submit-job"}
    )
    declared = Surroundings(OWNER, AROUND.labels, AROUND.agendas, farm)
    assert found("timeout-work-self-*", declared) == [
        (
            CheckKind.NEVER_HAPPENS,
            "the scheduler publishes complete, running (job, work), submit-job: "
            "no 'timeout-work' event will come",
        )
    ]


def test_an_extra_on_a_job_atom_is_reported_as_the_parser_warned() -> None:
    assert found("failed-job-self-*") == [
        (
            CheckKind.PARSE_WARNING,
            "job events take no extra: '-*' is ignored (a label cannot contain '-')",
        )
    ]


def test_a_label_with_a_hyphen_is_split_by_the_grammar() -> None:
    kinds = [kind for kind, _ in found("complete-job-shot-v2")]
    assert CheckKind.LABEL_SPLIT in kinds
    (check,) = job_checks(JobPlace(16, pgrp=3, label="shot-v2"))
    assert check.kind is CheckKind.LABEL_SPLIT
    assert check.message.startswith("label 'shot-v2' holds '-', which splits an atom")


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("ünï", "a label in a trigger is ASCII letters, digits, '_' and '.'"),
        ("a b", "a label in a trigger is ASCII letters, digits, '_' and '.'"),
        ("a(b)", "a label in a trigger is ASCII letters, digits, '_' and '.'"),
        ("123", "complete-job-123 reads as a job id, not this label"),
        ("self", "complete-job-self reads as 'self', not this label"),
        ("parent", "complete-job-parent reads as 'parent', not this label"),
    ],
)
def test_a_label_no_trigger_can_name_is_reported(label: str, why: str) -> None:
    # Found by an independent client: only '-' was reported, and these registered silently.
    (check,) = job_checks(JobPlace(16, pgrp=3, label=label))
    assert check.kind is CheckKind.LABEL_UNNAMEABLE
    assert check.message == f"label {label!r}: no trigger can name this job by its label ({why})"


def test_a_label_a_trigger_can_name_is_not_reported() -> None:
    for label in ("shot_v2", "comp.final", "A1", ""):
        assert job_checks(JobPlace(16, pgrp=3, label=label)) == []


# -- at registration -------------------------------------------------------------------------


def typo_job(**extra: Any) -> dict[str, Any]:
    return {
        "id": 15,
        "pgrp": 3,
        "label": "comp",
        "callbacks": [
            {"triggers": "complete-work-ribgn-*", "language": "qube", "code": "unblock-self"}
        ],
        **extra,
    }


def test_registration_warns_and_strict_refuses(tmp_path: Path) -> None:
    engine = engine_at(tmp_path, Recorder())
    engine.register_job({"id": 12, "pgrp": 3, "label": "ribgen"})
    with pytest.raises(InvalidRequestError, match=r"job 15 \(strict\): callback 1 complete-work"):
        engine.register_job(typo_job(), strict=True)
    assert engine._store.job(15) is None  # refused: nothing was written

    (warning,) = engine.register_job(typo_job()).checks
    assert (warning.kind, warning.callback_id, warning.slot) == (CheckKind.UNKNOWN_LABEL, 1, 0)
    assert engine.explain(15).callbacks[0].checks == (warning,)


def test_a_label_registered_later_resolves_the_pending_check(tmp_path: Path) -> None:
    engine = engine_at(tmp_path, Recorder(), clock=lambda: 1_800_000_000.0)
    engine.register_job(typo_job())
    engine.register_job({"id": 17, "pgrp": 3, "label": "ribgn"})  # the job it meant, late

    (check,) = engine.explain(15).callbacks[0].checks
    assert check.resolved.startswith("label 'ribgn' names job 17 since ")
    assert engine.explain(15).callbacks[0].atoms[0].job_id == 17


def test_a_universal_callbacks_checks_warn_and_never_refuse_a_strict_job(tmp_path: Path) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "callbacks.conf").write_text("cascade.qcb = done-job-parent\n")
    (conf / "cascade.qcb").write_text("kill-self")
    engine = engine_at(tmp_path, Recorder(), universal_dirs=[conf])
    assert engine.reload_universal() == []

    registration = engine.register_job({"id": 4, "callbacks": []}, strict=True)

    (check,) = registration.checks
    assert check.universal and check.kind is CheckKind.NEVER_HAPPENS


def test_a_level_submit_atom_is_not_an_event_that_never_comes(tmp_path: Path) -> None:
    # Found by probe 42: for level mode the job's registration is its submission, so a
    # scheduler that publishes no submit event still fires it; strict refused the job.
    engine = engine_at(tmp_path, Recorder())
    level = [
        {"triggers": t, "language": "qube", "code": "mail-status", "mode": "level"}
        for t in ("submit-job-self", "complete-job-self && submit-job-self")
    ]
    edge = {"triggers": "submit-job-self", "language": "qube", "code": "mail-status"}
    published = frozenset({"complete", "failed", "killed"})

    registration = engine.register_job({"id": 30, "callbacks": [*level, edge]}, published=published)

    assert [(c.callback_id, c.kind, c.atom) for c in registration.checks] == [
        (3, CheckKind.NEVER_HAPPENS, "submit-job-self")  # the edge one waits for the event
    ]
    assert [f.callback.callback_id for f in registration.fired] == [1]
    strict = engine.register_job({"id": 31, "callbacks": level}, strict=True, published=published)
    assert strict.checks == []


# -- universal callbacks at load -------------------------------------------------------------


def test_callbacks_conf_takes_a_mode_and_reports_its_triggers_checks(tmp_path: Path) -> None:
    (tmp_path / "callbacks.conf").write_text(
        "late.qcb [level] = complete-job-parent\nold.qcb = failed-job-self-*\n"
    )
    (tmp_path / "late.qcb").write_text("unblock-self")
    (tmp_path / "old.qcb").write_text("mail-status")

    late, old = load_universal([tmp_path], check_trigger, warn=trigger_warnings)

    assert (late.mode, late.source, late.warnings) == ("level", str(tmp_path / "late.qcb"), ())
    assert old.mode == "edge"
    assert old.warnings == (
        f"{tmp_path}/callbacks.conf:2: failed-job-self-*: job events take no extra: '-*' is "
        "ignored (a label cannot contain '-')",
    )


def test_an_unknown_option_in_callbacks_conf_is_an_error_with_file_and_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "callbacks.conf").write_text("late.qcb [levle] = complete-job-self\n")
    (tmp_path / "late.qcb").write_text("unblock-self")
    with pytest.raises(UniversalConfigError) as caught:
        load_universal([tmp_path], check_trigger)
    assert caught.value.errors == [
        f"{tmp_path}/callbacks.conf:1: unknown option 'levle'; expected edge or level, policy=NAME or shadow"
    ]


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (
            "policy=admin, policy=pipe",
            "options 'policy=admin' and 'policy=pipe' contradict each other: a line has one policy",
        ),
        ("policy=admin policy=admin", "option 'policy=admin' is given twice"),
        (
            "level, edge",
            "options 'level' and 'edge' contradict each other: a line has one trigger mode "
            "(level or edge)",
        ),
        ("level, shadow, level", "option 'level' is given twice"),
        ("level, edge, shadow, shadow", "options 'level' and 'edge' contradict each other"),
        ("shadow,shadow", "option 'shadow' is given twice"),
    ],
)
def test_an_option_given_twice_in_callbacks_conf_is_an_error_not_the_last_one_taken(
    tmp_path: Path, options: str, refusal: str
) -> None:
    # Before, these loaded and the last one won: the line ran under 'pipe' (or 'admin'
    # with the two swapped), whichever policy its admin meant.
    (tmp_path / "callbacks.conf").write_text(
        f"ok.qcb = complete-job-self\nlate.qcb [{options}] = complete-job-self\n"
    )
    (tmp_path / "ok.qcb").write_text("unblock-self")
    (tmp_path / "late.qcb").write_text("unblock-self")
    with pytest.raises(UniversalConfigError) as caught:
        load_universal([tmp_path], check_trigger)
    (error,) = caught.value.errors
    assert error.startswith(f"{tmp_path}/callbacks.conf:2: {refusal}"), error


def test_a_callback_file_linking_out_of_its_directory_is_refused_unread(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:*:20228:0:99999:7:::\n")
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "s.qcb").symlink_to(secret)
    (callbacks / "real.qcb").write_text("unblock-self")
    (callbacks / "inside.qcb").symlink_to(callbacks / "real.qcb")  # within: fine
    (callbacks / "callbacks.conf").write_text(
        "s.qcb = complete-job-self\ninside.qcb = complete-job-self\n"
    )
    with pytest.raises(UniversalConfigError) as caught:
        load_universal([callbacks], check_trigger, check_code=check_source)
    assert caught.value.errors == [
        f"{callbacks}/callbacks.conf:1: s.qcb leads outside {callbacks} (a symbolic link?): not read"
    ]


def test_an_error_quotes_only_a_short_printable_excerpt_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "long.qcb").write_text(
        "\n".join(["x" * 500 + "\x1b[2J", *(f"secret-line-{n}" for n in range(10))])
    )
    (tmp_path / "callbacks.conf").write_text("long.qcb = complete-job-self\n")
    with pytest.raises(UniversalConfigError) as caught:
        load_universal([tmp_path], check_trigger, check_code=check_source)
    (error,) = caught.value.errors
    assert "x" * 41 not in error and "\x1b" not in error
    assert "'" + "x" * 40 + "'..., 'secret-line-0', 'secret-line-1' and 8 more" in error
    assert "secret-line-2" not in error


async def test_a_level_universal_callback_latches_what_happened_when_a_job_registers(
    tmp_path: Path, engines: Engines
) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "callbacks.conf").write_text("late.qcb [level] = complete-job-parent\n")
    (conf / "late.qcb").write_text("unblock-self")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    engine.reload_universal()
    engine.register_job({"id": 9, "status": "complete"})

    registration = engine.register_job({"id": 10, "pid": 9})

    assert [f.callback.universal for f in registration.fired] == [True]
    await recorder.ran(1)
    assert recorder.codes == ["unblock-self"]
