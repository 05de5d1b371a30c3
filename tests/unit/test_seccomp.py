"""The syscall filter's decisions, read by a small classic-BPF interpreter (no process, no kernel)."""

from __future__ import annotations

import struct

import pytest

from executor.child import seccomp

pytestmark = pytest.mark.unit

ALLOW = seccomp.SECCOMP_RET_ALLOW
EPERM = seccomp.SECCOMP_RET_ERRNO | seccomp.EPERM
ENOSYS = seccomp.SECCOMP_RET_ERRNO | seccomp.ENOSYS
EAFNOSUPPORT = seccomp.SECCOMP_RET_ERRNO | seccomp.EAFNOSUPPORT
ENOLCK = seccomp.SECCOMP_RET_ERRNO | seccomp.ENOLCK
ARCHES = list(seccomp.ARCHES)


def run(
    program: bytes, arch: int, nr: int, args: tuple[int, ...] = (), steps: list[int] | None = None
) -> int:
    """What the kernel would return for this syscall: a tiny interpreter of the opcodes used.

    ``steps``, when given, gets the number of instructions run appended.
    """
    data = struct.pack("=IIQ6Q", nr, arch, 0x400000, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    assert 0 < len(insns) <= 4096
    accumulator = 0
    pc = 0
    ran = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        ran += 1
        if code == seccomp.LD_W_ABS:
            assert k % 4 == 0 and k + 4 <= len(data)
            (accumulator,) = struct.unpack_from("=I", data, k)
        elif code == seccomp.JEQ_K:
            pc += jt if accumulator == k else jf
        elif code == seccomp.JGE_K:
            pc += jt if accumulator >= k else jf
        elif code == seccomp.JSET_K:
            pc += jt if accumulator & k else jf
        elif code == seccomp.RET_K:
            if steps is not None:
                steps.append(ran)
            return int(k)
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def nr(name: str, arch: str) -> int:
    number = seccomp.SYSCALLS[name][ARCHES.index(arch)]
    assert number is not None
    return number


@pytest.fixture(params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def decide(arch: str, name: str, *args: int) -> int:
    return run(seccomp.build(arch), seccomp.ARCHES[arch], nr(name, arch), args)


def test_the_numbers_of_both_architectures() -> None:
    # Spot checks against the kernel's tables (x86_64 unistd_64.h, generic unistd.h).
    assert seccomp.SYSCALLS["unshare"] == (272, 97)
    assert seccomp.SYSCALLS["clone3"] == (435, 435)
    assert seccomp.SYSCALLS["keyctl"] == (250, 219)
    assert seccomp.SYSCALLS["io_uring_setup"] == (425, 425)
    assert seccomp.SYSCALLS["io_setup"] == (206, 0)
    assert seccomp.SYSCALLS["io_pgetevents"] == (333, 292)
    assert seccomp.SYSCALLS["socket"] == (41, 198)


def test_every_denied_call_gets_eperm(arch: str) -> None:
    for name in seccomp.DENIED:
        if seccomp.SYSCALLS[name][ARCHES.index(arch)] is None:
            continue
        assert decide(arch, name) == EPERM, name
    # The list, by name: none of them slipped out of DENIED.
    for name in (
        "unshare",
        "setns",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "io_setup",
        "io_destroy",
        "io_submit",
        "io_cancel",
        "io_getevents",
        "io_pgetevents",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_getfd",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "swapon",
        "swapoff",
        "reboot",
        "acct",
        "open_by_handle_at",
        "name_to_handle_at",
        "lookup_dcookie",
        "quotactl",
        "syslog",
        "vhangup",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "sethostname",
        "setdomainname",
        "fanotify_init",
        "inotify_init1",
    ):
        assert name in seccomp.DENIED, name


def test_inotify_is_denied(arch: str) -> None:
    # A watch on a host directory the callback sees shows every process's opens there.
    assert decide(arch, "inotify_init1", 0) == EPERM
    if arch == "x86_64":  # aarch64 has inotify_init1 only
        assert decide(arch, "inotify_init") == EPERM


F_GETFD, F_SETFL, F_GETLK, F_SETLK, F_SETLKW, F_OFD_SETLK, F_DUPFD_CLOEXEC = 1, 4, 5, 6, 7, 37, 1030
F_NOTIFY, DN_ACCESS, DN_MULTISHOT = 1026, 0x1, 0x80000000


def test_dnotify_is_denied_as_inotify_is(arch: str) -> None:
    # fcntl(F_NOTIFY) on a host directory signals every access there, as an inotify watch.
    assert decide(arch, "fcntl", 3, F_NOTIFY, DN_ACCESS | DN_MULTISHOT) == EPERM
    assert decide(arch, "fcntl", 3, (1 << 32) | F_NOTIFY, 0) == EPERM  # cmd is an unsigned int
    for command in (F_GETFD, F_SETFL, F_DUPFD_CLOEXEC):
        assert decide(arch, "fcntl", 3, command, 0) == ALLOW, command


def test_flock_fails_as_where_there_are_no_locks(arch: str) -> None:
    # A lock needs only read access: on a host file it held back the host's own writers.
    assert decide(arch, "flock", 3, 1 | 4) == ENOLCK  # LOCK_SH | LOCK_NB
    assert decide(arch, "flock", 3, 2) == ENOLCK  # LOCK_EX


def test_record_locks_stay_allowed_for_sqlite(arch: str) -> None:
    # SQLite's unix VFS and lockf take fcntl record locks; the filter cannot read their
    # struct flock, so it cannot tell a read lock on a host file from a lock on its own.
    for command in (F_GETLK, F_SETLK, F_SETLKW, F_OFD_SETLK):
        assert decide(arch, "fcntl", 3, command, 0x1000) == ALLOW, command


IPPROTO_IP, SOL_SOCKET, IPPROTO_TCP, IPPROTO_IPV6 = 0, 1, 6, 41
IPV6_V6ONLY, IPV6_FLOWLABEL_MGR, IPV6_FLOWINFO_SEND = 26, 32, 33


def test_ipv6_flow_labels_cannot_be_made(arch: str) -> None:
    # A flow label outlives its socket in the cell's network namespace, into the next run.
    assert decide(arch, "setsockopt", 3, IPPROTO_IPV6, IPV6_FLOWLABEL_MGR, 0x1000, 32) == EPERM
    assert decide(arch, "setsockopt", 3, IPPROTO_IPV6, (1 << 32) | IPV6_FLOWLABEL_MGR) == EPERM
    for level, option in (
        (IPPROTO_IPV6, IPV6_V6ONLY),
        (IPPROTO_IPV6, IPV6_FLOWINFO_SEND),
        (SOL_SOCKET, IPV6_FLOWLABEL_MGR),  # SO_SNDBUFFORCE, whatever the kernel says
        (IPPROTO_IP, IPV6_FLOWLABEL_MGR),  # IP_MULTICAST_IF
        (IPPROTO_TCP, 1),  # TCP_NODELAY
    ):
        assert decide(arch, "setsockopt", 3, level, option, 0x1000, 4) == ALLOW, (level, option)


def test_io_port_and_segment_table_calls_are_denied_on_x86_64() -> None:
    assert decide("x86_64", "iopl", 3) == EPERM
    assert decide("x86_64", "ioperm", 0, 1024, 1) == EPERM
    assert decide("x86_64", "modify_ldt", 0, 0, 0) == EPERM  # probe 131


def test_ordinary_calls_are_allowed(arch: str) -> None:
    program = seccomp.build(arch)
    column = ARCHES.index(arch)
    numbers = {pair[column] for pair in seccomp.SYSCALLS.values()}
    # read, write, mmap, execve, wait4, exit_group: everything not named is allowed.
    ordinary = {"x86_64": (0, 1, 9, 59, 61, 231), "aarch64": (63, 64, 222, 221, 260, 94)}
    for number in ordinary[arch]:
        assert number not in numbers
        assert run(program, seccomp.ARCHES[arch], number) == ALLOW, number


def test_every_number_is_decided_by_a_short_search(arch: str) -> None:
    # The kernel runs the program for every syscall number when a child installs it
    # (seccomp's cache of always-allowed calls): a search, not a chain of comparisons.
    program = seccomp.build(arch)
    column = ARCHES.index(arch)
    named = {pair[column]: name for name, pair in seccomp.SYSCALLS.items()}
    for number in range(1024):
        steps: list[int] = []
        decision = run(program, seccomp.ARCHES[arch], number, steps=steps)
        name = named.get(number)
        if name is None:
            assert decision == ALLOW, number
            assert steps[0] <= 14, (number, steps)
        elif name in seccomp.DENIED:
            assert decision == EPERM, name


def test_clone3_gets_enosys_so_glibc_falls_back_to_clone(arch: str) -> None:
    assert decide(arch, "clone3", 0x7FFF0000, 88) == ENOSYS


CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SETTLS, CLONE_VFORK, SIGCHLD = 0x10000, 0x80000, 0x4000, 17
NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


def test_clone_is_allowed_for_threads_fork_and_vfork(arch: str) -> None:
    thread = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SETTLS
    for flags in (thread, SIGCHLD, CLONE_VM | CLONE_VFORK | SIGCHLD):
        assert decide(arch, "clone", flags) == ALLOW, hex(flags)


@pytest.mark.parametrize("flag", list(NEW_FLAGS))
def test_clone_with_a_new_namespace_is_denied(arch: str, flag: str) -> None:
    assert decide(arch, "clone", NEW_FLAGS[flag] | SIGCHLD) == EPERM
    # Whatever else is in the upper half of the 64-bit argument.
    assert decide(arch, "clone", (1 << 40) | NEW_FLAGS[flag]) == EPERM


def test_socket_families(arch: str) -> None:
    for family in (1, 2, 10, 16):  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
        assert decide(arch, "socket", family, 1, 0) == ALLOW, family
        assert decide(arch, "socketpair", family, 1, 0) == ALLOW, family
    for family in (17, 38, 40, 30, 4, 3):  # packet, alg, vsock, tipc, ipx, ax25
        assert decide(arch, "socket", family, 3, 0) == EAFNOSUPPORT, family
        assert decide(arch, "socketpair", family, 1, 0) == EAFNOSUPPORT, family


O_RDONLY, O_WRONLY, O_CREAT, O_TMPFILE = 0, 0o1, 0o100, 0o20200000


def test_no_file_gets_a_setuid_or_setgid_mode(arch: str) -> None:
    # A file made in a read-write bind is the host's too, where nosuid does not hold.
    for mode in (0o4755, 0o2755, 0o6777, 0o104755):
        assert decide(arch, "fchmod", 3, mode) == EPERM, oct(mode)
        assert decide(arch, "fchmodat", -100 & 0xFFFFFFFF, 0x1000, mode) == EPERM
        assert decide(arch, "fchmodat2", -100 & 0xFFFFFFFF, 0x1000, mode, 0) == EPERM
        assert decide(arch, "mknodat", -100 & 0xFFFFFFFF, 0x1000, 0o100000 | mode, 0) == EPERM
        for flags in (O_CREAT | O_WRONLY, O_TMPFILE | O_WRONLY):
            assert decide(arch, "openat", 3, 0x1000, flags, mode) == EPERM, oct(flags)
        if arch == "x86_64":
            assert decide(arch, "chmod", 0x1000, mode) == EPERM
            assert decide(arch, "creat", 0x1000, mode) == EPERM
            assert decide(arch, "open", 0x1000, O_CREAT, mode) == EPERM
    for mode in (0o755, 0o1777, 0o600, 0o777):  # the sticky bit and permissions are fine
        assert decide(arch, "fchmod", 3, mode) == ALLOW, oct(mode)
        assert decide(arch, "openat", 3, 0x1000, O_CREAT | O_WRONLY, mode) == ALLOW
    # Without O_CREAT the mode is not used (and is whatever the caller left there).
    assert decide(arch, "openat", 3, 0x1000, O_RDONLY, 0o6777) == ALLOW
    assert decide(arch, "openat2", 3, 0x1000, 0x2000, 24) == ENOSYS  # its mode is unreadable


def test_personality_only_the_query_and_per_linux(arch: str) -> None:
    assert decide(arch, "personality", 0xFFFFFFFF) == ALLOW
    assert decide(arch, "personality", 0) == ALLOW
    assert decide(arch, "personality", 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert decide(arch, "personality", 0x0008) == EPERM  # PER_SVR4 and friends


PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_SET_NAME = 3, 4, 15


def test_no_process_makes_itself_dumpable_again(arch: str) -> None:
    # A dumpable process may reset its peak RSS through /proc/self/clear_refs.
    for value in (1, 2, 0xFFFFFFFF, (1 << 32) | 1):
        assert decide(arch, "prctl", PR_SET_DUMPABLE, value) == EPERM, hex(value)
    assert decide(arch, "prctl", PR_SET_DUMPABLE, 0) == ALLOW
    assert decide(arch, "prctl", (1 << 32) | PR_SET_DUMPABLE, 1) == EPERM  # option is an int
    assert decide(arch, "prctl", PR_GET_DUMPABLE) == ALLOW
    assert decide(arch, "prctl", PR_SET_NAME, 0x1000) == ALLOW


def test_another_architecture_is_refused() -> None:
    for arch in ARCHES:
        program = seccomp.build(arch)
        for foreign in (0x40000003, *(v for a, v in seccomp.ARCHES.items() if a != arch)):
            assert run(program, foreign, 39) == EPERM  # getpid on x86_64, i386 and arm64 alike
            assert run(program, foreign, 1) == EPERM


def test_x32_syscall_numbers_are_refused() -> None:
    program = seccomp.build("x86_64")
    getpid = 39
    assert run(program, seccomp.AUDIT_ARCH_X86_64, getpid) == ALLOW
    assert run(program, seccomp.AUDIT_ARCH_X86_64, seccomp.X32_SYSCALL_BIT | getpid) == EPERM
    assert run(program, seccomp.AUDIT_ARCH_X86_64, 0xFFFFFFFF) == EPERM


def test_the_program_fits_the_kernel(arch: str) -> None:
    program = seccomp.build(arch)
    assert len(program) % 8 == 0
    assert len(program) // 8 <= 4096  # BPF_MAXINSNS


def stacked(programs: list[bytes], arch: int, nr: int, args: tuple[int, ...]) -> int:
    """What the kernel returns under several filters (seccomp(2)).

    The strictest action; on a tie, the data of the one installed last.
    """
    answers = [run(program, arch, nr, args) for program in programs]
    return min(reversed(answers), key=lambda answer: answer & 0xFFFF0000)


def test_a_zygote_and_its_childs_closing_filter_decide_as_the_whole_one(arch: str) -> None:
    whole = seccomp.build(arch)
    zygote = seccomp.build(arch, allowing=seccomp.CONFINING)
    closing = seccomp.build_closing(arch)
    arguments = [
        (),
        (0x11,),  # SIGCHLD: fork
        *((flag | 0x11,) for flag in (0x00020000, 0x10000000, 0x40000000)),  # CLONE_NEW*
        *((family, 1) for family in (1, 2, 10, 16, 17, 38)),  # socket families
        (0, 0o4755, 0o4755, 0o4755),  # a setuid mode in every position
        (0, 0o100, 0o100, 0o6755),  # O_CREAT with a set-id mode
        (0, 0o20000000, 0o20000000, 0o755),  # O_TMPFILE, plain mode
        (0xFFFFFFFF,),  # the personality query
        (0x0040000,),  # ADDR_NO_RANDOMIZE
        (4, 1),  # PR_SET_DUMPABLE, 1
        (4, 0),  # PR_SET_DUMPABLE, 0
        (3, F_NOTIFY, DN_ACCESS),  # dnotify
        (3, F_SETLK, 0x1000),  # a record lock
        (3, IPPROTO_IPV6, IPV6_FLOWLABEL_MGR),  # a flow label
        (3, IPPROTO_IPV6, IPV6_V6ONLY),
    ]
    foreign = [a for name, a in seccomp.ARCHES.items() if name != arch] + [0x40000003]
    numbers = [*range(470), seccomp.X32_SYSCALL_BIT | 39, 0xFFFFFFFF]
    for audit_arch in (seccomp.ARCHES[arch], *foreign):
        for number in numbers:
            for args in arguments:
                assert stacked([zygote, closing], audit_arch, number, args) == run(
                    whole, audit_arch, number, args
                ), (audit_arch, number, args)
    for name in seccomp.CONFINING:  # allowed to the zygote, refused to the callback
        assert run(zygote, seccomp.ARCHES[arch], nr(name, arch)) == ALLOW
        assert stacked([zygote, closing], seccomp.ARCHES[arch], nr(name, arch), ()) == EPERM


def test_the_closing_filter_is_a_few_instructions(arch: str) -> None:
    assert len(seccomp.build_closing(arch)) // 8 <= 8
