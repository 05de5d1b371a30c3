"""FarmService.ChangeWork on many work names: one pass over the agenda, the same answers.

A ChangeWork listing 30,000 names expanded each over the whole agenda and held the event
loop for minutes (health, Execute and SIGTERM waited with it). The specs now share one
selection (``host_api.WorkSelection``), whose answers and errors are those of expanding
each spec alone.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Collection
from typing import Any

import grpc
import pytest

from executor.api.farm import MAX_WORK_ENTRIES, FarmServicer
from executor.errors import HostCallError
from executor.host_api import WorkSelection, expand_work_names
from supervisor_client.qbcallback.v1 import farm_pb2
from supervisor_client.reference import ReferenceSupervisor
from supervisor_client.reference.farm import Farm, describe_agenda
from tests.helpers.servicer_context import Aborted, FakeContext, as_context
from tests.helpers.trigger_engines import no_labels

pytestmark = pytest.mark.unit


async def _nothing(*_: Any) -> None:
    return None


def _servicer(agenda: list[str]) -> tuple[FarmServicer, int]:
    farm = Farm(ReferenceSupervisor(":memory:"))
    (job,) = farm.submit([{"name": "big", "agenda": agenda}])
    return FarmServicer(farm, lambda _: [], _nothing, _nothing, no_labels()), job["id"]


async def _change(servicer: FarmServicer, request: farm_pb2.ChangeWorkRequest) -> Any:
    return await servicer.ChangeWork(request, as_context(FakeContext()))


async def test_many_names_take_about_as_long_as_one_range() -> None:
    count = 8_000  # 22 s through gRPC before, growing with the square of the count
    frames = [str(n) for n in range(count)]
    servicer, job_id = _servicer(frames)
    started = time.perf_counter()
    answer = await _change(
        servicer,
        farm_pb2.ChangeWorkRequest(job_id=job_id, work=frames, change=farm_pb2.WORK_CHANGE_BLOCK),
    )
    took = time.perf_counter() - started
    assert (answer.changed, list(answer.selected)) == (count, frames)
    assert took < 3.0, f"{count} names took {took:.1f} s"


async def test_more_work_entries_than_the_bound_are_refused_naming_the_field() -> None:
    servicer, job_id = _servicer(["1", "2"])
    request = farm_pb2.ChangeWorkRequest(
        job_id=job_id, work=["1"] * (MAX_WORK_ENTRIES + 1), change=farm_pb2.WORK_CHANGE_BLOCK
    )
    with pytest.raises(Aborted) as refused:
        await _change(servicer, request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith(
        f"work: at most {MAX_WORK_ENTRIES} entries, got {MAX_WORK_ENTRIES + 1};"
    )
    request = farm_pb2.ChangeWorkRequest(
        job_id=job_id, work=["1"] * MAX_WORK_ENTRIES, change=farm_pb2.WORK_CHANGE_BLOCK
    )
    answer = await _change(servicer, request)
    assert (answer.changed, list(answer.selected)) == (1, ["1"])


def _each_alone(specs: list[str], agenda: list[str]) -> list[str] | str:
    """What ChangeWork answered before: each spec expanded alone, then the names once."""
    names: list[str] = []
    for spec in specs:
        try:
            names += expand_work_names(spec, agenda)
        except HostCallError as err:
            return err.message
    return list(dict.fromkeys(names))


def _together(specs: list[str], agenda: list[str]) -> list[str] | str:
    selection = WorkSelection(agenda)
    for spec in specs:
        try:
            selection.add(spec)
        except HostCallError as err:
            return err.message
    return selection.names


def _spec(pick: random.Random) -> str:
    parts = []
    for _ in range(pick.randint(1, 4)):
        low, high = pick.randint(-3, 14), pick.randint(-3, 14)
        parts.append(
            pick.choice([str(low), f"{low}-{high}", "1-10", "Initialize", "render", f" {low} ", ""])
        )
    return ",".join(parts)


def test_a_shared_selection_answers_as_each_spec_alone() -> None:
    agenda = ["-2", "-1", "0", "1", "2", "3", "10", "1-10", "Initialize", "007"]
    pick = random.Random(40)
    for _ in range(3_000):
        specs = [_spec(pick) for _ in range(pick.randint(0, 5))]
        assert _together(specs, agenda) == _each_alone(specs, agenda), specs


async def test_the_answers_and_errors_are_those_of_each_spec_alone() -> None:
    servicer, job_id = _servicer([str(n) for n in range(1, 11)])

    async def change(*work: str) -> Any:
        return await _change(
            servicer,
            farm_pb2.ChangeWorkRequest(job_id=job_id, work=work, change=farm_pb2.WORK_CHANGE_BLOCK),
        )

    answer = await change("5", "3-6", "5", "1-2,9")
    assert list(answer.selected) == ["5", "3", "4", "6", "1", "2", "9"]
    # A spec whose items an earlier one took still selects them: no error.
    assert list((await change("1-10", "4")).selected) == [str(n) for n in range(1, 11)]
    for work, message in [
        (("3", "50-60"), "job 1: no work items in range '50-60'; its agenda is 1-10"),
        (("3", "x"), "job 1: no work item 'x'; its agenda is 1-10"),
    ]:
        with pytest.raises(Aborted) as refused:
            await change(*work)
        assert (refused.value.code, refused.value.details) == (grpc.StatusCode.NOT_FOUND, message)


class ReadRecordingSupervisor(ReferenceSupervisor):
    """The real reference store, recording how many item rows each read of work items made.

    ``whole`` holds the size of every read of a job's whole agenda as items, ``named``
    of every read of named items.
    """

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.whole: list[int] = []
        self.named: list[int] = []

    def _work_rows(self, job_id: int) -> list[sqlite3.Row]:
        rows = super()._work_rows(job_id)
        self.whole.append(len(rows))
        return rows

    def _named_work_rows(self, job_id: int, names: Collection[str]) -> list[sqlite3.Row]:
        rows = super()._named_work_rows(job_id, names)
        self.named.append(len(rows))
        return rows


BIG = 5_000


def _recording_servicer(cpus: int = 2) -> tuple[FarmServicer, ReadRecordingSupervisor, int]:
    store = ReadRecordingSupervisor()
    farm = Farm(store)
    agenda = [str(n) for n in range(1, BIG + 1)]
    (job,) = farm.submit([{"name": "big", "user": "alice", "cpus": cpus, "agenda": agenda}])
    store.whole.clear()
    store.named.clear()
    return FarmServicer(farm, lambda _: [], _nothing, _nothing, no_labels()), store, job["id"]


async def test_a_change_of_one_item_reads_that_item_not_the_job() -> None:
    """A worker's or an operator's change of one frame costs the same on any job's size.

    Each read every item of the job (three times), 1-2 s on the executor's loop for a
    100,000-item job; now only the item is read, whatever the agenda holds.
    """
    servicer, store, job_id = _recording_servicer()
    changes = [
        ("7", farm_pb2.WORK_CHANGE_BLOCK, 1),
        ("7", farm_pb2.WORK_CHANGE_UNBLOCK, 1),
        ("8", farm_pb2.WORK_CHANGE_START, 1),
        ("8", farm_pb2.WORK_CHANGE_COMPLETE, 1),
        ("9", farm_pb2.WORK_CHANGE_START, 1),
        ("9", farm_pb2.WORK_CHANGE_FAIL, 1),
        ("10,11", farm_pb2.WORK_CHANGE_START, 2),
        ("10", farm_pb2.WORK_CHANGE_KILL, 1),
        ("11", farm_pb2.WORK_CHANGE_COMPLETE, 1),
        ("9", farm_pb2.WORK_CHANGE_RETRY, 1),
    ]
    for work, change, changed in changes:
        answer = await _change(
            servicer, farm_pb2.ChangeWorkRequest(job_id=job_id, work=[work], change=change)
        )
        assert answer.changed == changed, (work, change, answer.message)
        assert store.whole == [], (work, change)
        assert 0 < sum(store.named) <= 2 * changed, (work, change, store.named)
        store.named.clear()
    statuses = {
        w["name"]: w["status"]
        for w in store.job(job_id, work_names=[str(n) for n in range(7, 12)])["agenda"]
    }
    assert statuses == {
        "7": "pending",
        "8": "complete",
        "9": "pending",
        "10": "killed",
        "11": "complete",
    }


async def test_a_range_reads_the_agenda_s_names_not_its_items() -> None:
    servicer, store, job_id = _recording_servicer()
    answer = await _change(
        servicer,
        farm_pb2.ChangeWorkRequest(
            job_id=job_id, work=["20-22", "9"], change=farm_pb2.WORK_CHANGE_BLOCK
        ),
    )
    assert list(answer.selected) == ["20", "21", "22", "9"]
    assert store.whole == []
    assert sum(store.named) <= 8


def _full_read_answer(specs: list[str], agenda: list[str], job_id: int) -> list[str] | str:
    """What ChangeWork answered when it expanded its specs over the whole agenda."""
    selection = WorkSelection(agenda)
    for spec in specs:
        try:
            selection.add(spec)
        except HostCallError as err:
            return f"job {job_id}: {err.message}; its agenda is {describe_agenda(agenda)}"
    return selection.names


async def test_answers_and_errors_are_those_of_a_full_read() -> None:
    agenda = ["-2", "-1", "0", "1", "2", "3", "10", "1-10", "Initialize", "007"]
    servicer, job_id = _servicer(agenda)
    pick = random.Random(44)
    for _ in range(400):
        specs = [_spec(pick) for _ in range(pick.randint(1, 4))]
        request = farm_pb2.ChangeWorkRequest(
            job_id=job_id,
            work=specs,
            change=pick.choice([farm_pb2.WORK_CHANGE_BLOCK, farm_pb2.WORK_CHANGE_UNBLOCK]),
        )
        answer: list[str] | str | tuple[grpc.StatusCode, str]
        try:
            answer = list((await _change(servicer, request)).selected)
        except Aborted as err:
            answer = (err.code, err.details)
        full = _full_read_answer(specs, agenda, job_id)
        assert answer == (full if isinstance(full, list) else (grpc.StatusCode.NOT_FOUND, full))
    with pytest.raises(Aborted) as refused:
        await _change(
            servicer,
            farm_pb2.ChangeWorkRequest(
                job_id=job_id + 1, work=["1"], change=farm_pb2.WORK_CHANGE_BLOCK
            ),
        )
    assert (refused.value.code, refused.value.details) == (
        grpc.StatusCode.NOT_FOUND,
        f"no job {job_id + 1}; the farm has jobs {job_id}",
    )


async def test_a_worker_taking_its_next_frame_reads_no_agenda() -> None:
    """TakeWork, asked for every frame by every worker, read each dispatchable job whole."""
    _, store, job_id = _recording_servicer(cpus=3)
    farm = Farm(store)
    (small,) = farm.submit([{"name": "no agenda", "user": "bob", "priority": 10000}])
    store.whole.clear()
    taken = [farm.take_work(f"host-{n}") for n in range(4)]
    assert [(t.job_id, t.work_name, t.attempt) for t in taken if t is not None] == [
        (job_id, "1", 1),
        (job_id, "2", 1),
        (job_id, "3", 1),
        (small["id"], "", 1),  # the big job's three instances are busy
    ]
    assert farm.take_work("host-5") is None
    # No item read but the frames taken (starting one reads it): the empty job's agenda at most.
    assert sum(store.whole) == 0 and sum(store.named) <= 3, (store.whole, store.named)
    assert farm.change_work("fail", job_id, ["2"]).changed == 1
    assert farm.change_work("retry", job_id, ["2"]).changed == 1
    again = farm.take_work("host-2")
    assert again is not None and (again.work_name, again.attempt) == ("2", 2)
    assert sum(store.whole) == 0


async def test_a_workers_report_names_its_attempt_and_a_stale_one_changes_nothing() -> None:
    """Probe 127 finding 1: worker A's late end completed worker B's attempt of the frame."""
    servicer, job_id = _servicer(["1"])
    farm = servicer._farm
    farm.take_work("workerA")
    farm.change_job("block", job_id)
    farm.change_job("unblock", job_id)
    taken = await servicer.TakeWork(
        farm_pb2.TakeWorkRequest(host="workerB"), as_context(FakeContext())
    )
    assert taken.attempt == 2

    def report(host: str, attempt: int) -> farm_pb2.ChangeWorkRequest:
        return farm_pb2.ChangeWorkRequest(
            job_id=job_id,
            work=["1"],
            change=farm_pb2.WORK_CHANGE_COMPLETE,
            host=host,
            attempt=attempt,
        )

    stale = await _change(servicer, report("workerA", 1))
    assert (stale.changed, stale.job_status) == (0, "running")
    assert "a report of attempt 1 is stale" in stale.message
    real = await _change(servicer, report("workerB", 2))
    assert (real.changed, real.job_status) == (1, "complete")


async def test_an_attempt_with_an_operators_verb_is_refused_naming_the_field() -> None:
    servicer, job_id = _servicer(["1"])
    request = farm_pb2.ChangeWorkRequest(
        job_id=job_id, work=["1"], change=farm_pb2.WORK_CHANGE_KILL, attempt=1
    )
    with pytest.raises(Aborted) as refused:
        await _change(servicer, request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("attempt goes with complete or fail")
