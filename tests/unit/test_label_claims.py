"""A label checked for the farm's job is claimed until that job registers: no one takes it between.

SubmitJobs checks its jobs' labels with the trigger engine, stores the jobs and only then
has them registered (the forwarder's RegisterJob). A RegisterJob of another scheduler in
between used to take such a label, and the farm's job, already accepted, never
registered. Both sides now check and claim in one step (``LabelClaims``).
"""

from __future__ import annotations

import pytest

from executor.errors import InvalidRequestError
from tests.helpers.trigger_engines import Engines, Recorder, job

pytestmark = pytest.mark.unit

DIRECT = 500


async def test_a_label_claimed_for_the_farms_job_refuses_another_registration(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    with engine.labels.locked():
        assert engine.labels.holders(1) == {}
        claimed = engine.labels.claim([(1, "render", 1)])
    with pytest.raises(InvalidRequestError, match="'render' is already used by job 1 in pgrp 1"):
        await engine.register(job(DIRECT, label="render", pgrp=1))
    # The farm's job takes it, and keeps it once the claim is released.
    await engine.register(job(1, label="render", pgrp=1))
    engine.labels.release(claimed)
    with engine.labels.locked():
        assert engine.labels.holders(1) == {"render": 1}
    with pytest.raises(InvalidRequestError, match="'render' is already used by job 1 in pgrp 1"):
        await engine.register(job(DIRECT, label="render", pgrp=1))


async def test_a_registration_under_way_holds_its_label_until_it_ends(engines: Engines) -> None:
    engine = engines(Recorder())
    with engine.labels.registering(DIRECT, 1, "render"):
        # Not in the store yet (its transaction has not committed), but held.
        assert engine.store.labels_in(1) == {}
        with engine.labels.locked():
            assert engine.labels.holders(1) == {"render": DIRECT}
            assert engine.labels.claim([(1, "render", 1)]) == {}
    with engine.labels.locked():
        assert engine.labels.holders(1) == {}


async def test_a_refused_registration_leaves_the_label_to_its_holder(engines: Engines) -> None:
    engine = engines(Recorder())
    await engine.register(job(1, label="render", pgrp=1))
    with pytest.raises(InvalidRequestError):
        await engine.register(job(DIRECT, label="render", pgrp=1))
    with engine.labels.locked():
        assert engine.labels.holders(1) == {"render": 1}
