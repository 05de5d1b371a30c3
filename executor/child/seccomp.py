"""The syscall filter of every sandboxed child: a classic BPF program, assembled here and installed.

Stdlib only, like the rest of ``executor/child``: the executor assembles the program
once (``build``) and hands its bytes to both zygotes and the cold launcher in the launch
spec (hex); the child installs it with ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``
as the last confinement step, after no_new_privs, its namespaces, mounts, the uid drop
and the rlimits, right before the callback's code. It survives fork and exec, so every
process of the callback (an exec'd Perl on the cold path too) runs under it.

What it decides, for the one architecture it was built for:

- another architecture (i386 through ``int 0x80`` on x86_64, say) and x86 x32 syscall
  numbers (``>= 0x40000000``): EPERM;
- ``clone3``: ENOSYS, so glibc falls back to ``clone``, whose flags a classic filter can
  read (EPERM would make ``pthread_create`` fail: sandbox.md pitfall 2);
- ``clone`` with any ``CLONE_NEW*`` flag, and ``unshare``/``setns`` whatever they ask:
  EPERM (no new user namespace, hence no capability set to play with);
- ``socket``/``socketpair`` of a family other than AF_UNIX, AF_INET, AF_INET6 and
  AF_NETLINK: EAFNOSUPPORT, what a kernel without that family says;
- ``personality`` other than the query (0xffffffff) and PER_LINUX: EPERM;
- ``prctl(PR_SET_DUMPABLE, 1)`` (any value but 0): EPERM. The callback's processes are
  not dumpable, so ``/proc/self``'s files are root's; a dumpable one could write 5 to
  ``/proc/self/clear_refs``, which resets the peak RSS the usage reports (both wait4's
  and VmHWM). Querying it, and setting 0, stay allowed;
- ``fcntl(F_NOTIFY)`` (dnotify): EPERM, for inotify's reason below (it signals every
  access in a watched directory);
- ``flock``: ENOLCK ("No locks available", what a file system without locks says). A
  callback may open many host files for reading, and a lock needs only that: held on
  ``os.py`` it was a channel between callbacks of different cells, and held on
  debconf's world-readable ``config.dat`` it made the host's apt and dpkg fail for the
  whole run. ``fcntl`` record locks stay
  allowed: SQLite and ``lockf`` use them, and a classic filter cannot read the
  ``struct flock`` that says a read lock from a write lock (the README says what they
  still allow);
- ``setsockopt(IPPROTO_IPV6, IPV6_FLOWLABEL_MGR)``: EPERM. A flow label outlives its
  socket (a linger of up to 150 s) in the cell's network namespace, which the cell's
  later runs share: it carried data from one run, one job's or user's, to the next;
- a file mode with the setuid or setgid bit (``chmod`` and its kin, ``creat``,
  ``mknod``, ``open``/``openat`` creating a file): EPERM. A file the callback makes in a
  read-write bind is the host's too, where ``nosuid`` does not hold: a setuid file
  there would run as the sandbox uid for whoever starts it on the host. ``openat2``,
  whose mode a classic filter cannot read, is ENOSYS (libc then uses ``openat``);
- the calls in ``DENIED`` (io_uring and native Linux AIO, keyrings, bpf, perf events,
  userfaultfd, ptrace and cross-process memory, mounts old and new, modules, kexec,
  clocks, fanotify and inotify, ...): EPERM. Native AIO because its events are a
  host-wide pool (``fs.aio-max-nr``): one ``io_setup(65536)`` took them all from every
  other process until the run ended, at almost no memory cost to the callback. inotify
  because a watch on a host directory a callback sees (``/etc``, the stdlib) shows
  every process's opens there, a sibling callback's imports included (programs such
  as ``tail -f`` fall back to polling);
- everything else: allowed.

A denied call fails with an errno, never a kill: the callback gets a clear error it can
report. Most syscalls are decided without looking at their arguments, so the kernel's
seccomp cache (5.11+) allows them without running the program at all (``fcntl`` and
``setsockopt`` run it, about a dozen instructions, for their argument checks).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from typing import Final

AUDIT_ARCH_X86_64: Final = 0xC000003E
AUDIT_ARCH_AARCH64: Final = 0xC00000B7
X32_SYSCALL_BIT: Final = 0x40000000
ARCHES: Final = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

SECCOMP_RET_ALLOW: Final = 0x7FFF0000
SECCOMP_RET_ERRNO: Final = 0x00050000
EPERM: Final = 1
ENOSYS: Final = 38
EAFNOSUPPORT: Final = 97
ENOLCK: Final = 37
PR_SET_SECCOMP: Final = 22
PR_SET_DUMPABLE: Final = 4
F_NOTIFY: Final = 1026
IPPROTO_IPV6: Final = 41
IPV6_FLOWLABEL_MGR: Final = 32
SECCOMP_MODE_FILTER: Final = 2

# Classic BPF opcodes (linux/filter.h): load a word of seccomp_data, jumps on a
# constant, return a constant.
LD_W_ABS: Final = 0x20
JEQ_K: Final = 0x15
JGE_K: Final = 0x35
JSET_K: Final = 0x45
RET_K: Final = 0x06
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
NR_OFFSET: Final = 0
ARCH_OFFSET: Final = 4
ARGS_OFFSET: Final = 16
# The low 32 bits of args[0]: every argument checked here is an int (clone's flags are
# truncated to 32 bits by the kernel too).
ARG0_LOW: Final = ARGS_OFFSET + (0 if sys.byteorder == "little" else 4)


def arg_low(index: int) -> int:
    """Where the low 32 bits of ``args[index]`` are (modes and open flags are ints)."""
    return ARG0_LOW + 8 * index


# S_ISUID | S_ISGID, and the open flags that create a file (O_CREAT, __O_TMPFILE).
SET_ID_BITS: Final = 0o6000
CREATING_FLAGS: Final = 0o100 | 0o20000000

CLONE_NEW_FLAGS: Final = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
ALLOWED_SOCKET_FAMILIES: Final = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
ALLOWED_PERSONALITIES: Final = (0xFFFFFFFF, 0)  # the query, PER_LINUX

# Syscall numbers: (x86_64, aarch64); None where the architecture has no such call.
# Checked against this machine's asm/unistd_64.h and asm-generic/unistd.h.
SYSCALLS: Final[dict[str, tuple[int | None, int | None]]] = {
    "clone": (56, 220),
    "clone3": (435, 435),
    "socket": (41, 198),
    "socketpair": (53, 199),
    "personality": (135, 92),
    "prctl": (157, 167),
    "unshare": (272, 97),
    "setns": (308, 268),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # Native Linux AIO: one io_setup may reserve the whole host's fs.aio-max-nr.
    "io_setup": (206, 0),
    "io_destroy": (207, 1),
    "io_submit": (209, 2),
    "io_cancel": (210, 3),
    "io_getevents": (208, 4),
    "io_pgetevents": (333, 292),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "open_tree_attr": (467, 467),
    "mount_setattr": (442, 442),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "acct": (163, 89),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "lookup_dcookie": (212, 18),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "syslog": (103, 116),
    "vhangup": (153, 58),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "fanotify_init": (300, 262),
    "inotify_init": (253, None),
    "inotify_init1": (294, 26),
    "chmod": (90, None),
    "fchmod": (91, 52),
    "fchmodat": (268, 53),
    "fchmodat2": (452, 452),
    "creat": (85, None),
    "mknod": (133, None),
    "mknodat": (259, 33),
    "open": (2, None),
    "openat": (257, 56),
    "openat2": (437, 437),
    "fcntl": (72, 25),
    "flock": (73, 32),
    "setsockopt": (54, 208),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
    # A process's own x86 segment table: old attack surface no callback uses (probe 131).
    "modify_ldt": (154, None),
}
# Calls whose file mode is checked: the argument that holds it.
MODE_ARGUMENT: Final = {
    "chmod": 1,
    "fchmod": 1,
    "fchmodat": 2,
    "fchmodat2": 2,
    "creat": 1,
    "mknod": 1,
    "mknodat": 2,
}
# Calls that create a file with a mode only under a flag: (flags argument, mode argument).
OPEN_ARGUMENTS: Final = {"open": (1, 2), "openat": (2, 3)}
# Calls decided by a rule of their own (an argument, or another errno than EPERM).
OWN_RULES: Final = (
    "clone",
    "clone3",
    "socket",
    "socketpair",
    "personality",
    "prctl",
    "openat2",
    "fcntl",
    "flock",
    "setsockopt",
)
# Denied outright with EPERM.
DENIED: Final = tuple(
    name
    for name in SYSCALLS
    if name not in OWN_RULES and name not in MODE_ARGUMENT and name not in OPEN_ARGUMENTS
)

# The calls a zygote's child still makes after the fork, while it confines itself (its
# namespaces and mounts). A zygote puts itself under the filter with these allowed
# (``build(arch, allowing=CONFINING)``), once; each of its children, once confined, adds
# ``build_closing``: a few instructions that refuse them. The two together decide every
# call as the whole filter does (the kernel applies the stricter answer). The kernel
# compiles a program and works out its cache of allowed calls at each install, which for
# the whole filter costs a child ~0.3 ms of CPU; for the closing one, a fraction of that.
CONFINING: Final = ("unshare", "setns", "mount")

# An instruction: (code, jump if true, jump if false, k). Jump targets are labels here,
# offsets once assembled; None is the next instruction.
_Insn = tuple[int, str | None, str | None, int]


def _assemble(lines: list[_Insn | str]) -> bytes:
    """Labels (str) to positions, jumps to offsets (0-255 forward), then sock_filter bytes."""
    positions: dict[str, int] = {}
    insns: list[_Insn] = []
    for line in lines:
        if isinstance(line, str):
            positions[line] = len(insns)
        else:
            insns.append(line)
    program = b""
    for index, (code, if_true, if_false, k) in enumerate(insns):
        offsets = []
        for target in (if_true, if_false):
            offset = 0 if target is None else positions[target] - index - 1
            if not 0 <= offset <= 255:
                raise ValueError(f"jump to {target} out of reach ({offset})")
            offsets.append(offset)
        program += struct.pack("=HBBI", code, offsets[0], offsets[1], k)
    return program


def _ret(value: int) -> _Insn:
    return (RET_K, None, None, value)


def _jeq(k: int, if_true: str | None, if_false: str | None = None) -> _Insn:
    return (JEQ_K, if_true, if_false, k)


# Numbers a leaf of the search tree compares one by one.
_LEAF_NUMBERS: Final = 4


def _search(numbers: list[tuple[int, str]], otherwise: str) -> list[_Insn | str]:
    """A binary search on the syscall number (in the accumulator): each of ``numbers`` to its label.

    Any other number goes to ``otherwise``. A tree, not one comparison after another:
    the kernel runs the program for every syscall number when the filter is installed
    (its cache of calls always allowed), inside each child, and a chain of ~60
    comparisons made that a sixth of the filter's cost; an allowed call now takes
    ~8 comparisons instead of ~60.
    """
    if len(numbers) <= _LEAF_NUMBERS:
        leaf: list[_Insn | str] = [_jeq(number, label) for number, label in numbers[:-1]]
        number, label = numbers[-1]
        return [*leaf, _jeq(number, label, otherwise)]
    middle = len(numbers) // 2
    upper = f"at least {numbers[middle][0]}"
    return [
        (JGE_K, upper, None, numbers[middle][0]),
        *_search(numbers[:middle], otherwise),
        upper,
        *_search(numbers[middle:], otherwise),
    ]


def build(arch: str, *, allowing: tuple[str, ...] = ()) -> bytes:
    """The filter program for ``arch`` (a key of ``ARCHES``), as ``struct sock_filter`` bytes.

    ``allowing``: calls of ``DENIED`` to allow after all (a zygote's own filter).
    """
    column = list(ARCHES).index(arch)

    def nr(name: str) -> int | None:
        return SYSCALLS[name][column]

    lines: list[_Insn | str] = [
        (LD_W_ABS, None, None, ARCH_OFFSET),
        _jeq(ARCHES[arch], None, "eperm"),
        (LD_W_ABS, None, None, NR_OFFSET),
    ]
    if arch == "x86_64":
        lines.append((JGE_K, "eperm", None, X32_SYSCALL_BIT))
    decided: dict[int, str] = {}
    for name, target in (
        ("clone3", "enosys"),
        ("openat2", "enosys"),
        ("clone", "clone"),
        ("socket", "socket"),
        ("socketpair", "socket"),
        ("personality", "personality"),
        ("prctl", "prctl"),
        ("fcntl", "fcntl"),
        ("flock", "enolck"),
        ("setsockopt", "setsockopt"),
    ):
        number = nr(name)
        if number is None:  # every architecture the filter knows has these
            raise ValueError(f"no syscall number for {name} on {arch}")
        decided[number] = target
    for name in DENIED:
        number = nr(name)
        if number is not None and name not in allowing:
            decided[number] = "eperm"
    for name, index in MODE_ARGUMENT.items():
        if (number := nr(name)) is not None:
            decided[number] = f"mode in {index}"
    for name in OPEN_ARGUMENTS:
        if (number := nr(name)) is not None:
            decided[number] = name
    lines += _search(sorted(decided.items()), "allow")
    # An open that creates a file goes on to its mode's check (a jump forward).
    for name, (flags, mode) in OPEN_ARGUMENTS.items():
        lines += [
            name,
            (LD_W_ABS, None, None, arg_low(flags)),
            (JSET_K, f"mode in {mode}", "allow", CREATING_FLAGS),
        ]
    for index in sorted({*MODE_ARGUMENT.values(), *(m for _, m in OPEN_ARGUMENTS.values())}):
        lines += [
            f"mode in {index}",
            (LD_W_ABS, None, None, arg_low(index)),
            (JSET_K, "eperm", "allow", SET_ID_BITS),
        ]
    lines += [
        # Classic BPF jumps only forward: the blocks that read an argument come before
        # the shared returns they end in.
        "clone",
        (LD_W_ABS, None, None, ARG0_LOW),
        (JSET_K, "eperm", "allow", CLONE_NEW_FLAGS),
        "socket",
        (LD_W_ABS, None, None, ARG0_LOW),
        *(_jeq(family, "allow") for family in ALLOWED_SOCKET_FAMILIES),
        _ret(SECCOMP_RET_ERRNO | EAFNOSUPPORT),
        "prctl",
        (LD_W_ABS, None, None, ARG0_LOW),
        _jeq(PR_SET_DUMPABLE, None, "allow"),
        # Its value is an unsigned long: one whose low half is 0 but not the rest is
        # refused by the kernel (EINVAL).
        (LD_W_ABS, None, None, arg_low(1)),
        _jeq(0, "allow", "eperm"),
        "fcntl",
        (LD_W_ABS, None, None, arg_low(1)),  # its command, an unsigned int
        _jeq(F_NOTIFY, "eperm", "allow"),
        "setsockopt",
        (LD_W_ABS, None, None, arg_low(1)),  # level and option name are ints
        _jeq(IPPROTO_IPV6, None, "allow"),
        (LD_W_ABS, None, None, arg_low(2)),
        _jeq(IPV6_FLOWLABEL_MGR, "eperm", "allow"),
        "personality",
        (LD_W_ABS, None, None, ARG0_LOW),
        *(_jeq(persona, "allow") for persona in ALLOWED_PERSONALITIES),
        "eperm",
        _ret(SECCOMP_RET_ERRNO | EPERM),
        "allow",
        _ret(SECCOMP_RET_ALLOW),
        "enosys",
        _ret(SECCOMP_RET_ERRNO | ENOSYS),
        "enolck",
        _ret(SECCOMP_RET_ERRNO | ENOLCK),
    ]
    return _assemble(lines)


def build_closing(arch: str) -> bytes:
    """What a zygote's child adds to its zygote's filter once confined: ``CONFINING`` refused.

    Another architecture's calls are left to the zygote's filter, which refuses them all.
    """
    column = list(ARCHES).index(arch)
    numbers = [number for name in CONFINING if (number := SYSCALLS[name][column]) is not None]
    return _assemble(
        [
            (LD_W_ABS, None, None, ARCH_OFFSET),
            _jeq(ARCHES[arch], None, "allow"),
            (LD_W_ABS, None, None, NR_OFFSET),
            *(_jeq(number, "eperm") for number in numbers),
            "allow",
            _ret(SECCOMP_RET_ALLOW),
            "eperm",
            _ret(SECCOMP_RET_ERRNO | EPERM),
        ]
    )


def native_arch() -> str | None:
    """This machine's architecture when the filter knows it, else None."""
    machine = os.uname().machine
    return machine if machine in ARCHES else None


# -- installing it, in the child -------------------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class Prepared:
    """A program ready for prctl: the sock_fprog and the buffer it points to.

    Made before a zygote forks (``launcher.prepare_filter``), so a child only passes it
    on: building ctypes objects in a forked child writes to the shared heap.
    """

    def __init__(self, program: bytes) -> None:
        self.buffer = ctypes.create_string_buffer(program, len(program))
        self.fprog = _SockFprog(len(program) // 8, ctypes.addressof(self.buffer))
        self.pointer = ctypes.byref(self.fprog)


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # looked up now and called by this name, as launcher.py explains


def install(prepared: Prepared) -> None:
    """Put this process (and everything it starts) under the filter; needs no_new_privs."""
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prepared.pointer, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"seccomp filter: {os.strerror(errno)}")
