"""host_limits: what the executor's hard rlimits leave a callback (no processes)."""

from __future__ import annotations

from dataclasses import replace

from executor.model import Limits
from executor.sandbox import host_limits
from executor.sandbox.limits import rlimits

MIB = 1 << 20
DEFAULT = Limits(
    cpu_seconds=10,
    wall_seconds=30,
    memory_bytes=512 * MIB,
    output_bytes=MIB,
    max_processes=64,
    disk_bytes=256 * MIB,
)
CAP = Limits(
    cpu_seconds=600,
    wall_seconds=3600,
    memory_bytes=16 << 30,
    output_bytes=16 * MIB,
    max_processes=1024,
    disk_bytes=16 << 30,
)


def test_the_server_s_own_rlimits_are_lowered_to_the_ceilings() -> None:
    got = rlimits(
        DEFAULT, cap_processes_with_nproc=True, ceilings={"NOFILE": 255, "FSIZE": 32 * MIB}
    )
    assert got["NOFILE"] == [255, 255]
    assert got["FSIZE"] == [32 * MIB, 32 * MIB]
    assert got["CPU"] == [10, 11]
    assert rlimits(DEFAULT, cap_processes_with_nproc=True)["NOFILE"] == [256, 256]


def test_a_run_that_needs_more_than_a_ceiling_is_refused_by_name() -> None:
    found = {"CPU": 100, "AS": 1 << 30, "NPROC": 80}
    assert host_limits.refusal(DEFAULT, nproc=True, found=found) is None
    cpu = host_limits.refusal(replace(DEFAULT, cpu_seconds=99.5), nproc=True, found=found)
    assert cpu is not None and cpu.startswith(
        "limits.cpu_seconds = 99.5 cannot be enforced on this host: it needs RLIMIT_CPU 101,"
        " above the executor's hard limit of 100 (raise the executor's hard limit (systemd"
        " LimitCPU=, prlimit)"
    )
    many = replace(DEFAULT, max_processes=100)
    assert "RLIMIT_NPROC 100" in (host_limits.refusal(many, nproc=True, found=found) or "")
    assert host_limits.refusal(many, nproc=False, found=found) is None  # a pids cgroup caps it
    big = replace(DEFAULT, memory_bytes=2 << 30)
    assert "RLIMIT_AS" in (host_limits.refusal(big, nproc=False, found=found) or "")
    assert host_limits.refusal(big, nproc=True, found={}) is None


def test_start_up_warns_of_each_lowered_limit_and_unenforceable_setting() -> None:
    found = {"NOFILE": 255, "CPU": 5}
    said = host_limits.warnings(DEFAULT, CAP, nproc=True, found=found)
    assert said == [
        "the executor's hard RLIMIT_NOFILE is 255, below the 256 each callback is given:"
        " callbacks get 255 (raise the executor's hard limit (systemd LimitNOFILE=, prlimit)"
        " or give it CAP_SYS_RESOURCE)",
        "default_limits.cpu_seconds = 10 needs RLIMIT_CPU 11, above the executor's hard limit"
        " of 5: every run that leaves it at the default is refused (raise the executor's hard"
        " limit (systemd LimitCPU=, prlimit) or give it CAP_SYS_RESOURCE)",
        "max_limits.cpu_seconds = 600 needs RLIMIT_CPU 601, above the executor's hard limit"
        " of 5: runs that ask for more than it allows are refused (raise the executor's hard"
        " limit (systemd LimitCPU=, prlimit) or give it CAP_SYS_RESOURCE)",
    ]
    assert host_limits.warnings(DEFAULT, CAP, nproc=True, found={}) == []
