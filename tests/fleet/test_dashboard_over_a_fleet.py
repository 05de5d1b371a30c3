"""The Grafana dashboard over a fleet: the shared store's counts once, the replicas' own summed.

Every replica reports the whole shared store's backlog and size, so a panel that added
the replicas together would show them once per replica.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor_client import ExecutorClient
from tests.fleet.harness import fleet
from tests.helpers.waiting import eventually
from tests.service.test_grafana import load_dashboard, shown

pytestmark = pytest.mark.service


async def test_the_dashboard_shows_a_fleets_store_once_and_its_replicas_slots_summed(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url, replicas=2) as group:
        await group.endpoint.stop()  # the supervisor away: the results stay in the outbox
        async with (
            ExecutorClient(group.address(0)) as first,
            ExecutorClient(group.address(1)) as second,
        ):
            for job_id in (81_001, 81_002, 81_003):
                await first.register_job(
                    {
                        "id": job_id,
                        "callbacks": [
                            {"triggers": "complete-job-self", "language": "python", "code": "1"},
                            {"triggers": "failed-job-self", "language": "python", "code": "1"},
                        ],
                    }
                )
            for client in (first, first, second):
                await client.execute_callback(
                    language="python", code="print('kept')", job={"id": 81_999, "user": "fleet"}
                )

            async def both() -> list[dict[str, float]] | None:
                readings = [await client.get_metrics() for client in (first, second)]
                if any(r.outbox_pending < 3 for r in readings):
                    return None
                names = ("trigger_jobs", "trigger_callbacks", "outbox_pending", "slots")
                return [{f"cbexec_{n}": float(getattr(r, n)) for n in names} for r in readings]

            replicas = await eventually(both)

        assert replicas is not None, "the outbox's three results never showed"
        dashboard = load_dashboard()
        panels = {
            name: shown(dashboard, name, [replica[name] for replica in replicas])
            for name in replicas[0]
        }
        assert panels == {
            "cbexec_trigger_jobs": 3,
            "cbexec_trigger_callbacks": 6,
            "cbexec_outbox_pending": 3,
            "cbexec_slots": 8,  # --max-concurrent 4 on each replica
        }
