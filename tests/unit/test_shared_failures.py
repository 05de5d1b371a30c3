"""A step that fails for several waiters at once gives each its own error object.

One object raised in several suspended callers collects all their frames in one
traceback; whoever clears it closes the others' coroutines (probe 74).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from executor.errors import UnavailableError, own_copy
from executor.model import Event
from executor.triggers.group_commit import GroupCommit


def test_own_copy_keeps_type_words_fields_and_cause() -> None:
    class Lost(UnavailableError):
        def __init__(self, message: str, pid: int) -> None:
            super().__init__(message)
            self.pid = pid

    try:
        try:
            raise OSError("socket closed")
        except OSError as cause:
            raise Lost("the zygote died", 42) from cause
    except Lost as err:
        original = err
    copy = own_copy(original)
    assert copy is not original
    assert type(copy) is Lost and str(copy) == "the zygote died"
    assert isinstance(copy, Lost) and copy.pid == 42
    assert copy.__cause__ is original.__cause__
    assert copy.__traceback__ is original.__traceback__


def test_a_group_that_cannot_commit_fails_each_caller_with_its_own_error() -> None:
    def apply(events: Sequence[Event]) -> list[object]:
        raise UnavailableError("PostgreSQL store unreachable")

    async def main() -> list[BaseException]:
        group: GroupCommit[object] = GroupCommit(apply)
        calls = [
            group.submit([Event(name="complete", type="job", job_id=n)], lambda results: results)
            for n in range(1, 4)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await group.close()
        return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]

    errors = asyncio.run(main())
    assert len(errors) == 3
    assert all(isinstance(err, UnavailableError) for err in errors)
    assert len({id(err) for err in errors}) == 3
    assert {str(err) for err in errors} == {"PostgreSQL store unreachable"}
