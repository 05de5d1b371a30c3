"""Job dicts on and off the wire: Qube's derived tallies are made, never carried."""

from __future__ import annotations

import pytest

from supervisor_client.jobdict import job_from_dict, job_to_dict

pytestmark = pytest.mark.unit


def test_a_job_dict_has_qubes_tallies_of_its_work_and_instances() -> None:
    wire = job_from_dict(
        {
            "id": 8,
            "name": "comp",
            "agenda": [
                {"name": "1", "status": "complete"},
                {"name": "2", "status": "running"},
                {"name": "3", "status": "pending"},
                {"name": "4", "status": "dying"},  # not tallied by Qube: unknown
            ],
            "subjobs": [{"id": 0, "status": "running"}, {"id": 1, "status": "pending"}],
            # Stale figures a client sends along are not what the callback reads.
            "todotally": {"complete": 99},
            "todo": 99,
        }
    )
    assert "todotally" not in wire.extra and "todo" not in wire.extra

    job = job_to_dict(wire)

    assert job["todo"] == 4
    assert job["todotally"] == {
        "badlogin": 0,
        "blocked": 0,
        "complete": 1,
        "failed": 0,
        "killed": 0,
        "pending": 1,
        "running": 1,
        "suspended": 0,
        "unknown": 1,
        "waiting": 0,
    }
    assert (job["cpustally"]["running"], job["cpustally"]["pending"]) == (1, 1)
    assert sum(job["cpustally"].values()) == 2


def test_a_job_dicts_own_extra_key_travels_like_any_other_key() -> None:
    """A key named ``extra`` is one more job field: sent, and read back under its name.

    It was counted among the dedicated fields and never copied: silently dropped.
    """
    given = {"id": 1, "extra": {"k": "v", "n": [1, 2]}, "cluster": "/render"}

    job = job_to_dict(job_from_dict(given))

    assert job["extra"] == {"k": "v", "n": [1, 2]}
    assert job["cluster"] == "/render"
