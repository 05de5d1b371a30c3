"""StuckSlots: a problem only while every slot is kept by a killed process that has not ended."""

from __future__ import annotations

import contextlib
import logging

import pytest

from executor.sandbox import stuck_slots
from executor.sandbox.stuck_slots import StuckSlots


def test_every_slot_kept_is_a_problem_said_once_and_its_end_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slots = StuckSlots(2)
    heard: list[str] = []
    slots.listeners.append(heard.append)
    with caplog.at_level(logging.INFO, logger=stuck_slots.__name__):
        with slots.kept(1, "process 11, state D: held in the kernel"):
            assert (slots.count, slots.problem, heard) == (1, "", [])  # a slot is free
            with slots.kept(0, "process 10, frozen by the cgroup freezer /f (FROZEN)"):
                said = (
                    "every slot (2) is held by a killed process that has not ended (process 10,"
                    " frozen by the cgroup freezer /f (FROZEN); process 11, state D: held in"
                    " the kernel)"
                )
                assert (slots.count, slots.problem, heard) == (2, said, [said])
            assert (slots.count, slots.problem, heard) == (1, "", [said, ""])
        assert slots.count == 0
    warning, info = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert warning == (
        logging.WARNING,
        f"{said}: health is NOT_SERVING and Execute is refused until one ends",
    )
    assert info[0] == logging.INFO
    assert info[1].startswith("a killed process that held a slot has ended: a slot is free again")
    assert stuck_slots.refusal(said) == (
        f"{said}: the executor runs nothing until one ends (fired callbacks wait)"
    )


def test_a_problem_names_a_few_processes_and_counts_the_rest() -> None:
    slots = StuckSlots(5)
    with contextlib.ExitStack() as kept:
        for slot in range(5):
            kept.enter_context(slots.kept(slot, f"process {slot}"))
        assert slots.problem == (
            "every slot (5) is held by a killed process that has not ended"
            " (process 0; process 1; process 2; and 2 more)"
        )
    assert slots.problem == ""
