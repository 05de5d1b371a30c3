"""A qb read asks for no more of a job's agenda than it needs, and answers as a full read would.

A 20,000-frame job's whole agenda costs the executor's event loop about 100 ms a read,
so ``qb.jobstatus`` asks for no work item, ``qb.workstatus('12:5')`` and a work verb
on plain names for those items only (SupervisorPort ``work_names``, supervisor.proto
``AgendaScope``). The hint may be ignored by a site's supervisor (it answers every
item), so every call is run against a port that honours it and one that does not, and
both must answer alike, errors word for word.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from executor.errors import HostCallError
from executor.host_api import HostApi, plain_work_names
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.clock import Clock
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = pytest.mark.unit

FRAMES = 2_000
# Frames 1..FRAMES, a chunk literally named like a range, and a named item.
AGENDA = [*(str(n) for n in range(1, FRAMES + 1)), "1-10", "Initialize"]


class RecordingPort(ReferencePort):
    """The reference port, recording each read's ``work_names`` and the items it answered.

    With ``honours_hint`` False it reads every item whatever was asked, as a site's
    supervisor that ignores the hint does.
    """

    def __init__(self, supervisor: ReferenceSupervisor, *, honours_hint: bool = True) -> None:
        super().__init__(supervisor)
        self.honours_hint = honours_hint
        self.asked: list[list[str] | None] = []
        self.answered_items: list[int] = []

    async def job_info(
        self,
        *,
        job_id: int | None,
        pgrp: int | None,
        include_callbacks: bool,
        actor: str,
        work_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        self.asked.append(None if work_names is None else list(work_names))
        jobs = await super().job_info(
            job_id=job_id,
            pgrp=pgrp,
            include_callbacks=include_callbacks,
            actor=actor,
            work_names=work_names if self.honours_hint else None,
        )
        self.answered_items.append(sum(len(job["agenda"]) for job in jobs))
        return jobs


def submit_big_job(sup: ReferenceSupervisor) -> dict[str, Any]:
    (job,) = sup.submit([{"name": "big", "user": "alice", "cpus": 2, "agenda": AGENDA}])
    return job


@pytest.fixture
def honouring() -> Iterator[RecordingPort]:
    with ReferenceSupervisor(":memory:", clock=Clock()) as sup:
        yield RecordingPort(sup)


@pytest.fixture
def ignoring() -> Iterator[RecordingPort]:
    with ReferenceSupervisor(":memory:", clock=Clock()) as sup:
        yield RecordingPort(sup, honours_hint=False)


async def answer(host: HostApi, fn: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """What the callback sees: the value, or the error's kind and message."""
    try:
        return ("value", await host.call(fn, args, kwargs))
    except HostCallError as err:
        return ("error", err.kind, err.message)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("5", ["5"]),
        (" 5 , 7,5", ["5", "7"]),
        ("007", ["007"]),  # a plain name is matched exactly: only a range reads numbers
        ("-5", ["-5"]),
        ("Initialize,5,", ["Initialize", "5", ""]),
        ("1-10", None),  # a range, or a chunk of that name: only the agenda tells
        ("3,7-9", None),
        ("005-007", None),
        ("1--5", None),
    ],
)
def test_a_spec_of_plain_names_names_its_items(spec: str, names: list[str] | None) -> None:
    assert plain_work_names(spec) == names


