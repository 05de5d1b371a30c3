"""Real Perl children: the qb package round trips, how callbacks end, and the limits that hold them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from executor.host_api import CUT_SHORT, HostApi
from executor.model import Failure, Invocation, Language, Limits, Outcome
from executor.runtimes.child import child_runtime
from executor.sandbox.exit_status import SandboxResult
from executor.sandbox.process import SandboxOptions, SandboxRunner
from executor.sandbox.spawners import ColdSpawner
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

MIB = 1 << 20
GIB = 1 << 30
LIMITS = Limits(
    cpu_seconds=5,
    wall_seconds=20,
    memory_bytes=512 * MIB,
    output_bytes=1 * MIB,
    max_processes=32,
    disk_bytes=64 << 20,
)


@dataclass
class PerlRun:
    outcome: Outcome
    failure: Failure | None
    child: SandboxResult
    host: HostApi

    @property
    def stdout(self) -> str:
        return self.child.stdout

    @property
    def stderr(self) -> str:
        return self.child.stderr


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


@pytest.fixture
def job_id(supervisor: ReferenceSupervisor) -> int:
    (job,) = supervisor.submit(
        [
            {
                "name": "comp",
                "user": "alice",
                "status": "blocked",
                "cpus": 2,
                "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 6)],
            }
        ]
    )
    return int(job["id"])


async def run_perl(
    runner: SandboxRunner,
    supervisor: ReferenceSupervisor,
    job_id: int,
    code: str,
    *,
    work_name: str = "",
    subjob_id: int = -1,
    **limits: Any,
) -> PerlRun:
    invocation: Invocation = invocation_for(
        supervisor.job(job_id),
        code,
        language="perl",
        work_name=work_name,
        subjob_id=subjob_id,
        limits=dataclasses.replace(LIMITS, **limits),
    )
    host = HostApi(ReferencePort(supervisor), invocation)
    child = await runner.run(
        runtime=child_runtime(Language.PERL),
        limits=invocation.limits,
        slot=0,
        start={
            "type": "start",
            "language": "perl",
            "code": code,
            "context": invocation.child_context(),
        },
        on_call=host.serve_frame,
    )
    return PerlRun(child.outcome, child.failure, child, host)


def succeeded(run: PerlRun) -> None:
    assert run.outcome is Outcome.SUCCEEDED, (run.failure, run.stderr)


# -- qb round trips -----------------------------------------------------------------------


async def test_jobid_is_known_as_variable_and_function(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(runner, supervisor, job_id, 'print "$qb::jobid ", qb::jobid(), "\\n";')

    succeeded(run)
    assert run.stdout == f"{job_id} {job_id}\n"
    assert run.child.done == {"type": "done", "status": "ok", "exit_code": 0}


async def test_unblock_changes_the_supervisor_state(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(runner, supervisor, job_id, 'print qb::unblock($qb::jobid), "\\n";')

    succeeded(run)
    assert run.stdout == "1\n"
    assert supervisor.job(job_id)["status"] == "pending"
    (action,) = run.host.actions
    assert (action.verb, action.target, action.ok) == ("unblock", str(job_id), True)


async def test_workunblock_both_spellings(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = 'my $frame = 3; qb::workunblock("$qb::jobid:$frame"); qb::unblockwork("$qb::jobid:4-5");'
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    statuses = [w["status"] for w in supervisor.job(job_id)["agenda"]]
    assert statuses == ["blocked", "blocked", "pending", "pending", "pending"]
    # One function, two names (as in the Python qb): both call workunblock.
    assert [a.verb for a in run.host.actions] == ["workunblock", "workunblock"]


async def test_jobinfo_forms_and_contexts(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    supervisor.submit([{"name": "sibling", "user": "alice", "pgrp": job_id}])
    code = r"""
