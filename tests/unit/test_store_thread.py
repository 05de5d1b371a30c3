"""The embedded supervisor's store thread is started with it, not at its first call.

At the executor's limit of processes and threads (pids.max), a first call could not
start it: every Supervisor call failed "can't start new thread", an ERROR with a
traceback each, until the limit let go (a run of tests/faults/test_own_process_limit).
"""

from __future__ import annotations

import threading

from supervisor_client.reference.store_thread import StoreThread


def _store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("reference-supervisor")]


def test_its_thread_runs_before_any_call() -> None:
    before = len(_store_threads())
    store = StoreThread()
    try:
        assert len(_store_threads()) == before + 1
    finally:
        store.close()
