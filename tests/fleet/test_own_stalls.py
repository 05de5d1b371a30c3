"""A replica's own stall is not taken for a frozen PostgreSQL (probe 114).

A process stopped (SIGSTOP, a paused VM) while its statement is in flight wakes with
the statement's deadline long past and the server's answer waiting in its socket: the
watchdog must not cut that connection, nor fail the replica's statements for
``UNANSWERED_QUIET_S`` after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executor import pg_stalls

pytestmark = pytest.mark.service

# A replica's store connection, running statements that each take a moment, back to back.
STATEMENT_LOOP = """
import json, sys, time
from executor import pg_stalls, sql
from executor.errors import UnavailableError
db = sql.connect_postgres(sys.argv[1])
errors, count, until = [], 0, time.monotonic() + float(sys.argv[2])
print("ready", flush=True)
while time.monotonic() < until:
    try:
        db.execute("SELECT pg_sleep(0.3)")
        count += 1
    except UnavailableError as err:
        if len(errors) < 3:  # one cut fails every statement for a while after
            errors.append(str(err))
print(json.dumps({"count": count, "errors": errors,
                  "cut": pg_stalls._watchdog.unanswered_at != float("-inf")}), flush=True)
"""

STALL_S = pg_stalls.ANSWER_DEADLINE_S + 2.0
STALLS = 3


def test_a_stall_of_the_process_itself_does_not_cut_its_connection(pg_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", STATEMENT_LOOP, pg_url, str(STALLS * (STALL_S + 1.0) + 1.0)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for _ in range(STALLS):
            time.sleep(0.8)  # mid-statement, most likely: each takes 0.3 s
            child.send_signal(signal.SIGSTOP)
            time.sleep(STALL_S)  # past the statement's deadline; its answer came meanwhile
            child.send_signal(signal.SIGCONT)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["errors"] == [], report
    assert not report["cut"], report
    assert report["count"] > 0