use strict;
use warnings;
use qb;
my @flag = qb::jobinfo('-id', $qb::jobid);
my @arrow = qb::jobinfo(-id => $qb::jobid);
my @hash = qb::jobinfo(id => "$qb::jobid");
my $ref = qb::jobinfo();
my @pgrp = qb::jobinfo(-pgrp => $qb::jobid);
my ($with) = qb::jobinfo(id => $qb::jobid, callbacks => 1);
my ($named) = qb::jobinfo(id => $qb::jobid, fields => ['callbacks', 'name']);
my ($flagged) = qb::jobinfo(-id => $qb::jobid, -fields => ['status']);
my ($mixed) = qb::jobinfo(-id => $qb::jobid, callbacks => 1);
print join(",", map { $_->[0]{id} } \@flag, \@arrow, \@hash, $ref), "\n";
print scalar(@pgrp), " ", join(",", map { $_->{name} } @pgrp), "\n";
print $flag[0]{name}, " ", $flag[0]{status}, " ", scalar @{ $flag[0]{agenda} }, "\n";
print exists $with->{callbacks} ? "callbacks\n" : "none\n";
print join(",", sort keys %$named), " ", join(",", sort keys %$flagged), "\n";
print exists $mixed->{callbacks} ? "mixed callbacks\n" : "mixed none\n";
print qb::jobstatus($qb::jobid), " ", qb::workstatus("$qb::jobid:2"), " ",
      qb::subjobstatus("$qb::jobid.1"), "\n";
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout.splitlines() == [
        ",".join([str(job_id)] * 4),
        "2 comp,sibling",
        "comp blocked 5",
        "callbacks",
        "callbacks,id,name id,status",  # fields => [...] as Python's fields=[...]
        "mixed callbacks",  # -id => 12 with a name after it was read as job ids
        "blocked blocked blocked",
    ]
    calls = [a for a in run.host.actions if a.verb == "jobinfo"]
    assert all(a.ok for a in calls)


