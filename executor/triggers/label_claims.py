"""Who holds a label of a pgrp: the store's jobs, and the claims of registrations under way.

Labels are unique per pgrp, and the engine refuses a registration whose label another
job of its pgrp holds. The farm's SubmitJobs checks its jobs' labels before it stores
them, but the trigger engine registers them a moment later (the forwarder's RegisterJob,
over the executor's port). Had another scheduler's RegisterJob taken such a label in
between, the farm's job, already accepted, would never have been registered and its
callbacks never run. So each side claims the label it checked, in the same step as the
check, under one lock: a registration for as long as it runs (its label is not in the
store until it commits), the farm until its jobs' registrations are done. Whoever comes
second meets the claim as it would meet a stored label, and is refused.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from executor.errors import InvalidRequestError
from executor.triggers.store import TriggerStore

# (pgrp, label) -> the job it is claimed for.
Claims = dict[tuple[int, str], int]


class LabelClaims:
    """The labels of the store's jobs, with those claimed by checks not yet registered."""

    def __init__(self, store: TriggerStore) -> None:
        self._store = store
        # Taken by registrations and by SubmitJobs' store (worker threads) alike; each
        # holds it only for a read of the store, or the farm's synchronous submit.
        self._lock = threading.Lock()
        self._claims: Claims = {}

    @contextlib.contextmanager
    def registering(self, job_id: int, pgrp: int, label: str) -> Iterator[None]:
        """Check ``label`` is free in ``pgrp`` for ``job_id`` and hold it while the body runs.

        Raises:
            InvalidRequestError: another job holds it (registered, or claimed).
        """
        if not label:
            yield
            return
        key = (pgrp, label)
        with self._lock:
            holder = self._claims.get(key)
            if holder is None:
                holder = self._store.label_owner(pgrp, label)
            if holder is not None and holder != job_id:
                raise InvalidRequestError(
                    f"label {label!r} is already used by job {holder} in pgrp {pgrp}"
                )
            added = self._claim(key, job_id)
        try:
            yield
        finally:
            if added:
                self.release({key: job_id})

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock over a check (``holders``) and the claims (``claim``) it leads to."""
        with self._lock:
            yield

    def holders(self, pgrp: int) -> dict[str, int]:
        """Label -> job of every label held in ``pgrp``, claims included (while ``locked``)."""
        held = self._store.labels_in(pgrp)
        held.update({label: job for (p, label), job in self._claims.items() if p == pgrp})
        return held

    def claim(self, claims: Iterable[tuple[int, str, int]]) -> Claims:
        """Claim each (pgrp, label, job) not claimed yet (while ``locked``); those claimed."""
        return {
            (p, label): job for p, label, job in claims if label and self._claim((p, label), job)
        }

    def _claim(self, key: tuple[int, str], job_id: int) -> bool:
        if key in self._claims:
            return False
        self._claims[key] = job_id
        return True

    def release(self, claims: Claims) -> None:
        """Drop the claims given, each only while it is still that job's."""
        with self._lock:
            for key, job_id in claims.items():
                if self._claims.get(key) == job_id:
                    del self._claims[key]