async def test_reads_ask_for_only_the_items_they_need_and_get_only_those(
    honouring: RecordingPort,
) -> None:
    job = submit_big_job(honouring.supervisor)
    j = job["id"]
    host = HostApi(honouring, invocation_for(job, ""))
    everything = len(AGENDA)
    calls: list[tuple[str, list[Any], dict[str, Any], list[list[str] | None], list[int]]] = [
        ("jobstatus", [j], {}, [[]], [0]),
        ("subjobstatus", [f"{j}.1"], {}, [[]], [0]),
        ("workstatus", [f"{j}:5"], {}, [["5"]], [1]),
        # A named answer that lacks the item: the whole agenda decides, as for a verb.
        ("workstatus", [f"{j}:99999"], {}, [["99999"], None], [0, everything]),
        ("workunblock", [f"{j}:5"], {}, [["5"]], [1]),
        # A list asks for its whole text too: an item may be named so, and it wins.
        (
            "workblock",
            [f"{j}:5, 7,Initialize"],
            {},
            [["5, 7,Initialize", "5", "7", "Initialize"]],
            [3],
        ),
        ("jobinfo", [], {"fields": ["status", "name"]}, [[]], [0]),
        ("jobinfo", ["-pgrp", j], {"fields": ["cpustally"]}, [[]], [0]),
        # A range (or a chunk named like one) reads the whole agenda ...
        ("workblock", [f"{j}:1-10"], {}, [None], [everything]),
        ("workblock", [f"{j}:005-007"], {}, [None], [everything]),
        # ... and so does a missing name, after the narrow read, for today's error.
        ("workblock", [f"{j}:5,99999"], {}, [["5,99999", "5", "99999"], None], [1, everything]),
        # What is made from the agenda needs all of it.
        ("jobinfo", [], {}, [None], [everything]),
        ("jobinfo", [], {"fields": ["todo"]}, [None], [everything]),
        ("jobinfo", [], {"fields": ["agenda"]}, [None], [everything]),
        ("jobinfo", [j], {"fields": ["todotally", "status"]}, [None], [everything]),
    ]
    for fn, args, kwargs, asked, answered in calls:
        honouring.asked.clear()
        honouring.answered_items.clear()
        await answer(host, fn, args, kwargs)
        assert (honouring.asked, honouring.answered_items) == (asked, answered), (fn, args)


async def test_every_call_answers_alike_whether_the_hint_is_honoured_or_ignored(
    honouring: RecordingPort, ignoring: RecordingPort
) -> None:
    job = submit_big_job(honouring.supervisor)
    assert submit_big_job(ignoring.supervisor) == job
    j, other = job["id"], job["id"] + 100
    calls: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("jobstatus", [j], {}),
        ("jobstatus", [other], {}),
        ("subjobstatus", [f"{j}.1"], {}),
        ("subjobstatus", [f"{j}"], {}),
        ("subjobstatus", [f"{j}.5"], {}),
        ("workstatus", [f"{j}:5"], {}),
        ("workstatus", [f"{j}:1-10"], {}),  # the chunk
        ("workstatus", [f"{j}:99999"], {}),
        ("workstatus", [f"{j}:5,6"], {}),  # workstatus names one item: no such name
        ("workstatus", [f"{other}:5"], {}),
        ("workblock", [f"{j}:5"], {}),
        ("workblock", [f"{j}:5, 7 ,9,5"], {}),
        ("workblock", [f"{j}:5,99999"], {}),
        ("workblock", [f"{j}:99999,98888"], {}),
        ("workblock", [f"{j}:1-10"], {}),  # the chunk, not frames 1 to 10
        ("workblock", [f"{j}:005-007"], {}),  # frames 5 to 7
        ("workblock", [f"{j}:007"], {}),  # no item is named 007
        ("workblock", [f"{j}:3,50000-60000"], {}),
        ("workblock", [f"{j}:50000-60000"], {}),
        ("workblock", [f"{j}:Initialize,"], {}),
        ("workblock", [[f"{j}:11", f"{j}:12,99999"]], {}),
        ("workunblock", [f"{j}:5,6,7"], {}),
        ("workunblock", [f"{other}:5"], {}),
        ("workstatus", [f"{j}:6"], {}),
        ("jobstatus", [j], {}),
        ("jobinfo", [], {}),
        ("jobinfo", [], {"fields": ["status", "name"]}),
        ("jobinfo", [], {"fields": ["status", "missing"], "callbacks": True}),
        ("jobinfo", [j], {"fields": ["todo"]}),
        ("jobinfo", ["-id", j], {"fields": ["todotally", "cpustally"]}),
        ("jobinfo", ["-pgrp", j], {"fields": ["subjobs"]}),
        ("jobinfo", ["-pgrp", j], {}),
        ("jobinfo", ["-id", other], {"fields": ["status"]}),
    ]
    hosts = [HostApi(port, invocation_for(job, "")) for port in (honouring, ignoring)]
    for fn, args, kwargs in calls:
        narrowed, full = [await answer(host, fn, args, kwargs) for host in hosts]
        assert narrowed == full, (fn, args, kwargs)
    assert hosts[0].actions == hosts[1].actions
    assert honouring.supervisor.job(j) == ignoring.supervisor.job(j)
    # The ignoring port was asked the same, and answered every item each time.
    assert honouring.asked == ignoring.asked
    assert set(ignoring.answered_items) == {len(AGENDA)}
    assert min(honouring.answered_items) == 0