async def test_jobinfo_takes_the_qube_clients_options(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # qb::jobinfo('-id', $id, '-agenda') died with "unknown flag -agenda".
    supervisor.submit([{"name": "sibling", "user": "alice", "pgrp": job_id}])
    code = r"""
my ($flag) = qb::jobinfo('-id', $qb::jobid, '-agenda');
my ($both) = qb::jobinfo('-id', $qb::jobid, '-agenda', '-subjobs');
my ($on) = qb::jobinfo(id => $qb::jobid, agenda => 1, -subjobs => 1);
my ($off) = qb::jobinfo(-id => $qb::jobid, -agenda => 0, subjobs => "0");
my @blocked = qb::jobinfo(-pgrp => $qb::jobid, status => 'blocked');
my @either = qb::jobinfo(-pgrp => $qb::jobid, -status => ['blocked', 'pending']);
my @unknown = qb::jobinfo('-id', 999999);
print join(",", map { scalar @{ $_->{agenda} } } $flag, $both, $on), "
";
print exists $off->{agenda} || exists $off->{subjobs} ? "kept
" : "left out
";
print join(",", map { $_->{name} } @blocked), " ", scalar @either, " ", scalar @unknown, "
";
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout.splitlines() == ["5,5,5", "left out", "comp 2 0"]


async def test_context_functions(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = r"""
my $cb = qb::callback();
print join("|", qb::subid(), qb::workid(), defined qb::event() ? "event" : "no event",
           $cb->{language}, $cb->{user}), "\n";
"""
    run = await run_perl(runner, supervisor, job_id, code, work_name="3", subjob_id=1)

    succeeded(run)
    assert run.stdout == "1|3|no event|perl|alice\n"


async def test_failed_call_dies_with_a_qb_error(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = r"""
eval { qb::unblock(999999) };
my $err = $@;
print ref($err), "|", $err->{kind}, "|", $err->kind, "|$err\n";
eval { qb::workunblock("$qb::jobid:77") };
print $@->{kind}, "\n";
eval { qb::jobinfo(-bogus => 1) };
print $@->{kind}, "\n";
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout.splitlines() == [
        "qb::Error|NoSuchJob|NoSuchJob|NoSuchJob: no job 999999",
        "NoSuchWork",
        "InvalidArgument",
    ]


async def test_malformed_calls_are_told_in_perl_words(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = r"""
my @calls = (
    sub { qb::jobstatus() },
    sub { qb::workstatus("$qb::jobid:1", "$qb::jobid:2") },
    sub { qb::unblock(undef) },
    sub { qb::unblock(9**9**9) },
    sub { qb::unblock() },
    sub { qb::jobinfo(id => $qb::jobid, id => $qb::jobid + 1) },
    sub { qb::jobinfo(-id => $qb::jobid, -pgrp => $qb::jobid) },
    sub { qb::unblock([[$qb::jobid]]) },
    sub { qb::jobinfo(foo => 1) },
    sub { qb::jobinfo(id => $qb::jobid, Foo_2 => 1) },
    sub { qb::jobinfo(-id => $qb::jobid, foo => 1) },
    sub { qb::jobinfo(fields => ['name'], fields => ['status']) },
    sub { qb::jobinfo(fields => 'name') },
    sub { qb::jobid(1) },
    sub { qb::workid(1, 2) },
    sub { qb::subid(1) },
    sub { qb::event(1) },
    sub { qb::callback(1) },
);
for my $call (@calls) {
    eval { $call->() };
    print "$@->{kind}|$@->{message}\n";
}
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    one_of = "one job (-id, id= or a job id) or one pgrp (-pgrp, pgrp=), or neither"
    names = "id, pgrp, status, agenda, subjobs, callbacks, fields"
    assert run.stdout.splitlines() == [
        "InvalidArgument|qb::jobstatus takes one job id, as in qb::jobstatus(12);"
        " it was given none",
        "InvalidArgument|qb::workstatus takes one work item '<jobid>:<workname>', as in"
        " qb::workstatus('12:5'); it was given 2 arguments",
        "InvalidArgument|expected a job id, got undef",
        "InvalidArgument|expected a job id, got Inf",
        "InvalidArgument|qb::unblock takes one or more job ids (or a list of them), as in"
        " qb::unblock(12); it was given none",
        f"InvalidArgument|qb::jobinfo takes {one_of} for the callback's own job;"
        f" it was given -id {job_id}, -id {job_id + 1}",
        f"InvalidArgument|qb::jobinfo takes {one_of} for the callback's own job;"
        f" it was given -id {job_id}, -pgrp {job_id}",
        # One array reference of targets is opened, not one inside it (was acted on).
        "InvalidArgument|qb::unblock takes one or more job ids (or a list of them), as in"
        " qb::unblock(12); it was given an array reference inside an array reference",
        # An unknown name, as Python's jobinfo(foo=1) (it was read as two job ids).
        f"InvalidArgument|qb::jobinfo: unknown argument foo; expected {names}",
        f"InvalidArgument|qb::jobinfo: unknown argument Foo_2; expected {names}",
        f"InvalidArgument|qb::jobinfo: unknown argument foo; expected {names}",
        # Two lists of fields are refused, not the last one kept as a hash would.
        "InvalidArgument|qb::jobinfo takes one list of fields; it was given 2",
        "InvalidArgument|qb::jobinfo: fields takes a list of field names, as in"
        " fields => ['name', 'status']; it was given name",
        # The context functions take nothing, as Python's do (they were answered anyway).
        "InvalidArgument|qb::jobid takes no arguments, as in qb::jobid(); it was given 1 argument",
        "InvalidArgument|qb::workid takes no arguments, as in qb::workid(); it was given 2 arguments",
        "InvalidArgument|qb::subid takes no arguments, as in qb::subid(); it was given 1 argument",
        "InvalidArgument|qb::event takes no arguments, as in qb::event(); it was given 1 argument",
        "InvalidArgument|qb::callback takes no arguments, as in qb::callback(); it was given 1 argument",
    ]


async def test_a_string_perl_used_as_a_number_is_still_sent_as_that_string(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # A string with numeric flags (used in `+`, `==`...) or a dualvar was written into
    # the frame as its string form, unquoted: invalid JSON, the run KILLED ("broke the
    # bridge protocol") instead of the call's answer or a catchable qb::Error.
    code = r"""
no warnings;
use Scalar::Util ();
sub numified { my ($text) = @_; my $n = $text + 0; return $text }
my @calls = (
    sub { qb::workstatus(numified("$qb::jobid:2")) },
    sub { qb::workunblock(numified("$qb::jobid:3")) },
    sub { qb::jobstatus(numified(sprintf "%02d", $qb::jobid)) },
    sub { scalar @{ qb::jobinfo(-id => $qb::jobid, status => numified('blocked')) } },
    sub { qb::jobstatus(numified('0x10')) },
    sub { qb::jobstatus(numified('abc')) },
    sub { qb::jobstatus(Scalar::Util::dualvar($qb::jobid, 'two')) },
    sub { qb::jobstatus(Scalar::Util::dualvar(2, "$qb::jobid")) },
    sub { qb::jobstatus(!1) },
    sub { qb::jobstatus(1 == 2) },
    sub { my $on = 3 > 5; exists qb::jobinfo(-callbacks => $on)->[0]{callbacks} ? 'kept' : 'left out' },
    sub { my $r = qb::jobinfo(-agenda => !1, -subjobs => !1)->[0];
          join ',', grep { exists $r->{$_} } qw(agenda subjobs) },
);
for my $call (@calls) {
    my $got = eval { $call->() };
    print $@ ? "$@->{kind}|$@->{message}\n" : "ok|$got\n";
}
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert not run.child.bridge_error
    assert run.stdout.splitlines() == [
        "ok|blocked",
        "ok|1",
        "ok|blocked",
        "ok|1",
        "InvalidArgument|expected a job id, got 0x10",
        "InvalidArgument|expected a job id, got abc",
        "InvalidArgument|expected a job id, got two",
        "ok|blocked",
        # Perl's false is the empty string: one argument, refused as Python's False is.
        "InvalidArgument|expected a job id, got ''",
        "InvalidArgument|expected a job id, got ''",
        "ok|left out",
        "ok|",
    ]


async def test_a_dashed_jobinfo_flag_takes_its_value_by_perls_truth(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # Only a literal 0 or 1 was the flag's value: -callbacks => 2 read job 2, and
    # -callbacks => 'yes' died "expected a job id, got yes".
    supervisor.submit([{"name": "other", "user": "alice"}])
    code = r"""
sub show {
    my ($job) = eval { $_[0]->() };
    return "$@->{kind}|$@->{message}" if $@;
    return join ',', $job->{id} == $qb::jobid ? 'own' : "job $job->{id}",
        grep { exists $job->{$_} } qw(callbacks agenda subjobs);
}
print show($_), "\n" for
    sub { qb::jobinfo(-callbacks => 2) },
    sub { qb::jobinfo(-callbacks => 'yes') },
    sub { qb::jobinfo(-callbacks => undef) },
    sub { qb::jobinfo(-callbacks => '0', -id => $qb::jobid) },
    sub { qb::jobinfo(-agenda => 'false', -subjobs => '') },
    sub { qb::jobinfo(-subjobs => 0.0, -agenda => [], id => $qb::jobid) },
    sub { qb::jobinfo('-id', $qb::jobid, '-callbacks', '-agenda') },
    sub { qb::jobinfo('-callbacks', fields => ['name']) },
    sub { qb::jobinfo(-agenda => 1, -bogus => 1) };
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    names = "-id, -pgrp, -status, -agenda, -subjobs, -callbacks, -fields"
    assert run.stdout.splitlines() == [
        "own,callbacks,agenda,subjobs",
        "own,callbacks,agenda,subjobs",
        "own,agenda,subjobs",
        "own,agenda,subjobs",
        "own,agenda",
        "own,agenda",
        "own,callbacks,agenda,subjobs",
        "own,callbacks",
        f"InvalidArgument|qb::jobinfo: unknown flag -bogus; expected {names}",
    ]


async def test_minus_zero_is_not_job_0(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # qb.pm sent "-0" as the number 0: job 0, where Python's qb refuses "-0".
    code = r"""
for my $call (sub { qb::jobstatus('-0') }, sub { qb::jobinfo(id => '-0') },
              sub { qb::jobinfo(-id => '-0') }, sub { qb::unblock(['-0']) }) {
    eval { $call->() };
    print "$@->{kind}|$@->{message}\n";
}
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout.splitlines() == ["InvalidArgument|expected a job id, got -0"] * 4


async def test_a_refused_value_is_shown_as_perl_writes_it(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # fields => [undef] was "an array reference" (Python names [None]); a control
    # character went into the message raw.
    code = r"""
for my $call (sub { qb::jobinfo(fields => [undef]) }, sub { qb::jobinfo(fields => ['name', 2]) },
              sub { qb::jobstatus(v2) }, sub { qb::jobstatus("1\e[2J") }) {
    eval { $call->() };
    print "$@->{message}\n";
}
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    fields = "qb::jobinfo: fields takes a list of field names, as in fields => ['name', 'status']"
    assert run.stdout.splitlines() == [
        f"{fields}; it was given [undef]",
        f"{fields}; it was given ['name', 2]",
        r"expected a job id, got '\x02'",
        r"expected a job id, got '1\x1b[2J'",
    ]


async def test_qb_kill_leaves_the_builtin_kill_alone(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = 'print kill(0, $$), "\\n"; print qb::kill($qb::jobid), "\\n";'
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout == "1\n1\n"
    assert supervisor.job(job_id)["status"] == "killed"


async def test_subjob_verbs(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(runner, supervisor, job_id, 'qb::subjobunblock("$qb::jobid.1");')

    succeeded(run)
    assert [s["status"] for s in supervisor.job(job_id)["subjobs"]] == ["blocked", "pending"]


async def test_named_subs_see_file_level_lexicals(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = 'my $id = qb::jobid();\nsub show { print "id=$id\\n" }\nshow();\nreturn;\nprint "not reached\\n";'
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout == f"id={job_id}\n"


async def test_text_round_trips_as_utf8_bytes(
    runner: SandboxRunner, supervisor: ReferenceSupervisor
) -> None:
    (job,) = supervisor.submit(
        [
            {
                "name": "Schnitt é ☺",
                "user": "alice",
                "status": "blocked",
                "agenda": [{"name": "é", "status": "blocked"}, {"name": "☺", "status": "blocked"}],
            }
        ]
    )
    code = r"""
my ($job) = qb::jobinfo();
print $job->{name}, " ", length($job->{agenda}[0]{name}), "\n";
qb::workunblock("$qb::jobid:$job->{agenda}[0]{name}");
{ use utf8; qb::workunblock("$qb::jobid:☺"); }
"""
    run = await run_perl(runner, supervisor, int(job["id"]), code)

    succeeded(run)
    assert run.stdout == "Schnitt é ☺ 2\n"  # bytes: "é" is two
    assert [w["status"] for w in supervisor.job(int(job["id"]))["agenda"]] == ["pending", "pending"]


# -- how a callback ends ------------------------------------------------------------------


async def test_die_fails_with_the_message(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = 'print "before\\n";\nsub deeper { die "boom" }\ndeeper();\nprint "after\\n";'
    run = await run_perl(runner, supervisor, job_id, code)

    assert run.outcome is Outcome.FAILED
    assert run.failure is not None
    assert run.failure.exception_type == "die"
    assert run.failure.message == "boom at <callback> line 2."
    assert "main::deeper called at <callback> line 3" in run.failure.traceback
    assert run.stdout == "before\n"


async def test_a_handlers_die_while_a_call_is_still_being_answered_is_reported(
    runner: SandboxRunner,
    supervisor: ReferenceSupervisor,
    job_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The die lands in the wait; the cold child reports it and exits while the executor
    # still builds the answer (a large jobinfo takes that long). The done frame sent
    # before the exit was left unread, and the run was "exited with status 1".
    job_info = ReferencePort.job_info

    async def slow_job_info(port: ReferencePort, **query: Any) -> list[dict[str, Any]]:
        await asyncio.sleep(3)
        return await job_info(port, **query)

    monkeypatch.setattr(ReferencePort, "job_info", slow_job_info)
    code = (
        'use Time::HiRes qw(ualarm);\n$SIG{ALRM} = sub { die "TIMEOUT\\n" };\n'
        "ualarm(200_000);\nqb::jobinfo(id => $qb::jobid);\n"
    )
    run = await run_perl(runner, supervisor, job_id, code)

    assert run.outcome is Outcome.FAILED, (run.failure, run.stderr)
    assert run.failure is not None
    assert (run.failure.exception_type, run.failure.message) == ("die", "TIMEOUT")
    assert run.child.usage.wall_seconds < 2.5  # the unanswered call is not waited for
    (action,) = run.host.actions  # made all the same, and may have been applied
    assert (action.verb, action.ok, action.message) == ("jobinfo", False, CUT_SHORT)


async def test_die_with_an_object_that_overloads_only_stringification(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # Found by a tester: comparing it with == died in the bootstrap (no fallback), and
    # the run was "exited with status 255" without its message.
    code = (
        'package My::Err; use overload q{""} => sub { "my error: " . $_[0]{msg} };\n'
        'package main; die bless { msg => "disk full" }, "My::Err";'
    )
    run = await run_perl(runner, supervisor, job_id, code)

    assert run.outcome is Outcome.FAILED
    assert run.failure is not None
    assert run.failure.exception_type == "My::Err"
    assert run.failure.message == "my error: disk full"


async def test_die_with_newline_keeps_the_message_and_adds_no_line(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # As plain perl prints it: the newline says "no location" (probe 117).
    run = await run_perl(runner, supervisor, job_id, '\n\ndie "plain\\n";')

    assert run.outcome is Outcome.FAILED
    assert run.failure is not None
    assert run.failure.message == "plain"
    assert run.failure.traceback == "plain"


async def test_a_message_that_looks_like_a_number_is_still_text(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # qb.pm's JSON sends integer-looking strings as numbers; the done frame's text fields
    # must stay strings, or the executor refuses the frame (protocol.DoneFrame).
    run = await run_perl(runner, supervisor, job_id, 'die "42\\n";')

    assert run.outcome is Outcome.FAILED
    assert run.failure is not None
    assert run.failure.message == "42"
    assert run.child.done is not None and run.child.done.get("message") == "42"
    assert not run.child.bridge_error


async def test_uncaught_qb_error_names_its_kind(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(runner, supervisor, job_id, "qb::unblock(424242);")

    assert run.outcome is Outcome.FAILED
    assert run.failure is not None
    assert run.failure.exception_type == "NoSuchJob"
    assert run.failure.message == "NoSuchJob: no job 424242"
    assert "qb::unblock called at <callback> line 1" in run.failure.traceback


@pytest.mark.parametrize(
    ("code", "outcome", "exit_code"),
    [
        ("exit 0;", Outcome.SUCCEEDED, 0),
        ("exit;", Outcome.SUCCEEDED, 0),
        ("exit 3;", Outcome.FAILED, 3),
        ("sub leave { exit(4) } eval { leave() }; print qq(not reached\\n);", Outcome.FAILED, 4),
    ],
)
async def test_exit_ends_only_the_child_and_is_reported(
    runner: SandboxRunner,
    supervisor: ReferenceSupervisor,
    job_id: int,
    code: str,
    outcome: Outcome,
    exit_code: int,
) -> None:
    run = await run_perl(runner, supervisor, job_id, f'print "out\\n"; {code}')

    assert run.outcome is outcome, (run.failure, run.stderr)
    assert run.child.done == {"type": "done", "status": "exit", "exit_code": exit_code}
    assert run.child.exit_code == exit_code
    assert run.stdout == "out\n"
    if outcome is Outcome.FAILED:
        assert run.failure is not None
        assert run.failure.message == f"the callback exited with status {exit_code}"


async def test_exit_in_a_forked_process_does_not_report_for_the_callback(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = (
        'my $pid = fork(); if (!$pid) { exit 7 } waitpid($pid, 0); print "child ", $? >> 8, "\\n";'
    )
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout == "child 7\n"
    assert run.child.done == {"type": "done", "status": "ok", "exit_code": 0}


@pytest.mark.parametrize(
    "code",
    [
        'print "ran\\n"; sub {',
        'use strict; print "ran\\n"; $undeclared = 1;',
        'use No::Such::Module; print "ran\\n";',
    ],
)
async def test_code_that_does_not_compile_is_rejected_unrun(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int, code: str
) -> None:
    run = await run_perl(runner, supervisor, job_id, code)

    assert run.outcome is Outcome.REJECTED
    assert run.failure is not None
    assert run.failure.message.startswith("the callback does not compile: ")
    assert " at <callback> line " in run.failure.message
    assert run.stdout == ""
    assert run.host.actions == []


async def test_stderr_is_captured(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(
        runner, supervisor, job_id, 'print STDERR "to stderr\\n"; warn "warned\\n";'
    )

    succeeded(run)
    assert run.stderr == "to stderr\nwarned\n"


# -- limits -------------------------------------------------------------------------------


async def test_cpu_spin_hits_the_cpu_limit(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(runner, supervisor, job_id, "1 while 1;", cpu_seconds=1, wall_seconds=20)

    assert run.outcome is Outcome.CPU_LIMIT, (run.failure, run.child.exit_code, run.child.signal)


async def test_huge_string_hits_the_memory_limit(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = 'my $n = 4 * 1024 ** 3; my $s = "x" x $n; print length($s), "\\n";'
    run = await run_perl(runner, supervisor, job_id, code, memory_bytes=256 * MIB)

    assert run.outcome is Outcome.MEMORY_LIMIT, (run.failure, run.stderr)
    assert "Out of memory!" in run.stderr
    assert run.child.done is None  # not trappable, so no report


async def test_sleep_past_the_wall_deadline(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    run = await run_perl(runner, supervisor, job_id, 'print "start\\n"; sleep 30;', wall_seconds=1)

    assert run.outcome is Outcome.WALL_TIMEOUT
    assert run.stdout == "start\n"
    assert run.child.done == {"type": "done", "status": "terminated", "exit_code": 143}
    assert run.child.usage.wall_seconds < 5


async def test_output_beyond_the_cap_is_truncated(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = 'my $line = ("x" x 1023) . "\\n"; print $line for 1 .. 10 * 1024;'
    run = await run_perl(runner, supervisor, job_id, code, output_bytes=64 * 1024)

    succeeded(run)
    assert run.child.stdout_truncated
    assert len(run.child.stdout) == 64 * 1024


async def test_jobinfo_dump_is_json_compatible(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    code = "use JSON::PP; print JSON::PP->new->canonical->encode(scalar qb::jobinfo());"
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    (job,) = json.loads(run.stdout)
    assert job == json.loads(json.dumps(supervisor.job(job_id)))


async def test_a_bare_jobinfo_name_and_a_status_given_a_list_say_what_was_given(
    runner: SandboxRunner, supervisor: ReferenceSupervisor, job_id: int
) -> None:
    # `id` with no value after it was read as a job id ("it was given job id 12, job id
    # id"), and an array reference given to workstatus was cut at its first ':'.
    code = r"""
for my $call (sub { qb::jobinfo($qb::jobid, 'id') }, sub { qb::workstatus(["$qb::jobid:1"]) }) {
    eval { $call->() };
    print "$@->{kind}|$@->{message}\n";
}
"""
    run = await run_perl(runner, supervisor, job_id, code)

    succeeded(run)
    assert run.stdout.splitlines() == [
        "InvalidArgument|qb::jobinfo: 'id' is not a job id; it takes a value, as in "
        "qb::jobinfo(id => 12) or qb::jobinfo('-id', 12)",
        "InvalidArgument|qb::workstatus takes one work item '<jobid>:<workname>', as in "
        f"qb::workstatus('12:5'); it was given an array reference: ['{job_id}:1']",
    ]
