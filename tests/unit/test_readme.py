"""The README stands alone, its quick start keeps its two commands apart, and it quotes limits as met."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from executor.config import Settings
from executor.errors import HostCallError
from executor.host_api import MAX_CALLS_PER_RUN, HostApi
from supervisor_client.reference import ReferenceSupervisor
from tests.conftest import DEFAULT_TEST_UID_BASES
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quickstart() -> list[str]:
    """The commands .ci/run reads: the ```sh quickstart block's lines but comments."""
    block = README.split("```sh quickstart\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_the_readme_cites_nothing_outside_the_repository() -> None:
    assert "qube-callbacks" not in README
    assert "../shared" not in README and "shared/docs" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_the_quick_start_commands_use_separate_environments() -> None:
    serve, test = quickstart()
    venv = re.compile(r"python3 -m venv (\S+)")
    (serve_venv,) = venv.findall(serve)
    (test_venv,) = venv.findall(test)
    assert serve_venv != test_venv
    assert f"{serve_venv}/" not in test, "the test command must not install into the service's"
    assert "cbexec serve" in serve and "pytest" in test


def test_the_suite_keeps_its_sandbox_uids_apart_from_a_default_service() -> None:
    service = Settings().sandbox_uid_base
    # Each executor uses base + cell, two cells per slot: far fewer than 1000.
    for base in DEFAULT_TEST_UID_BASES:
        assert service >= base + 1000 or service + 1000 <= base


async def test_the_readme_quotes_the_qb_call_cap_as_a_callback_meets_it() -> None:
    # The cap failed runs that polled, and the README spoke only of what is kept.
    with ReferenceSupervisor() as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice"}])
        host = HostApi(ReferencePort(sup), invocation_for(job, ""))
        for _ in range(MAX_CALLS_PER_RUN):  # refused at once: no supervisor round trip
            with pytest.raises(HostCallError):
                await host.call("nosuchfunction", [], {})
        with pytest.raises(HostCallError) as err:
            await host.call("jobstatus", [job["id"]], {})
    assert err.value.kind == "QbError"
    text = " ".join(README.split())
    assert f"at most {MAX_CALLS_PER_RUN:,} `qb` calls" in text
    assert (
        f"`qb.QbError` (Perl: dies with a `qb::Error` of kind `QbError`) `{err.value.message}`"
        in text
    )
    assert len(host.actions) == MAX_CALLS_PER_RUN  # "not listed in the actions"
