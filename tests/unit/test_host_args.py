"""Malformed qb calls are InvalidArgument naming the function, in the callback's language."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from executor.errors import HostCallError
from executor.host_api import HostApi
from executor.host_args import PERL, PYTHON, parse_job_id, parse_subjob_target
from executor.supervisor_link import JOB_VERBS, SUBJOB_VERBS, WORK_VERBS
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = pytest.mark.unit

STATUS_READERS = ["jobstatus", "workstatus", "subjobstatus"]
# Every spelling of every verb a callback can call.
VERBS = sorted(
    {
        *JOB_VERBS,
        "retire",
        *(f"work{v}" for v in (*WORK_VERBS, "retire")),
        *(f"{v}work" for v in (*WORK_VERBS, "retire")),
        *(f"subjob{v}" for v in SUBJOB_VERBS),
    }
)


@pytest.fixture
def sup() -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor() as store:
        store.submit([{"name": "a", "user": "alice", "agenda": ["1", "2"]}])
        store.submit([{"name": "b", "user": "alice"}])
        yield store


def host_for(sup: ReferenceSupervisor, language: str = "python") -> HostApi:
    return HostApi(ReferencePort(sup), invocation_for(sup.job(1), "", language=language))


async def refusal(host: HostApi, fn: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(HostCallError) as err:
        await host.call(fn, list(args), kwargs)
    assert err.value.kind == "InvalidArgument", err.value.message
    return err.value.message


@pytest.mark.parametrize("fn", [*STATUS_READERS, *VERBS])
async def test_a_call_without_its_argument_names_the_function(
    sup: ReferenceSupervisor, fn: str
) -> None:
    host = host_for(sup)
    message = await refusal(host, fn)
    assert message.startswith(f"qb.{fn} takes one "), message
    assert message.endswith("it was given none")
    if fn in VERBS:  # a verb opens lists: an empty one names nothing
        assert (await refusal(host, fn, [])).endswith("it was given none")
    assert "takes no named arguments, and was given bogus" in await refusal(host, fn, "1", bogus=1)
    assert all(not a.ok for a in host.actions)


@pytest.mark.parametrize("fn", STATUS_READERS)
async def test_a_status_takes_exactly_one_target(sup: ReferenceSupervisor, fn: str) -> None:
    message = await refusal(host_for(sup), fn, "1", "2")
    assert message.startswith(f"qb.{fn} takes one ") and message.endswith(
        "it was given 2 arguments"
    )


async def test_perl_callbacks_read_perl_words(sup: ReferenceSupervisor) -> None:
    host = host_for(sup, "perl")
    assert await refusal(host, "jobstatus") == (
        "qb::jobstatus takes one job id, as in qb::jobstatus(12); it was given none"
    )
    assert await refusal(host, "unblock", None) == "expected a job id, got undef"
    assert await refusal(host, "unblock", "Inf") == "expected a job id, got Inf"
    assert await refusal(host, "unblock", {"a": 1}) == "expected a job id, got {'a' => 1}"
    assert await refusal(host_for(sup), "unblock", None) == "expected a job id, got None"


async def test_a_shadow_run_refuses_a_malformed_call_too(sup: ReferenceSupervisor) -> None:
    invocation = dataclasses.replace(invocation_for(sup.job(1), "", language="python"), shadow=True)
    shadow = HostApi(ReferencePort(sup), invocation)
    assert (await refusal(shadow, "unblock")).startswith("qb.unblock takes one or more job ids")


@pytest.mark.parametrize(
    "value", ["\uff12", "\u00b2", "+2", "2.0", "0x2", "1_0", "\u0662", "", " ", True, 2.0]
)
def test_job_ids_are_ascii_digits_only(value: Any) -> None:
    with pytest.raises(HostCallError, match="expected a job id") as err:
        parse_job_id(value, PYTHON)
    assert err.value.kind == "InvalidArgument"


@pytest.mark.parametrize(
    ("value", "python", "perl"),
    [
        ("abc", "abc", "abc"),
        ("", "''", "''"),  # Perl's false: one argument, not none
        ("\x02", "'\\x02'", "'\\x02'"),
        ("1\x1b[2J", "'1\\x1b[2J'", "'1\\x1b[2J'"),
        (None, "None", "undef"),
        ([None], "[None]", "[undef]"),
        (["name", None, 2], "['name', None, 2]", "['name', undef, 2]"),
        ({"a": [None]}, "{'a': [None]}", "{'a' => [undef]}"),
        (2.5, "2.5", "2.5"),
    ],
)
def test_a_refused_value_is_shown_as_the_callbacks_language_writes_it(
    value: Any, python: str, perl: str
) -> None:
    # A control character went into the message raw (it acts on a terminal); Perl's
    # fields => [undef] read "an array reference" where Python's names [None].
    assert (PYTHON.value(value), PERL.value(value)) == (python, perl)


def test_job_ids_may_have_spaces_around_them() -> None:
    assert parse_job_id(" 12\n", PERL) == parse_job_id(12, PYTHON) == 12


@pytest.mark.parametrize(
    "target", ["1.\u00b2", "1.--5", "1.\uff10", "\uff11.0", "1.+0", "4.-0", "4.-1"]
)
def test_instance_ids_are_ascii_digits_only(target: str) -> None:
    # '1.²' and '1.--5' reached int() and ended as an executor error, not the callback's;
    # '4.-0' acted on instance 0 and '4.-1' was NoSuchJob (probe 178): '-0' is not 0.
    with pytest.raises(HostCallError) as err:
        parse_subjob_target(target, PYTHON)
    assert err.value.kind == "InvalidArgument"


async def test_full_width_digits_are_not_a_job(sup: ReferenceSupervisor) -> None:
    host = host_for(sup)
    assert await refusal(host, "unblock", "\uff12") == "expected a job id, got \uff12"
    assert (
        await refusal(host, "subjobunblock", "1.\u00b2")
        == "expected '<jobid>.<subid>', got 1.\u00b2"
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "given"),
    [
        (["-id", 1, "-id", 2], {}, "-id 1, -id 2"),
        (["-id", 1, "-pgrp", 1], {}, "-id 1, -pgrp 1"),
        ([1, 2], {}, "job id 1, job id 2"),
        (["-pgrp", 1], {"id": 2}, "-pgrp 1, id=2"),
        ([], {"id": 1, "pgrp": 1}, "id=1, pgrp=1"),
    ],
)
async def test_jobinfo_refuses_a_second_selector(
    sup: ReferenceSupervisor, args: list[Any], kwargs: dict[str, Any], given: str
) -> None:
    message = await refusal(host_for(sup), "jobinfo", *args, **kwargs)
    assert message == (
        "qb.jobinfo takes one job (-id, id= or a job id) or one pgrp (-pgrp, pgrp=), "
        f"or neither for the callback's own job; it was given {given}"
    )


@pytest.mark.parametrize(("language", "call"), [("python", "qb.jobinfo"), ("perl", "qb::jobinfo")])
async def test_jobinfo_refuses_an_unknown_name_saying_what_it_takes(
    sup: ReferenceSupervisor, language: str, call: str
) -> None:
    host = host_for(sup, language)
    assert await refusal(host, "jobinfo", foo=1) == (
        f"{call}: unknown argument foo; expected id, pgrp, status, agenda, subjobs, callbacks, "
        "fields"
    )
    assert await refusal(host, "jobinfo", "-foo", 1) == (
        f"{call}: unknown flag -foo; expected -id, -pgrp, -status, -agenda, -subjobs, "
        "-callbacks, -fields"
    )


async def test_jobinfo_forms_that_name_one_selector_still_work(sup: ReferenceSupervisor) -> None:
    host = host_for(sup)
    for args, kwargs in (
        (["-id", 2, "-callbacks"], {}),
        (["-callbacks", "-callbacks", 2], {}),
        ([], {"id": 2, "callbacks": True, "fields": ["name"]}),
    ):
        (job,) = await host.call("jobinfo", args, kwargs)
        assert job["id"] == 2 and "callbacks" in job
    assert [j["id"] for j in await host.call("jobinfo", ["-pgrp", 1], {})] == [1]
    assert [j["id"] for j in await host.call("jobinfo", [], {})] == [1]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([], {"id": 1, "fields": ["callbacks"]}),
        (["-id", 1, "-fields", ["callbacks"]], {}),
        ([1], {"fields": ["callbacks"], "callbacks": False}),
    ],
)
async def test_jobinfo_fields_callbacks_adds_the_callbacks_as_qube_documents(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    # fields=['callbacks'] was accepted and ignored: a Qube callback asking for its
    # callbacks the documented way silently got none.
    with ReferenceSupervisor() as store:
        callback = {"triggers": "complete-job-self", "language": "python", "code": "pass"}
        store.submit([{"name": "a", "user": "alice", "callbacks": [callback]}])
        (job,) = await host_for(store).call("jobinfo", args, kwargs)
    assert sorted(job) == ["callbacks", "id"]
    assert [c["triggers"] for c in job["callbacks"]] == ["complete-job-self"]


async def test_jobinfo_fields_keeps_only_the_named_keys_and_id(sup: ReferenceSupervisor) -> None:
    sup.submit([{"name": "c", "user": "alice", "pgrp": 1, "shot": "sh010"}])
    host = host_for(sup)
    (job,) = await host.call("jobinfo", [], {"fields": ["name", "status"]})
    assert job == {"id": 1, "name": "a", "status": "pending"}
    # A name a job lacks is left out: what one job of a pgrp lacks another may have.
    jobs = await host.call("jobinfo", ["-pgrp", 1], {"fields": ["shot", "nosuchfield"]})
    assert jobs == [{"id": 1}, {"id": 3, "shot": "sh010"}]
    (job,) = await host.call("jobinfo", [1], {"fields": [], "callbacks": True})
    assert sorted(job) == ["callbacks", "id"]


@pytest.mark.parametrize(
    ("language", "call", "example", "a_list"),
    [
        ("python", "qb.jobinfo", "fields=['name', 'status']", "['name', 1]"),
        ("perl", "qb::jobinfo", "fields => ['name', 'status']", "['name', 1]"),
    ],
)
async def test_jobinfo_fields_must_be_a_list_of_names(
    sup: ReferenceSupervisor, language: str, call: str, example: str, a_list: str
) -> None:
    host = host_for(sup, language)
    expected = f"{call}: fields takes a list of field names, as in {example}; it was given "
    assert await refusal(host, "jobinfo", fields="callbacks") == expected + "callbacks"
    assert await refusal(host, "jobinfo", fields=["name", 1]) == expected + a_list
    assert await refusal(host, "jobinfo", "-fields") == f"{call}: -fields needs a value"
    assert await refusal(host, "jobinfo", "-fields", ["name"], fields=["id"]) == (
        f"{call} takes one list of fields; it was given 2"
    )


async def test_jobinfo_of_job_or_pgrp_0_is_no_job_not_the_callbacks_own(
    sup: ReferenceSupervisor,
) -> None:
    # A parentless job's pid is 0: qb.jobinfo('-id', job['pid']) answered the job itself,
    # so a callback acting on "its parent" acted on its own job.
    host = host_for(sup)
    for args, kwargs in ((["-id", 0], {}), ([0], {}), ([], {"id": "0"}), (["-pgrp", 0], {})):
        assert await host.call("jobinfo", args, kwargs) == [], (args, kwargs)
    message = await refusal(host, "jobinfo", "-pgrp", 2**63)
    assert message == f"pgrp {2**63} is out of range (0 to {2**63 - 1})"  # not "job id"


async def test_jobinfo_takes_qube_clients_agenda_and_subjobs(sup: ReferenceSupervisor) -> None:
    # A Qube callback's qb.jobinfo(id=n, agenda=True) was refused as an unknown argument.
    host = host_for(sup)
    for args, kwargs in (
        ([], {"id": 1, "agenda": True}),
        ([], {"id": 1, "subjobs": True, "agenda": True}),
        (["-id", 1, "-agenda"], {}),
        (["-agenda", "-subjobs", 1], {}),
    ):
        (job,) = await host.call("jobinfo", args, kwargs)
        assert [w["name"] for w in job["agenda"]] == ["1", "2"], (args, kwargs)
        assert "subjobs" in job
    # Set false, as the client leaves them out unless asked.
    (job,) = await host.call("jobinfo", [1], {"agenda": False, "subjobs": 0})
    assert "agenda" not in job and "subjobs" not in job and job["name"] == "a"


async def test_jobinfo_status_keeps_only_jobs_in_that_status(sup: ReferenceSupervisor) -> None:
    sup.submit([{"name": "c", "user": "alice", "pgrp": 1, "status": "blocked"}])
    host = host_for(sup)

    async def names(*args: Any, **kwargs: Any) -> list[str]:
        return [job["name"] for job in await host.call("jobinfo", list(args), kwargs)]

    assert await names("-pgrp", 1, status="blocked") == ["c"]
    assert await names("-pgrp", 1, "-status", ["pending", "blocked"]) == ["a", "c"]
    assert await names(pgrp=1, status="pending, blocked") == ["a", "c"]
    assert await names(pgrp=1, status="running") == []
    assert await names(id=1, status="pending") == ["a"]
    assert await names(status="running") == []  # the own job, not running
    # The filter reads the status even when the fields leave it out.
    assert await host.call("jobinfo", [], {"status": "pending", "fields": ["name"]}) == [
        {"id": 1, "name": "a"}
    ]


@pytest.mark.parametrize(
    ("language", "call", "example", "value", "shown"),
    [
        ("python", "qb.jobinfo", "status='running'", "runing", "runing"),
        ("python", "qb.jobinfo", "status='running'", [], "[]"),
        ("perl", "qb::jobinfo", "status => 'running'", 1, "1"),
    ],
)
async def test_jobinfo_status_must_name_job_statuses(
    sup: ReferenceSupervisor, language: str, call: str, example: str, value: Any, shown: str
) -> None:
    host = host_for(sup, language)
    assert await refusal(host, "jobinfo", status=value) == (
        f"{call}: status takes a job status or a list of them (badlogin, blocked, complete, "
        "dying, exiting, failed, killed, pending, registering, running, suspended, unknown, "
        f"waiting), as in {example}; it was given {shown}"
    )
    assert await refusal(host, "jobinfo", "-status") == f"{call}: -status needs a value"
    assert await refusal(host, "jobinfo", "-status", "failed", status="killed") == (
        f"{call} takes one status filter; it was given 2"
    )


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_jobinfo_of_an_unknown_job_is_no_job_as_for_an_unknown_pgrp(
    sup: ReferenceSupervisor, language: str
) -> None:
    # Qube's client answers an unknown id with an empty list; '-id' raised NoSuchJob
    # while '-pgrp' of the same number gave [].
    host = host_for(sup, language)
    for args, kwargs in ((["-id", 999], {}), ([999], {}), ([], {"id": 999}), (["-pgrp", 999], {})):
        assert await host.call("jobinfo", args, kwargs) == [], (args, kwargs)
    with pytest.raises(HostCallError) as err:
        await host.call("jobstatus", [999], {})
    assert err.value.kind == "NoSuchJob"  # what needs the job still says it has none


@pytest.mark.parametrize(
    ("fn", "targets"),
    [
        ("unblock", [[[1, 2]]]),
        ("unblock", [1, [2, [2]]]),
        ("workunblock", [[("1:1", "1:2")]]),
        ("subjobunblock", [["1.0", ["1.1"]]]),
    ],
)
@pytest.mark.parametrize(
    ("language", "nested"),
    [("python", "a list inside a list"), ("perl", "an array reference inside an array reference")],
)
async def test_a_list_inside_a_list_is_refused_not_opened(
    sup: ReferenceSupervisor, fn: str, targets: list[Any], language: str, nested: str
) -> None:
    """qb.unblock([[1, 2]]) acted on jobs 1 and 2: one list of targets is opened, not more."""
    host = host_for(sup, language)
    message = await refusal(host, fn, *targets)
    call = f"qb.{fn}" if language == "python" else f"qb::{fn}"
    assert message.startswith(f"{call} takes one or more "), message
    assert message.endswith(f"; it was given {nested}"), message
    assert [action.ok for action in host.actions] == [False]  # nothing was acted on


@pytest.mark.parametrize(
    ("fn", "shape"),
    [
        ("jobstatus", "one job id, as in {call}(12)"),
        ("workstatus", "one work item '<jobid>:<workname>', as in {call}('12:5')"),
        ("subjobstatus", "one instance '<jobid>.<subid>', as in {call}('12.0')"),
    ],
)
@pytest.mark.parametrize(
    ("language", "value", "given"),
    [
        ("python", ["1:1", "1.2"], "a list: ['1:1', '1.2']"),
        ("python", ("1:1",), "a list: ('1:1',)"),
        ("python", {"1:1": 1}, "a dict: {'1:1': 1}"),
        ("perl", ["1:1", "1.2"], "an array reference: ['1:1', '1.2']"),
        ("perl", {"1:1": 1}, "a hash reference: {'1:1' => 1}"),
    ],
)
async def test_a_status_given_a_list_says_it_takes_one_and_shows_the_list(
    sup: ReferenceSupervisor, fn: str, shape: str, language: str, value: Any, given: str
) -> None:
    # qb.workstatus(['1:1', '1:2']) said "expected a job id, got ['1": the list's repr
    # cut at its first ':'.
    call = f"qb.{fn}" if language == "python" else f"qb::{fn}"
    message = await refusal(host_for(sup, language), fn, value)
    assert message == f"{call} takes {shape.format(call=call)}; it was given {given}"


@pytest.mark.parametrize(
    ("fn", "target", "expected"),
    [
        ("workunblock", {"1:1": 1}, "expected '<jobid>:<workname>', got {'1:1': 1}"),
        ("workunblock", 12, "expected '<jobid>:<workname>', got 12"),
        ("subjobunblock", {"1.1": 1}, "expected '<jobid>.<subid>', got {'1.1': 1}"),
    ],
)
async def test_a_target_that_is_no_text_is_shown_whole(
    sup: ReferenceSupervisor, fn: str, target: Any, expected: str
) -> None:
    # A dict target was read as its repr and cut at the first ':' or '.': "got {'1".
    assert await refusal(host_for(sup), fn, target) == expected


@pytest.mark.parametrize(
    ("language", "args", "expected"),
    [
        (
            "python",
            ["id", 1],
            "qb.jobinfo: 'id' is not a job id; a flag is written with its dash, as in "
            "qb.jobinfo('-id', 12), or by name, as in qb.jobinfo(id=12)",
        ),
        (
            "python",
            ["pgrp", 1],
            "qb.jobinfo: 'pgrp' is not a job id; a flag is written with its dash, as in "
            "qb.jobinfo('-pgrp', 12), or by name, as in qb.jobinfo(pgrp=12)",
        ),
        (
            "python",
            ["callbacks"],
            "qb.jobinfo: 'callbacks' is not a job id; a flag is written with its dash, as in "
            "qb.jobinfo('-callbacks'), or by name, as in qb.jobinfo(callbacks=True)",
        ),
        (
            "python",
            [1, "fields", ["name"]],
            "qb.jobinfo: 'fields' is not a job id; a flag is written with its dash, as in "
            "qb.jobinfo('-fields', ['name']), or by name, as in qb.jobinfo(fields=['name'])",
        ),
        # qb.pm sends `id => 1` as the flag: only a name with no value after it comes here.
        (
            "perl",
            [1, "id"],
            "qb::jobinfo: 'id' is not a job id; it takes a value, as in "
            "qb::jobinfo(id => 12) or qb::jobinfo('-id', 12)",
        ),
        (
            "perl",
            ["status"],
            "qb::jobinfo: 'status' is not a job id; it takes a value, as in "
            "qb::jobinfo(status => 'running') or qb::jobinfo('-status', 'running')",
        ),
        (
            "perl",
            ["subjobs"],
            "qb::jobinfo: 'subjobs' is not a job id; it takes a value, as in "
            "qb::jobinfo(subjobs => 1), or is a flag with its dash, as in "
            "qb::jobinfo('-subjobs')",
        ),
    ],
)
async def test_jobinfo_given_a_flags_name_without_its_dash_says_so(
    sup: ReferenceSupervisor, language: str, args: list[Any], expected: str
) -> None:
    # qb.jobinfo('id', 1) said "it was given job id id, job id 1".
    assert await refusal(host_for(sup, language), "jobinfo", *args) == expected


async def test_subjobstatus_of_a_missing_instance_says_the_job_exists(
    sup: ReferenceSupervisor,
) -> None:
    # It said "job 3 has no instance '3.5'", which read as if job 3 were missing.
    (job,) = sup.submit([{"name": "c", "user": "alice", "agenda": ["1"], "cpus": 2}])
    host = host_for(sup)
    assert await host.call("subjobstatus", [f"{job['id']}.1"], {}) == "pending"
    for target, expected in (
        (f"{job['id']}.5", f"job {job['id']} has no instance 5 (the job exists, with 2 instances)"),
        ("2.3", "job 2 has no instance 3 (the job exists, with 1 instance)"),
    ):
        with pytest.raises(HostCallError) as err:
            await host.call("subjobstatus", [target], {})
        # An instance is named as a job (Qube's '<jobid>.<subid>'), as the subjob verbs say.
        assert (err.value.kind, err.value.message) == ("NoSuchJob", expected)
    with pytest.raises(HostCallError) as err:
        await host.call("subjobstatus", ["99.0"], {})
    assert (err.value.kind, err.value.message) == ("NoSuchJob", "no job 99")  # no job at all


@pytest.mark.parametrize(
    ("language", "target", "shown"),
    [("python", 2.5, "2.5"), ("python", None, "None"), ("perl", None, "undef")],
)
async def test_an_instance_target_that_is_no_text_is_refused_whole(
    sup: ReferenceSupervisor, language: str, target: Any, shown: str
) -> None:
    # 2.5 was read as its text, '2.5': instance 5 of job 2.
    message = await refusal(host_for(sup, language), "subjobstatus", target)
    assert message == f"expected '<jobid>.<subid>', got {shown}"
