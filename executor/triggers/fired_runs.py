"""A queued firing's run: its invocation under its policy (a universal line's as loaded), or refused.

The firing worker (firings.py) runs each firing through ``run_firing``. A job's own
callback runs under the policy for its user; a universal one under the policy its line
names in the set loaded now (universal_set.py), looked at again when its run gets a
slot, and refused when its line is not loaded. ``firing_refusal`` says the same ahead
of a run: for ``why``, a dry run and the journal.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Protocol

from executor.errors import NotFoundError
from executor.model import CallbackSpec, Invocation, Limits, RunResult
from executor.policies import JOB, UNIVERSAL, Policy, PolicySet, language_refusal
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import PendingFiring, StoredCallback
from executor.triggers.universal_set import UniversalSet


class FiredRun(Protocol):
    """Runs one fired invocation to its result (the dispatcher's ``execute``, fired).

    ``recheck`` is applied to the invocation when its run takes a slot, and ``queued_at``
    (``time.monotonic()``: when its wait in the firing queue began) starts its queue
    time (``Dispatcher.execute``).
    """

    async def __call__(
        self,
        invocation: Invocation,
        *,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult: ...


class FiredRuns:
    """Runs queued firings through ``run``, each under its policy, and says which are refused."""

    def __init__(
        self,
        store: TriggerStore,
        run: FiredRun,
        *,
        limits: Limits,
        policies: PolicySet | None,
        languages: Collection[str] | None,
        universal: UniversalSet,
    ) -> None:
        """The runs of ``store``'s firings; the engine's arguments of the same names.

        ``universal``: the set loaded now, whose lines the universal callbacks' runs take.
        """
        self._store = store
        self._run = run
        self._limits = limits
        self._policies = policies
        self._languages = languages
        self._universal_set = universal

    async def run_firing(self, firing: PendingFiring, queued_at: float) -> RunResult:
        """Run one queued firing in the context of its job and event (the worker's ``run``).

        The callback, its count and its work item are the firing's, as decided.

        Of the job, the invocation holds only its id and user: nothing a fired run does
        reads more of it (the child's start frame names the id, the mail and status codes
        ask the supervisor), and the stored callback's user is the job's where it has none
        of its own (registration). Reading the job's JSON here cost the loop about a second
        for a million work items, and a thread would not have helped: ``json.loads`` holds
        the GIL throughout.
        """
        cb, event = firing.callback, firing.event
        job = {"id": cb.job_id, "user": cb.user}
        invocation = Invocation(
            invocation_id=firing.invocation_id,
            callback=CallbackSpec(
                language=cb.language,
                code=cb.code,
                triggers=cb.triggers,
                id=cb.callback_id,
                user=cb.user,
                count=firing.count,
                maximum=cb.maximum,
                source=cb.source,
            ),
            job=job,
            limits=self._limits,
            event=event,
            work_name=firing.work_name,
            subjob_id=event.subjob_id,
            source="universal" if cb.universal else "job",
            claim_epoch=firing.epoch if self._store.fleet else None,
        )
        if not cb.universal:
            return await self._run(
                self._with_policy(invocation, universal=False), queued_at=queued_at
            )
        # Looked at again when the run gets its slot: a reload while it waits for one
        # applies to it (a line removed, turned shadow or moved to another policy).
        return await self._run(
            self._with_policy(invocation, universal=True),
            recheck=lambda waited: self._with_policy(waited, universal=True),
            queued_at=queued_at,
        )

    def _with_policy(self, invocation: Invocation, *, universal: bool) -> Invocation:
        """The invocation under its policy: a universal callback's as its (current) line says.

        Looked up in the set loaded last, not stored with the job: a reload that turns
        shadow off or changes a policy applies to the next run (one waiting for a slot
        too: this is looked at again when it gets one), and one that removes
        the line stops the callback (it is refused, not run under defaults: a shadow
        callback must never go live by being removed). Its source is the line's file as
        loaded now: the one stored names the file at registration, which a data dir
        moved since (or another replica's directory) leaves elsewhere.
        """
        named, shadow = "", False
        if universal:
            spec = invocation.callback
            loaded = self._universal_set.find_line(spec.source, spec.triggers)
            if loaded is None and self._universal_set.caught_up_with_fleet():
                loaded = self._universal_set.find_line(spec.source, spec.triggers)
            if loaded is not None:
                named, shadow = loaded.policy, loaded.shadow
                invocation = replace(invocation, callback=replace(spec, source=loaded.source))
            else:
                left_out = self._universal_set.left_out_line(spec.source, spec.triggers)
                return replace(
                    invocation,
                    policy=(left_out[0] if left_out else "") or UNIVERSAL,
                    refusal=self._universal_set.not_loaded(spec.source, spec.triggers),
                )
        if self._policies is None:
            name = (named or UNIVERSAL) if universal else JOB
            return replace(invocation, policy=name, shadow=shadow)
        if universal:
            try:
                policy = self._policies.for_universal(named)
            except NotFoundError as err:
                # Never another policy's grants in its place (keep_last_good leaves such
                # lines out; this holds for any other way one could get here).
                callback = f"universal callback {invocation.callback.source} = "
                refusal = f"{callback}{invocation.callback.triggers}: not run: its {err}"
                return replace(invocation, policy=named, shadow=shadow, refusal=refusal)
        else:
            policy = self._policies.for_job_callback(invocation.actor)
        return replace(invocation, policy=policy.name, shadow=shadow, limits=policy.limits[0])

    def firing_refusal(self, cb: StoredCallback) -> tuple[str, bool]:
        """(Why a firing of ``cb`` is refused as things stand, "" when it runs; whether as a shadow).

        What ``_with_policy`` and the dispatcher decide for its run, said ahead of it:
        by ``why``, a dry run and the journal's entry of the firing (REJECTED runs read as
        fired otherwise). Reads only what is in memory (the set loaded, the policies): any
        thread may call it, in a transaction too. In a fleet, a line another replica has
        just added may be found by the run's own look (``caught_up_with_fleet``), not here.
        """
        return self.refusal(
            cb.language, cb.user, (cb.source, cb.triggers) if cb.universal else None
        )

    def refusal(
        self, language: str, user: str, line: tuple[str, str] | None = None
    ) -> tuple[str, bool]:
        """``firing_refusal`` of a job's own callback (``line`` None) or a universal one's line."""
        policy: Policy | None = None
        shadow = False
        if line is not None:
            source, triggers = line
            loaded = self._universal_set.find_line(source, triggers)
            if loaded is None:
                return self._universal_set.not_loaded(source, triggers), False
            shadow = loaded.shadow
            if self._policies is not None:
                try:
                    policy = self._policies.for_universal(loaded.policy)
                except NotFoundError as err:
                    callback = f"universal callback {loaded.source} = {triggers}"
                    return f"{callback}: not run: its {err}", shadow
        elif self._policies is not None:
            policy = self._policies.for_job_callback(user)
        return language_refusal(language, self._languages, policy) or "", shadow
