"""What the event path refuses up front, and what the answers say when it does.

Bad triggers at SubmitJobs, list-valued triggers, unknown event names, malformed
published_events, the CLI check's warnings, what JournalEntry.work_name holds.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor.api.farm import FarmServicer
from executor.api.triggers import TriggerServicer
from executor.cli.triggers import _check
from executor.model import Event
from executor.triggers import parse, parse_triggers
from executor.triggers.journal import EntryKind
from executor.triggers.lexer import MAX_DEPTH, MAX_TRIGGER_BYTES
from executor.triggers.parser import LIST_JOIN
from supervisor_client import jobdict
from supervisor_client.jobdict import dict_to_struct, job_from_dict, triggers_text
from supervisor_client.qbcallback.v1 import executor_pb2, farm_pb2
from supervisor_client.reference import ReferenceSupervisor
from supervisor_client.reference.farm import Farm
from tests.helpers.servicer_context import Aborted, FakeContext, as_context
from tests.helpers.trigger_engines import Engines, Recorder, job, no_labels

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def context() -> grpc.aio.ServicerContext[Any, Any]:
    return as_context(FakeContext())


# -- SubmitJobs checks triggers with the engine's parser (1) and takes lists (2) --------


@pytest.fixture
def farm() -> Farm:
    return Farm(ReferenceSupervisor(":memory:"))


async def _settled() -> None:
    return None


async def _registered(job_ids: list[int]) -> None:
    return None


def servicer(farm: Farm) -> FarmServicer:
    return FarmServicer(farm, lambda job_id: [], _settled, _registered, no_labels())


async def submit(farm: Farm, jobs: list[dict[str, Any]]) -> farm_pb2.SubmitJobsResponse:
    request = farm_pb2.SubmitJobsRequest(jobs=[dict_to_struct(j) for j in jobs])
    return await servicer(farm).SubmitJobs(request, context())


def bad_callback(triggers: Any) -> dict[str, Any]:
    return {"name": "bad", "callbacks": [{"triggers": triggers, "language": "python", "code": "x"}]}


async def test_a_trigger_that_does_not_parse_refuses_the_whole_submission(farm: Farm) -> None:
    with pytest.raises(Aborted) as refused:
        await submit(farm, [{"name": "ok", "label": "okB"}, bad_callback("complete-jb-self")])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # The job's index, the callback, and the words RegisterJob uses for the same trigger.
    assert refused.value.details.startswith(
        "job 2 of the submission, callback 1: triggers: unknown event type 'jb' at column 10;"
        " expected one of job, subjob, work"
    )
    assert farm.supervisor.job_ids() == []  # nothing stored, no id used
    stored = await submit(farm, [{"name": "next"}])
    assert [j.id for j in stored.jobs] == [1]


async def test_a_list_valued_trigger_is_the_or_of_its_items(farm: Farm) -> None:
    items = ["complete-job-self", "failed-job-self && done-work-self-*"]
    stored = await submit(farm, [bad_callback(items)])
    (callback,) = stored.jobs[0].callbacks
    assert callback.triggers == "complete-job-self || failed-job-self && done-work-self-*"
    assert parse(callback.triggers) == parse_triggers(items)  # what the grammar means by it


A = "complete-job-self"


async def test_a_list_item_valid_alone_is_not_refused_for_the_join(farm: Farm) -> None:
    # The join added a level of parentheses: 64 levels alone were 65 in the list.
    deep = "(" * MAX_DEPTH + A + ")" * MAX_DEPTH
    compact = "||".join([A] * 1500)  # 28,498 bytes, 31,496 in canonical form
    for items in ([deep, A], [deep, f"{A} && done-job-self"], [compact, compact]):
        stored = await submit(farm, [bad_callback(items)])
        (callback,) = stored.jobs[0].callbacks
        parse(callback.triggers)  # RegisterJob takes what the farm stored
        assert parse(callback.triggers) == parse_triggers(items)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            # Each 37,796 bytes: valid alone, 75,596 bytes joined.
            [" || ".join([A] * 1800)] * 2,
            "callback 1: triggers[1]: the items up to this one come to 75596 bytes joined"
            " into the one expression stored (' || ' between each two); a trigger is at most"
            " 65536 bytes (64 KiB)",
        ),
        (
            # 64,600 bytes joined as written (32,298 each), 71,396 in canonical form.
            ["||".join([A] * 1700)] * 2,
            "callback 1: triggers: trigger list item 1: trigger list too long in its"
            " canonical form at column 26981; expected at most 65536 bytes (UTF-8) in all"
            " items together, as written and written canonically, with the 4 bytes of"
            " ' || ' between each two",
        ),
    ],
)
async def test_items_too_long_together_are_refused_naming_the_item(
    farm: Farm, items: list[str], message: str
) -> None:
    with pytest.raises(Aborted) as refused:
        await submit(farm, [bad_callback(items)])
    assert message in refused.value.details
    assert "column 6553" not in refused.value.details  # no column of the joined string
    assert farm.supervisor.job_ids() == []


@pytest.mark.parametrize(
    ("triggers", "message"),
    [
        (
            ["complete-job-self", "failed-jb-self"],
            "job 1 of the submission, callback 1: triggers[1]: unknown event type 'jb' at column 8",
        ),
        ([], "callback 1: triggers is required"),
        (["complete-job-self", 5], "callback 1: triggers[1] must be a string, got 5"),
        (["complete-job-self", " "], "callback 1: triggers[1] is empty"),
        (["complete-job-self && (", "done-job-self)"], "triggers[0]: its parentheses"),
        ({"a": 1}, "triggers must be a string or a list of strings"),
    ],
)
async def test_a_bad_trigger_list_is_refused_naming_the_item(
    farm: Farm, triggers: Any, message: str
) -> None:
    with pytest.raises(Aborted) as refused:
        await submit(farm, [bad_callback(triggers)])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details
    assert farm.supervisor.job_ids() == []


def test_triggers_text_joins_a_list_as_or() -> None:
    assert triggers_text("a-job-self") == "a-job-self"
    assert triggers_text(["complete-job-self"]) == "complete-job-self"
    assert triggers_text([" a && b "]) == "a && b"  # one item: the item
    # No parentheses added: the OR of ORs is one OR, and && binds tighter.
    assert triggers_text(["a", "b || c", "(d) && e"]) == "a || b || c || (d) && e"


def test_the_join_is_the_trigger_engines() -> None:
    assert jobdict.MAX_TRIGGER_BYTES == MAX_TRIGGER_BYTES
    assert jobdict.LIST_JOIN == LIST_JOIN


def test_a_job_dict_with_a_list_valued_trigger_becomes_a_wire_job() -> None:
    wire = job_from_dict(
        {
            "id": 7,
            "callbacks": [
                {
                    "triggers": ["complete-job-self", "failed-job-self"],
                    "language": "python",
                    "code": "x",
                }
            ],
        }
    )
    assert wire.callbacks[0].triggers == "complete-job-self || failed-job-self"


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ([{"triggers": ["complete-job-self", 3]}], r"callbacks\[0\]\.triggers\[1\] must be"),
        ([{"triggers": "complete-job-self", "language": 5}], r"callbacks\[0\]\.language: "),
        ([{"triggers": "complete-job-self", "maximum": -1}], r"callbacks\[0\]\.maximum: "),
        ([{"triggers": "t", "mode": "levle"}], r"callbacks\[0\]\.mode: 'levle'; expected"),
        (["complete-job-self"], r"callbacks\[0\] must be a dict"),
        ("complete-job-self", "callbacks must be a list"),
    ],
)
def test_a_job_dict_the_wire_cannot_hold_is_a_value_error(callbacks: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        job_from_dict({"id": 7, "callbacks": callbacks})


# -- the event path: names (3), batch errors (4), published_events (6) ------------------


def publish(**fields: Any) -> executor_pb2.PublishEventRequest:
    return executor_pb2.PublishEventRequest(**fields)


async def test_an_unknown_event_name_is_refused_listing_the_valid_ones(engines: Engines) -> None:
    triggers = TriggerServicer(engines(Recorder()))
    cases: list[tuple[str, dict[str, Any]]] = [("job", {}), ("work", {"work_name": "1"})]
    for type_, more in cases:
        for call in (
            triggers.PublishEvent(publish(name="bogus", type=type_, job_id=1, **more), context()),
            triggers.DryRun(
                executor_pb2.DryRunRequest(name="bogus", type=type_, job_id=1, **more), context()
            ),
        ):
            with pytest.raises(Aborted) as refused:
                await call
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details == (
                "name: unknown event name 'bogus'; expected one of complete, submit, killed,"
                " blocked, failed, running, waiting, assigned, removed, modified, timeout"
            )


async def test_a_batch_error_names_the_event(engines: Engines) -> None:
    triggers = TriggerServicer(engines(Recorder()))
    request = executor_pb2.PublishEventsRequest(
        events=[
            publish(name="complete", type="job", job_id=1),
            publish(name="complete", type="host", job_id=1),
        ]
    )
    with pytest.raises(Aborted) as refused:
        await triggers.PublishEvents(request, context())
    assert refused.value.details == "events[1]: host is required for host events"
    request.events[1].name = "started"
    with pytest.raises(Aborted) as refused:
        await triggers.PublishEvents(request, context())
    assert refused.value.details.startswith("events[1]: name: unknown event name 'started';")


@pytest.mark.parametrize(
    ("published", "message"),
    [
        (["complete", "bogus"], "published_events[1]: unknown event name 'bogus'; expected one of"),
        (["complete-jb"], "published_events[0]: unknown event type 'jb' in 'complete-jb'"),
        (["done"], "published_events[0]: 'done' is derived from complete, failed and killed"),
        (["complete-work-5"], "published_events[0]: unknown event type 'work-5'"),
    ],
)
async def test_published_events_must_be_events(
    engines: Engines, published: list[str], message: str
) -> None:
    engine = engines(Recorder())
    triggers = TriggerServicer(engine)
    request = executor_pb2.RegisterJobRequest(
        job=job_from_dict(job(3, ("complete-job-self", "x"))), published_events=published
    )
    with pytest.raises(Aborted) as refused:
        await triggers.RegisterJob(request, context())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith(message)
    assert engine.store.job(3) is None  # refused before anything was stored


async def test_declared_events_check_the_atoms(engines: Engines) -> None:
    triggers = TriggerServicer(engines(Recorder()))
    request = executor_pb2.RegisterJobRequest(
        job=job_from_dict(job(3, ("complete-job-self || running-work-self-*", "unblock-self"))),
        published_events=["complete", " running-job ", ""],
    )
    reply = await triggers.RegisterJob(request, context())
    assert [w.atom for w in reply.warnings] == ["running-work-self-*"]


async def test_a_qube_code_string_no_one_knows_is_a_check_at_registration(
    engines: Engines,
) -> None:
    # It was only REJECTED when it fired; .qcb files were checked at load already.
    triggers = TriggerServicer(engines(Recorder()))
    callbacks = [
        {"triggers": "complete-job-self", "language": "qube", "code": "fly-self"},
        {"triggers": "complete-job-self", "language": "qube", "code": "unblock-self; mail-status"},
        # Commented out: it runs nothing, and that is no mistake to warn of (probe 144).
        {"triggers": "complete-job-self", "language": "qube", "code": "# not yet; fail-self"},
        {"triggers": "complete-job-self", "language": "python", "code": "fly-self"},
        {"triggers": "complete-job-self", "language": "mail"},
    ]
    wire = job_from_dict({"id": 3, "user": "a", "callbacks": callbacks})
    reply = await triggers.RegisterJob(executor_pb2.RegisterJobRequest(job=wire), context())
    (warning,) = reply.warnings
    assert warning.kind == executor_pb2.TRIGGER_CHECK_KIND_UNKNOWN_CODE
    assert warning.callback_id == 1
    assert warning.message.startswith(
        "each firing would be REJECTED: unknown qube code string 'fly-self'; "
        "expected one of: unblock-self, "
    )

    strict = executor_pb2.RegisterJobRequest(job=wire, strict=True)
    with pytest.raises(Aborted) as refused:
        await triggers.RegisterJob(strict, context())
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "callback 1: each firing would be REJECTED" in refused.value.details


# -- cbexec triggers check (5) -------------------------------------------------------------


def test_check_prints_the_parse_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(argparse.Namespace(expression="complete-job-x-5")) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok: complete-job-x",
        "warning: complete-job-x-5: job events take no extra: '-5' is ignored"
        " (a label cannot contain '-')",
    ]
    assert _check(argparse.Namespace(expression="complete-job-x")) == 0
    assert capsys.readouterr().out == "ok: complete-job-x\n"


# -- JournalEntry.work_name (7) ------------------------------------------------------------


async def test_a_fired_entry_names_the_work_item_of_the_event_that_fired_it(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(job(12, label="render", agenda=[{"name": n} for n in "12"]))
    engine.register_job(
        job(14, ("(complete-work-render-1 && complete-work-render-2) || failed-job-render", "x"))
    )
    await engine.publish(Event("complete", "work", 12, work_name="2"), wait=True)
    await engine.publish(Event("complete", "work", 12, work_name="1"), wait=True)
    (explained,) = engine.explain(14).callbacks
    matched, fired = explained.journal
    assert (matched.kind, matched.work_name) == (EntryKind.MATCHED, "")
    assert (fired.kind, fired.work_name) == (EntryKind.FIRED, "1")

    proto = (ROOT / "proto" / "qbcallback" / "v1" / "executor.proto").read_text()
    entry = proto[proto.index("message JournalEntry {") :]
    comment = re.search(r"((?:\s*//[^\n]*\n)+)\s*string work_name = 5;", entry)
    assert comment is not None
    assert "FIRED" in comment.group(1) and "qb.workid()" in comment.group(1)
