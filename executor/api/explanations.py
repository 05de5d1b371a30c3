"""Wire forms of the trigger engine's explanations: checks, journal entries, why.

The conversions of ``TriggerService``'s answers that say why (RegisterJob's warnings,
DryRun's explanations, ExplainCallbacks), kept apart from convert.py's run and event
shapes; each shape is written once, here.
"""

from __future__ import annotations

from typing import Final

from executor.api.convert import registered_message, saturated
from executor.triggers.checks import Check, CheckKind
from executor.triggers.journal import EntryKind, JournalEntry, SeenEvent
from executor.triggers.why import (
    AtomExplanation,
    CallbackExplanation,
    JobExplanation,
    WorkExplanation,
)
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2

_CHECK_KINDS: Final = {
    kind: executor_pb2.TriggerCheckKind.Value(f"TRIGGER_CHECK_KIND_{kind.name}")
    for kind in CheckKind
}
_ENTRY_KINDS: Final = {
    kind: executor_pb2.JournalEntryKind.Value(f"JOURNAL_ENTRY_KIND_{kind.name}")
    for kind in EntryKind
}


def check_message(job_id: int, check: Check) -> executor_pb2.TriggerCheck:
    """The wire form of a check of job ``job_id``."""
    return executor_pb2.TriggerCheck(
        job_id=job_id,
        callback_id=check.callback_id,
        slot=check.slot,
        atom=check.atom,
        kind=_CHECK_KINDS[check.kind],
        message=check.message,
        universal=check.universal,
        resolved=check.resolved,
    )


def seen_message(seen: SeenEvent) -> executor_pb2.SeenEvent:
    """The wire form of an event as the engine handled it."""
    event = seen.event
    return executor_pb2.SeenEvent(
        event=types_pb2.Event(
            name=event.name, type=event.type, context=event.context, extra=event.item
        ),
        event_id=event.event_id,
        at=seen.at,
        job_id=event.job_id,
    )


def journal_message(entry: JournalEntry) -> executor_pb2.JournalEntry:
    """The wire form of one journal entry."""
    return executor_pb2.JournalEntry(
        job_id=entry.job_id,
        callback_id=entry.callback_id,
        kind=_ENTRY_KINDS[entry.kind],
        seen=seen_message(entry.seen),
        work_name=entry.work_name,
        latched=entry.latched,
        already_latched=entry.already,
        invocation_id=entry.invocation_id,
        count=saturated(entry.count),
        waiting_for=entry.waiting_for,
        reason=entry.reason,
    )


def _atom_message(atom: AtomExplanation) -> executor_pb2.AtomExplanation:
    message = executor_pb2.AtomExplanation(
        slot=atom.slot,
        atom=atom.atom,
        description=atom.description,
        job_id=atom.job_id,
        pgrp=atom.pgrp,
        resolution=atom.resolution,
        latched=atom.latched,
        state=atom.state,
        next_due_unix=atom.next_due_unix,
    )
    if atom.latched_by is not None:
        message.latched_by.CopyFrom(seen_message(atom.latched_by))
    return message


def _work_message(work: WorkExplanation) -> executor_pb2.WorkItemExplanation:
    return executor_pb2.WorkItemExplanation(
        work_names=work.work_names,
        count=saturated(work.count),
        latches=work.latches,
        spent=work.spent,
        waiting=work.waiting,
        waiting_for=work.waiting_for,
        atoms=[_atom_message(atom) for atom in work.atoms],
    )


def _callback_message(
    job_id: int, explained: CallbackExplanation
) -> executor_pb2.CallbackExplanation:
    return executor_pb2.CallbackExplanation(
        callback=registered_message(explained.callback),
        atoms=[_atom_message(atom) for atom in explained.atoms],
        spent=explained.spent,
        waiting=explained.waiting,
        waiting_for=explained.waiting_for,
        work_items=[_work_message(work) for work in explained.work],
        journal=[journal_message(entry) for entry in explained.journal],
        checks=[check_message(job_id, check) for check in explained.checks],
        atoms_left_out=explained.atoms_left_out,
        refusal=explained.refusal,
        shadow=explained.shadow,
        journal_left_out=saturated(explained.journal_left_out),
    )


def explanation_message(explained: JobExplanation) -> executor_pb2.ExplainCallbacksResponse:
    """The wire form of a job's explanation."""
    return executor_pb2.ExplainCallbacksResponse(
        job_id=explained.job_id,
        name=explained.name,
        label=explained.label,
        pgrp=explained.pgrp,
        callbacks=[_callback_message(explained.job_id, cb) for cb in explained.callbacks],
        checks=[check_message(explained.job_id, check) for check in explained.checks],
        total_callbacks=explained.total_callbacks,
        next_after_callback_id=explained.next_after_callback_id,
        registration=explained.registration,
        universal_not_attached=explained.universal_not_attached,
    )
