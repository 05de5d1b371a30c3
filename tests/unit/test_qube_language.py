"""The qube code strings against the real reference supervisor, called in-process (no gRPC)."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from executor.errors import HostCallError
from executor.host_api import CUT_SHORT, HostApi
from executor.model import Event, Outcome, RunResult
from executor.runtimes import qube_codes
from executor.runtimes.mail import Mailer, MailSettings
from executor.runtimes.qube import MAIL_CODES, MAIL_WAIT_SECONDS, QubeInterpreter
from executor.runtimes.qube_codes import CODE_STRINGS, JOB_CODES, split_codes, validate
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.supervisor_port import LIMITS, ReferencePort, invocation_for
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.unit


@pytest.fixture
def supervisor() -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor() as store:
        yield store


@pytest.fixture
def mail_dir(tmp_path: Path) -> Path:
    return tmp_path / "mail"


@pytest.fixture
def interpreter(mail_dir: Path) -> QubeInterpreter:
    return QubeInterpreter(MailSettings(directory=mail_dir))


def submit(supervisor: ReferenceSupervisor, **fields: Any) -> int:
    job = {
        "name": "comp",
        "user": "alice",
        "status": "blocked",
        "cpus": 2,
        "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 4)],
        **fields,
    }
    (stored,) = supervisor.submit([job])
    return int(stored["id"])


async def run(
    interpreter: QubeInterpreter,
    supervisor: ReferenceSupervisor,
    job_id: int,
    code: str,
    **context: Any,
) -> RunResult:
    invocation = invocation_for(supervisor.job(job_id), code, **context)
    return await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))


def work_statuses(supervisor: ReferenceSupervisor, job_id: int) -> dict[str, str]:
    return {w["name"]: w["status"] for w in supervisor.job(job_id)["agenda"]}


def instance_statuses(supervisor: ReferenceSupervisor, job_id: int) -> dict[int, str]:
    return {s["id"]: s["status"] for s in supervisor.job(job_id)["subjobs"]}


def mails(mail_dir: Path) -> list[EmailMessage]:
    found = []
    for path in sorted((mail_dir / "new").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


# -- the table of code strings ----------------------------------------------------------


def test_code_strings_cover_the_documented_table() -> None:
    assert len(CODE_STRINGS) == len(set(CODE_STRINGS)) == 30
    for code in (
        "unblock-self",
        "fail-work-self",
        "resume-subjob-self",
        "unblock-subjob-self-single",
        "mail-report-status",
    ):
        assert code in CODE_STRINGS


def test_every_mail_code_string_has_its_template() -> None:
    assert tuple(MAIL_CODES) == qube_codes.MAIL_CODES


def test_validate_lists_the_valid_code_strings() -> None:
    assert validate("unblock-self") is None
    assert validate(" unblock-self ;\n mail-status\n") is None
    problem = validate("unblock-selfish")
    assert problem is not None
    assert "'unblock-selfish'" in problem
    assert all(code in problem for code in CODE_STRINGS)
    assert validate("  \n ; ") is not None


def test_split_codes_strips_separates_and_skips_comments() -> None:
    code = "  # site default\nUnblock-Self ;mail-status;\n\n  kill-self  "
    assert split_codes(code) == ["unblock-self", "mail-status", "kill-self"]


@pytest.mark.parametrize(
    ("code", "parts"),
    [
        # Probe 99: a ';' inside a comment started a new code string.
        ("# NOTE: do not fail-self here; fail-self\nunblock-self\n", ["unblock-self"]),
        ("# disabled: fail-self; kill-self\nunblock-self", ["unblock-self"]),
        ("# mails the job status; see the wiki\nmail-status", ["mail-status"]),
        # A '#' after code on a line comments out the rest of that line, and only that.
        ("unblock-self # why; kill-self\nmail-status", ["unblock-self", "mail-status"]),
        ("unblock-self;# kill-self\r\nmail-status", ["unblock-self", "mail-status"]),
        ("   # indented; fail-self", []),
    ],
)
def test_a_comment_runs_to_the_end_of_its_line(code: str, parts: list[str]) -> None:
    assert split_codes(code) == parts


def test_a_comment_holding_a_semicolon_is_not_checked_as_code() -> None:
    assert validate("# mails the job status; see the wiki\nmail-status") is None


def test_a_callback_that_is_only_a_comment_is_valid_and_a_blank_one_is_not() -> None:
    # Probe 144: a callback commented out was REJECTED at each firing, and warned of so.
    assert validate("# not yet; fail-self") is None
    assert validate("  # disabled\n# unblock-self\n") is None
    for blank in ("", "  \n ; ", ";"):
        problem = validate(blank)
        assert problem is not None
        assert problem.startswith("the qube callback has no code string")


async def test_a_callback_that_is_only_a_comment_succeeds_and_does_nothing(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "# not yet; fail-self")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert (result.failure, result.actions, result.stdout) == (None, (), "")
    assert supervisor.job(job_id)["status"] == "blocked"


@pytest.mark.parametrize(
    "code",
    [
        "unbloc\u212a-self",  # KELVIN SIGN, which str.lower() makes a 'k'
        "\u212aill-self",
        "unblock-self\u00a0",  # NO-BREAK SPACE, which str.strip() takes away
        "\u2003unblock-self",
    ],
)
def test_a_non_ascii_look_alike_is_an_unknown_code_string(code: str) -> None:
    assert split_codes(code) == [code]
    problem = validate(code)
    assert problem is not None
    assert problem.startswith(f"unknown qube code string {code!a}")


def test_code_strings_match_ascii_letters_in_any_case() -> None:
    assert split_codes("UNBLOCK-SELF;\tMail-Status ") == ["unblock-self", "mail-status"]


# -- job level ----------------------------------------------------------------------------


async def test_unblock_self_unblocks_the_own_job(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "  unblock-self\n")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert supervisor.job(job_id)["status"] == "pending"
    assert result.stdout == f"unblock-self: job {job_id} blocked -> pending\n"
    (action,) = result.actions
    assert (action.verb, action.target, action.ok) == ("unblock", str(job_id), True)
    assert result.usage.wall_seconds > 0


@pytest.mark.parametrize("code", list(JOB_CODES))
async def test_every_job_code_calls_its_verb_on_the_own_job(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, code: str
) -> None:
    job_id = submit(supervisor, status="pending", agenda=["1"])
    supervisor.start_work(job_id, "1")  # running: most verbs apply

    result = await run(interpreter, supervisor, job_id, code)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (action,) = result.actions
    assert (action.verb, action.target, action.ok) == (JOB_CODES[code], str(job_id), True)
    assert result.stdout.startswith(f"{code}: ")


async def test_verb_that_does_not_apply_succeeds_and_says_so(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor, status="pending")

    result = await run(interpreter, supervisor, job_id, "unblock-self")

    assert result.outcome is Outcome.SUCCEEDED
    assert supervisor.job(job_id)["status"] == "pending"
    assert result.stdout.startswith("unblock-self: ")


async def test_several_code_strings_run_in_order(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-self;block-self\nunblock-self")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert [a.verb for a in result.actions] == ["unblock", "block", "unblock"]
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "unblock-self",
        "block-self",
        "unblock-self",
    ]
    assert supervisor.job(job_id)["status"] == "pending"


async def test_unknown_code_string_is_rejected_before_anything_runs(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-self\nunblock-everything")

    assert result.outcome is Outcome.REJECTED
    assert result.failure is not None
    assert "'unblock-everything'" in result.failure.message
    assert "unblock-subjob-self-single" in result.failure.message
    assert result.actions == ()
    assert supervisor.job(job_id)["status"] == "blocked"


async def test_permission_denied_fails_with_the_supervisors_message(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-self", user="mallory")

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.exception_type == "PermissionDenied"
    assert result.failure.message.startswith("unblock-self: PermissionDenied: ")
    assert "mallory" in result.failure.message
    assert supervisor.job(job_id)["status"] == "blocked"
    (action,) = result.actions
    assert not action.ok


async def test_a_failing_step_stops_the_run(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    # The job is gone by the time the callback runs (removed after the event).
    invocation = invocation_for(supervisor.job(job_id), "unblock-self; kill-self")
    supervisor.job_action("remove", job_id, "alice")
    result = await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))
    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.exception_type == "NoSuchJob"
    assert len(result.actions) == 1  # kill-self never ran
    assert result.stdout == ""


# -- work level ---------------------------------------------------------------------------


async def test_unblock_work_self_unblocks_exactly_the_triggering_item(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor, status="pending")

    result = await run(interpreter, supervisor, job_id, "unblock-work-self", work_name="2")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert work_statuses(supervisor, job_id) == {"1": "blocked", "2": "pending", "3": "blocked"}
    (action,) = result.actions
    assert (action.verb, action.target) == ("workunblock", f"{job_id}:2")


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ("5,6", "fail-work-self"),  # probe 99: failed frames 5 and 6, not the item
        (" 5", "complete-work-self"),  # completed frame 5
        ("5, 6", "complete-work-self"),
        ("3-4,9", "fail-work-self"),  # NoSuchWork: no item '9'
        ("7-9", "block-work-self"),  # a chunk's name, not frames 7 to 9
    ],
)
async def test_a_work_code_string_acts_on_the_item_of_exactly_that_name(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, item: str, code: str
) -> None:
    names = [item, "3", "4", "5", "6", "7", "8", "9"]
    agenda = [{"name": name, "status": "pending"} for name in names]
    job_id = submit(supervisor, status="pending", agenda=agenda)

    result = await run(interpreter, supervisor, job_id, code, work_name=item)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    statuses = work_statuses(supervisor, job_id)
    assert statuses.pop(item) != "pending"
    assert set(statuses.values()) == {"pending"}  # no other item was touched
    verb = code.removesuffix("-work-self")
    (action,) = result.actions
    assert (action.verb, action.target) == ("work" + verb, f"{job_id}:{item}")


async def test_a_work_code_string_whose_item_is_gone_is_no_such_work(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor, status="pending")

    result = await run(interpreter, supervisor, job_id, "fail-work-self", work_name="1,2")

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.message == (
        f"fail-work-self: NoSuchWork: job {job_id} has no work item '1,2'"
    )
    assert work_statuses(supervisor, job_id) == {"1": "blocked", "2": "blocked", "3": "blocked"}


async def test_work_code_without_a_work_event_fails_at_its_turn(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    # Probe 144: it was checked before any code string ran, so unblock-self never did.
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-self\nfail-work-self\nblock-self")

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.message == (
        "fail-work-self acts on the work item that fired the callback, and no work event did"
    )
    assert result.failure.exception_type == "QubeCodeError"
    assert [a.verb for a in result.actions] == ["unblock"]  # what ran before it is done
    assert supervisor.job(job_id)["status"] == "pending"  # and block-self never ran
    assert result.stdout.startswith("unblock-self: ")
    assert len(result.stdout.splitlines()) == 1


async def test_fail_work_self_fails_the_running_item(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor, status="pending", agenda=["1", "2"])
    supervisor.start_work(job_id, "1")

    result = await run(interpreter, supervisor, job_id, "fail-work-self", work_name="1")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert work_statuses(supervisor, job_id)["1"] == "failed"


# -- instance level -----------------------------------------------------------------------


async def test_unblock_subjob_self_without_an_instance_unblocks_all(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-subjob-self")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert instance_statuses(supervisor, job_id) == {0: "pending", 1: "pending"}
    (action,) = result.actions
    assert (action.verb, action.target) == ("subjobunblock", str(job_id))


async def test_unblock_subjob_self_single_unblocks_only_the_triggering_instance(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-subjob-self-single", subjob_id=1)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert instance_statuses(supervisor, job_id) == {0: "blocked", 1: "pending"}
    assert result.stdout == f"unblock-subjob-self-single: instance {job_id}.1 blocked -> pending\n"


@pytest.mark.parametrize("code", ["unblock-subjob-self-single", "kill-subjob-self"])
async def test_instance_code_without_an_instance_event_fails(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, code: str
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, code)

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.message == (
        f"{code} acts on the instance that fired the callback, and the event named none"
    )
    assert result.actions == ()
    assert instance_statuses(supervisor, job_id) == {0: "blocked", 1: "blocked"}


async def test_instance_code_without_an_instance_event_fails_after_what_ran_before(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "unblock-self; kill-subjob-self")

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.message.startswith("kill-subjob-self acts on the instance")
    assert [a.verb for a in result.actions] == ["unblock"]
    assert supervisor.job(job_id)["status"] == "pending"


async def test_block_subjob_self_acts_on_the_triggering_instance(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor, status="pending")

    result = await run(interpreter, supervisor, job_id, "block-subjob-self", subjob_id=0)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert instance_statuses(supervisor, job_id) == {0: "blocked", 1: "pending"}


# -- mail ---------------------------------------------------------------------------------


async def test_mail_status_mails_the_current_status(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    job_id = submit(supervisor, mailaddress="lead@studio.example, bob")

    result = await run(interpreter, supervisor, job_id, "unblock-self\nmail-status")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["To"] == "lead@studio.example, bob@localhost"
    assert mail["Subject"] == f"[qube] job {job_id} (comp) is pending"  # read after the unblock
    assert "done-job-self" in mail.get_content()
    assert [a.verb for a in result.actions] == ["unblock", "jobinfo", "mail"]
    # The sent mail is listed as a shadow run lists the one it would send.
    sent = result.actions[-1]
    assert (sent.target, sent.ok) == ("lead@studio.example, bob@localhost", True)
    assert sent.message.startswith(f"mailed '[qube] job {job_id} (comp) is pending': ")
    assert sent.message.endswith(str(next((mail_dir / "new").iterdir())))
    assert result.stdout.splitlines()[1].startswith("mail-status: mailed the job status (pending)")
    assert str(mail_dir / "new") in result.stdout
    assert list((mail_dir / "tmp").iterdir()) == []


async def test_mail_subjob_status_uses_the_instance(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "mail-subjob-status", subjob_id=1)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["To"] == "alice@localhost"
    assert mail["Subject"] == f"[qube] job {job_id} (comp) instance 1 is blocked"


async def test_mail_subjob_status_without_an_instance_is_a_mail_not_sent(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    # Probe 144: it stopped the whole callback before any code string ran (no mail at
    # all); a mail that cannot be rendered is lost visibly and the code strings go on.
    job_id = submit(supervisor)

    result = await run(
        interpreter, supervisor, job_id, "mail-status; mail-subjob-status; unblock-self"
    )

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.exception_type == "MailError"
    assert result.failure.message == (
        "mail-subjob-status: no instance to mail the status of: the event named none"
    )
    (mail,) = mails(mail_dir)
    assert mail["Subject"] == f"[qube] job {job_id} (comp) is blocked"
    assert supervisor.job(job_id)["status"] == "pending"
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "mail-status",
        "mail-subjob-status",
        "unblock-self",
    ]
    assert lines[1] == (
        "mail-subjob-status: not sent: no instance to mail the status of: the event named none"
    )
    assert [a.verb for a in result.actions] == ["jobinfo", "mail", "unblock"]


@pytest.mark.parametrize("code", ["mail-license-status", "mail-report-status"])
async def test_license_and_report_mails(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path, code: str
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, code)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["X-Qube-Mail"] == code.split("-")[1]
    assert str(job_id) in mail["Subject"]


async def test_mail_uses_site_templates(
    supervisor: ReferenceSupervisor, tmp_path: Path, mail_dir: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "job.mail").write_text(
        "Subject: $JOB_NAME -> $JOB_STATUS ($$5)\n\nHi $USER, see $NOT_A_VARIABLE.\n"
    )
    interpreter = QubeInterpreter(MailSettings(directory=mail_dir, templates_dir=templates))
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "mail-status")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["Subject"] == "comp -> blocked ($5)"
    assert mail.get_content() == "Hi alice, see $NOT_A_VARIABLE.\n"


async def test_undeliverable_mail_fails(supervisor: ReferenceSupervisor, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    interpreter = QubeInterpreter(MailSettings(directory=blocker))
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "mail-status")

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.exception_type == "MailError"
    assert result.failure.message.startswith("mail-status: could not store the mail")
    assert [(a.verb, a.ok) for a in result.actions] == [("jobinfo", True), ("mail", False)]
    assert result.actions[1].message.startswith("MailError: could not store the mail")


@pytest.mark.parametrize(
    ("code", "language"),
    [(code, "qube") for code in MAIL_CODES] + [("", "mail")],
)
async def test_a_mail_of_a_job_the_supervisor_no_longer_has_fails_with_no_such_job(
    interpreter: QubeInterpreter,
    supervisor: ReferenceSupervisor,
    mail_dir: Path,
    code: str,
    language: str,
) -> None:
    # An earlier callback of the same event removed the job (failed-job-self: qb.remove);
    # jobinfo reads no job then, as Qube's client does, and nothing can be mailed.
    job_id = submit(supervisor, mailaddress="lead@studio.example")
    invocation = invocation_for(supervisor.job(job_id), code, language=language, subjob_id=0)
    supervisor.job_action("remove", job_id, "alice")

    result = await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))

    named = code or "mail"
    assert result.outcome is Outcome.FAILED
    assert result.failure is not None
    assert result.failure.exception_type == "NoSuchJob"
    assert result.failure.message == f"{named}: NoSuchJob: the supervisor has no job {job_id}"
    assert [(a.verb, a.ok) for a in result.actions] == [("jobinfo", True)]
    assert mails(mail_dir) == []


@pytest.mark.parametrize(
    ("context", "subject_end", "summary"),
    [
        ({}, "is blocked", "mail: mailed the job status (blocked)"),
        ({"work_name": "2"}, "work 2 is blocked", "mail: mailed the work status (blocked)"),
        ({"subjob_id": 1}, "instance 1 is blocked", "mail: mailed the subjob status (blocked)"),
    ],
)
async def test_the_mail_language_mails_the_status_of_what_fired_it(
    interpreter: QubeInterpreter,
    supervisor: ReferenceSupervisor,
    mail_dir: Path,
    context: dict[str, Any],
    subject_end: str,
    summary: str,
) -> None:
    # Qube submitters write {'triggers': 'done-job-self', 'language': 'mail'}: no code.
    job_id = submit(supervisor, mailaddress="lead@studio.example")

    result = await run(interpreter, supervisor, job_id, "", language="mail", **context)

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["To"] == "lead@studio.example"
    assert mail["Subject"].endswith(subject_end), mail["Subject"]
    assert result.stdout.startswith(summary), result.stdout
    assert [(a.verb, a.target, a.ok) for a in result.actions] == [
        ("jobinfo", "", True),
        ("mail", "lead@studio.example", True),
    ]


@pytest.mark.parametrize(
    ("event", "context", "subject_end"),
    [
        (Event("failed", "job", 0), {}, "is failed"),
        (Event("failed", "job", 0), {"code": "mail-status", "language": "qube"}, "is failed"),
        (Event("complete", "work", 0, work_name="2"), {"work_name": "2"}, "work 2 is complete"),
        (Event("killed", "subjob", 0, subjob_id=1), {"subjob_id": 1}, "instance 1 is killed"),
        # Not about this job's status: as read now.
        (Event("failed", "job", 999), {}, "is blocked"),
        (Event("submit", "job", 0), {}, "is blocked"),
        (Event("complete", "work", 0, work_name="3"), {"work_name": "2"}, "work 2 is blocked"),
    ],
)
async def test_a_mail_tells_the_status_its_event_fired_with(
    interpreter: QubeInterpreter,
    supervisor: ReferenceSupervisor,
    mail_dir: Path,
    event: Event,
    context: dict[str, Any],
    subject_end: str,
) -> None:
    # The job is blocked now (an earlier callback of the event requeued it, say).
    job_id = submit(supervisor)
    if event.job_id == 0:
        event = dataclasses.replace(event, job_id=job_id)
    options = {"language": "mail", "code": "", **context}
    code = options.pop("code")
    invocation = invocation_for(supervisor.job(job_id), code, **options)
    invocation = dataclasses.replace(invocation, event=event)

    result = await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["Subject"].endswith(subject_end), mail["Subject"]
    assert f"({subject_end.rsplit(maxsplit=1)[-1]})" in result.stdout


async def test_a_mail_after_the_callbacks_own_verb_tells_what_it_left(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    job_id = submit(supervisor)
    invocation = invocation_for(supervisor.job(job_id), "unblock-self; mail-status")
    invocation = dataclasses.replace(invocation, event=Event("blocked", "job", job_id))

    result = await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    (mail,) = mails(mail_dir)
    assert mail["Subject"] == f"[qube] job {job_id} (comp) is pending"


async def test_the_mail_language_ignores_its_code(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "kill-self", language="mail")

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert len(mails(mail_dir)) == 1
    assert supervisor.job(job_id)["status"] == "blocked"


class SlowPort(ReferencePort):
    """A supervisor that takes its time over each job verb."""

    async def job_action(self, verb: str, job_id: int, **kwargs: Any) -> Any:
        await asyncio.sleep(0.2)
        return await super().job_action(verb, job_id, **kwargs)


async def test_a_qube_callback_keeps_to_its_wall_limit(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)
    limits = dataclasses.replace(LIMITS, wall_seconds=0.3)
    invocation = invocation_for(
        supervisor.job(job_id), "block-self\nunblock-self\nblock-self", limits=limits
    )

    result = await interpreter.run(invocation, HostApi(SlowPort(supervisor), invocation))

    assert result.outcome is Outcome.WALL_TIMEOUT
    assert result.failure is not None
    assert result.failure.message == "wall time limit of 0.3 s reached"
    # What ran stays done and is said; the call the limit cut short is listed too.
    assert [(a.verb, a.ok) for a in result.actions] == [("block", True), ("unblock", False)]
    assert result.actions[1].message == CUT_SHORT
    assert result.stdout.startswith("block-self: ")


class HeldUpPort(ReferencePort):
    """The executor held up (its process stopped) while the supervisor answers a verb."""

    async def job_action(self, verb: str, job_id: int, **kwargs: Any) -> Any:
        time.sleep(1.5)  # noqa: ASYNC251 - the point: the event loop held past the deadline
        await asyncio.sleep(0.01)  # the answer is read when the executor wakes
        return await super().job_action(verb, job_id, **kwargs)


async def test_a_qube_callback_is_not_timed_out_by_the_executors_own_hold(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)
    limits = dataclasses.replace(LIMITS, wall_seconds=0.5)
    invocation = invocation_for(supervisor.job(job_id), "block-self", limits=limits)

    result = await interpreter.run(invocation, HostApi(HeldUpPort(supervisor), invocation))

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert [(a.verb, a.ok) for a in result.actions] == [("block", True)]


async def test_a_qube_callbacks_output_keeps_to_its_cap(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor
) -> None:
    job_id = submit(supervisor)
    limits = dataclasses.replace(LIMITS, output_bytes=40)
    invocation = invocation_for(supervisor.job(job_id), "block-self\n" * 10, limits=limits)

    result = await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))

    assert result.outcome is Outcome.SUCCEEDED, result.failure
    assert len(result.stdout.encode()) == 40 and result.stdout_truncated


async def test_a_qube_callback_has_at_most_64_code_strings(
    interpreter: QubeInterpreter, supervisor: ReferenceSupervisor, mail_dir: Path
) -> None:
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "mail-status;" * 65)

    assert result.outcome is Outcome.REJECTED
    assert result.failure is not None
    assert "has 65 code strings; at most 64 run in one callback" in result.failure.message
    assert not mail_dir.exists() or mails(mail_dir) == []


@pytest.mark.parametrize(
    ("fn", "targets", "acted"),
    [
        ("block", ["JOB", 99999], "block"),
        ("workunblock", ["JOB:1", "JOB:77"], "workunblock"),
    ],
)
async def test_a_list_verb_refused_part_way_says_what_it_did_before(
    supervisor: ReferenceSupervisor, fn: str, targets: list[object], acted: str
) -> None:
    job_id = submit(supervisor, status="pending")
    args = [t.replace("JOB", str(job_id)) if isinstance(t, str) else t for t in targets]
    args = [job_id if t == "JOB" else t for t in args]
    invocation = invocation_for(supervisor.job(job_id), "", language="python")
    host = HostApi(ReferencePort(supervisor), invocation)

    with pytest.raises(HostCallError) as refused:
        await host.call(fn, [args], {})

    assert refused.value.kind in ("NoSuchJob", "NoSuchWork")
    assert "the 1 target(s) before it were acted on (1 changed:" in refused.value.message
    (record,) = host.actions
    assert record.verb == acted and not record.ok
    assert "1 changed" in record.message


@pytest.mark.parametrize(
    "fields",
    [
        {"user": "eve\nBcc: all@studio.example"},
        {"mailaddress": "=?utf-8?q?a=0Ab?="},
        {"mailaddress": "ok@example.com\r\nBcc: evil2@example.com"},
    ],
)
async def test_a_job_field_that_breaks_a_mail_header_fails_the_run_not_the_executor(
    interpreter: QubeInterpreter,
    supervisor: ReferenceSupervisor,
    mail_dir: Path,
    fields: dict[str, str],
) -> None:
    job_id = submit(supervisor, status="blocked")
    # Set behind the farm's back: it refuses such a user at submission, but a supervisor
    # may send any job, and the mail must fail the run, not the executor.
    for name, value in fields.items():
        supervisor._db.execute(f"UPDATE jobs SET {name} = ? WHERE id = ?", (value, job_id))  # noqa: S608 - the test's own columns

    result = await run(interpreter, supervisor, job_id, "unblock-self\nmail-status")

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None and result.failure.exception_type == "MailError"
    assert [a.verb for a in result.actions][:1] == ["unblock"]  # what ran before is listed
    assert mails(mail_dir) == []  # nothing sent


class SlowRelay(Mailer):
    """An SMTP relay that takes its time over every mail."""

    def __init__(self, settings: MailSettings) -> None:
        super().__init__(settings)
        self.go = threading.Event()
        self.sent: list[str] = []

    def deliver(self, message: EmailMessage) -> str:
        self.go.wait(30)
        self.sent.append(str(message["Message-ID"]))
        return "relay"


async def test_a_mail_the_wall_limit_interrupts_stays_queued_and_goes_out(
    supervisor: ReferenceSupervisor, tmp_path: Path
) -> None:
    relay = SlowRelay(MailSettings(directory=tmp_path))
    interpreter = QubeInterpreter(mailer=relay)
    job_id = submit(supervisor)
    limits = dataclasses.replace(LIMITS, wall_seconds=0.2)
    invocation = invocation_for(supervisor.job(job_id), "mail-status", limits=limits)

    result = await interpreter.run(invocation, HostApi(ReferencePort(supervisor), invocation))

    assert result.outcome is Outcome.WALL_TIMEOUT
    assert [(a.verb, a.ok) for a in result.actions] == [("jobinfo", True), ("mail", True)]
    message_id = f"<cbexec.{invocation.invocation_id}.1@localhost>"
    assert result.actions[1].message == (
        f"queued for the maildir: not sent when the run ended; its outcome is logged under "
        f"{message_id}"
    )
    relay.go.set()  # the queue sends it all the same, once the relay answers
    assert await eventually(lambda: relay.sent == [message_id])


async def test_a_mail_not_sent_within_the_wait_is_listed_queued_and_the_run_goes_on(
    supervisor: ReferenceSupervisor, tmp_path: Path
) -> None:
    relay = SlowRelay(MailSettings(directory=tmp_path))
    interpreter = QubeInterpreter(mailer=relay)
    job_id = submit(supervisor, status="blocked")

    result = await run(interpreter, supervisor, job_id, "mail-status; unblock-self")

    assert result.outcome is Outcome.SUCCEEDED
    assert [(a.verb, a.ok) for a in result.actions] == [
        ("jobinfo", True),
        ("mail", True),
        ("unblock", True),
    ]
    assert result.actions[1].message.startswith(
        f"queued for the maildir: not sent within {MAIL_WAIT_SECONDS:g} s; its outcome is logged"
    )
    assert result.usage.wall_seconds < MAIL_WAIT_SECONDS + 2
    # Not "mailed": it has not gone yet (probe 103 F4).
    assert result.stdout.splitlines()[0].startswith(
        "mail-status: the job status (blocked) of job "
    ), result.stdout
    assert "queued for the maildir: not sent within" in result.stdout.splitlines()[0]
    # The relay has taken longer than the wait over that mail: the next run does not wait.
    again = await run(interpreter, supervisor, job_id, "mail-status")
    assert again.outcome is Outcome.SUCCEEDED
    assert again.actions[-1].message.startswith(
        "queued for the maildir: not sent yet, the relay is slow over earlier mails; its "
        "outcome is logged under <cbexec."
    )
    assert again.usage.wall_seconds < 1
    relay.go.set()
    assert await eventually(lambda: len(relay.sent) == 2)


async def test_a_full_mail_queue_fails_the_mail_at_once(
    supervisor: ReferenceSupervisor, tmp_path: Path
) -> None:
    relay = SlowRelay(MailSettings(directory=tmp_path))
    interpreter = QubeInterpreter(mailer=relay)
    interpreter.mail_queue.max_queued = 0  # every thread busy or not: nothing may wait
    job_id = submit(supervisor)

    result = await run(interpreter, supervisor, job_id, "mail-status")

    assert result.outcome is Outcome.FAILED
    assert [(a.verb, a.ok) for a in result.actions] == [("jobinfo", True), ("mail", False)]
    assert "the mail queue is full (0 mails wait for the maildir" in result.actions[1].message
    # Said once (probe 103 F4: "not sent: not sent: the mail queue is full").
    assert result.stdout.startswith("mail-status: not sent: the mail queue is full (0 mails")
    assert relay.sent == []
