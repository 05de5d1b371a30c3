"""A gated start: the child prepares its run, and its code waits for the gate to open.

Real children (started cold, and forked from a zygote), Python and Perl: the code starts
only once the gate has opened, and a gate that refuses leaves it unrun, its qb calls
never made, with the gate's error raised to the run's caller.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executor.errors import AlreadyExistsError
from executor.host_api import HostApi
from executor.model import Invocation, Language, Outcome
from executor.runtimes.child import child_runtime
from executor.sandbox.exit_status import SandboxResult
from executor.sandbox.process import SandboxRunner
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.supervisor_port import LIMITS, ReferencePort, invocation_for

pytestmark = pytest.mark.integration

# The monotonic clock (the same in every PID namespace) as the code starts.
CLOCK = {
    "python": "import time\nprint(repr(time.monotonic()))\n",
    "perl": (
        "use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);\n"
        'printf "%.9f\\n", clock_gettime(CLOCK_MONOTONIC);\n'
    ),
}
# A file written and an action at the supervisor: neither may happen when the gate refuses.
WRITE_AND_UNBLOCK = {
    "python": "open({path!r}, 'w').write('ran')\nqb.unblock(qb.jobid())\n",
    "perl": "open(my $f, '>', '{path}') or die $!; print $f 'ran'; close $f;\nqb::unblock($qb::jobid);\n",
}
NO_PERL = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
LANGUAGES = ["python", pytest.param("perl", marks=NO_PERL)]


@pytest.fixture
def job(supervisor: ReferenceSupervisor) -> dict[str, Any]:
    (submitted,) = supervisor.submit([{"name": "comp", "user": "alice", "status": "blocked"}])
    return supervisor.job(int(submitted["id"]))


async def run_gated(
    runner: SandboxRunner,
    host: HostApi,
    invocation: Invocation,
    gate: Callable[[], None] | None,
) -> SandboxResult:
    language = invocation.callback.language
    return await runner.run(
        runtime=child_runtime(Language(language)),
        limits=LIMITS,
        slot=0,
        start={
            "type": "start",
            "language": language,
            "code": invocation.callback.code,
            "context": invocation.child_context(),
        },
        on_call=host.serve_frame,
        gate=gate,
    )


@pytest.mark.parametrize("language", LANGUAGES)
async def test_the_code_starts_only_once_the_gate_has_opened(
    runner: SandboxRunner,
    supervisor: ReferenceSupervisor,
    job: dict[str, Any],
    language: str,
) -> None:
    opened: list[float] = []

    def gate() -> None:
        # Long enough that a child that did not wait would have started its code by now.
        time.sleep(0.3)
        opened.append(time.monotonic())

    invocation = invocation_for(job, CLOCK[language], language=language)
    host = HostApi(ReferencePort(supervisor), invocation)
    result = await run_gated(runner, host, invocation, gate)

    assert result.outcome is Outcome.SUCCEEDED, (result.failure, result.stderr)
    assert float(result.stdout) >= opened[0]


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_gate_that_refuses_leaves_the_code_unrun(
    runner: SandboxRunner,
    supervisor: ReferenceSupervisor,
    job: dict[str, Any],
    language: str,
    tmp_path: Path,
) -> None:
    def gate() -> None:
        time.sleep(0.2)  # time enough for a child that did not wait to run its code
        raise AlreadyExistsError("invocation_id 'x' is already recorded for another run")

    tmp_path.chmod(0o777)  # the child's uid writes there
    marker = tmp_path / "ran"
    code = WRITE_AND_UNBLOCK[language].replace("{path!r}", repr(str(marker)))
    invocation = invocation_for(job, code.replace("{path}", str(marker)), language=language)
    host = HostApi(ReferencePort(supervisor), invocation)
    with pytest.raises(AlreadyExistsError, match="another run"):
        await run_gated(runner, host, invocation, gate)

    assert not marker.exists()  # its child was killed and reaped before the error came
    assert host.actions == []
    assert supervisor.job(int(job["id"]))["status"] == "blocked"
    # The cell goes on: its next run (ungated) runs as usual.
    again = await run_gated(runner, host, invocation, None)
    assert again.outcome is Outcome.SUCCEEDED, (again.failure, again.stderr)
    assert marker.read_text() == "ran"
    assert supervisor.job(int(job["id"]))["status"] == "pending"
