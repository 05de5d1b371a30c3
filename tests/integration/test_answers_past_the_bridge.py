"""A qb answer larger than the bridge carries is refused as too big, and the bridge goes on.

Found by probe 104: the supervisor's answer is bounded as protobuf (64 MiB), but the
callback gets it as JSON, 4.5 to 15 times larger; a job of 800,000 work items (15 MB on
the wire) made a 68 MB frame, which the child took for a broken bridge ("it may have
been applied"), and every later qb call of the run was refused. Python and Perl share
the bridge, so both are tried.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator

import pytest

from executor.child import protocol
from executor.host_api import HostApi
from executor.model import Language, Outcome
from executor.runtimes.child import child_runtime
from executor.sandbox.exit_status import SandboxResult
from executor.sandbox.process import SandboxOptions, SandboxRunner
from executor.sandbox.spawners import ColdSpawner
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = pytest.mark.integration

# Each \x01 is 6 bytes of JSON (\u0001): the job's answer is just past the bridge's frame
# limit as the callback would get it, a sixth of that on the wire.
BLOB_CHARS = protocol.MAX_PARENT_FRAME_BYTES // 6 + 1024

PYTHON = """\
import qb
j = qb.jobid()
try:
    qb.jobinfo('-id', j)
except qb.QbError as err:
    print(type(err).__name__, err)
print('then', qb.jobinfo('-id', j, fields=['name'])[0]['name'], qb.unblock(j))
"""

PERL = """\
my $j = qb::jobid();
eval { qb::jobinfo('-id', $j); 1 } or print $@->kind, ' ', $@->message, "\\n";
print 'then ', qb::jobinfo('-id', $j, fields => ['name'])->[0]{name}, ' ', qb::unblock($j), "\\n";
"""


@pytest.fixture
async def runner() -> AsyncIterator[SandboxRunner]:
    spawner = ColdSpawner(sys.executable)
    options = SandboxOptions(
        site_paths=(), pid_namespace=True, network=True, grace_s=0.5, cgroups=None
    )
    try:
        yield SandboxRunner(options, spawner)
    finally:
        await spawner.close()


async def _run(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, language: Language, code: str
) -> SandboxResult:
    (job,) = supervisor.submit(
        [{"name": "wide", "user": "alice", "status": "blocked", "blob": "\x01" * BLOB_CHARS}]
    )
    invocation = invocation_for(supervisor.job(int(job["id"])), code, language=language.value)
    host = HostApi(ReferencePort(supervisor), invocation)
    return await runner.run(
        runtime=child_runtime(language),
        limits=invocation.limits,
        slot=0,
        start={
            "type": "start",
            "language": language.value,
            "code": code,
            "context": invocation.child_context(),
        },
        on_call=host.serve_frame,
    )


def _refused_then_went_on(stdout: str) -> None:
    refused, then = stdout.splitlines()
    assert refused.startswith("QbError the answer to jobinfo is too large for the callback: "), (
        refused
    )
    assert f"the bridge carries at most {protocol.MAX_PARENT_FRAME_BYTES} bytes" in refused
    assert "may have been applied" not in refused and "broken" not in refused
    assert then == "then wide 1"


@pytest.mark.timeout(120)
async def test_python_an_answer_too_big_for_the_bridge_is_a_plain_qb_error(
    runner: SandboxRunner, supervisor: ReferenceSupervisor
) -> None:
    run = await _run(runner, supervisor, Language.PYTHON, PYTHON)
    assert run.outcome is Outcome.SUCCEEDED, (run.failure, run.stderr)
    _refused_then_went_on(run.stdout)


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
async def test_perl_an_answer_too_big_for_the_bridge_is_a_plain_qb_error(
    runner: SandboxRunner, supervisor: ReferenceSupervisor
) -> None:
    run = await _run(runner, supervisor, Language.PERL, PERL)
    assert run.outcome is Outcome.SUCCEEDED, (run.failure, run.stderr)
    _refused_then_went_on(run.stdout)
