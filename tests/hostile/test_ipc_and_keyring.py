"""Hostile callbacks that leave kernel objects behind: IPC, keys, flow labels, hidden sockets.

Each child has an IPC namespace of its own, so what it makes there dies with the run and
is seen by no other cell; the syscall filter denies keyctl, add_key and request_key, so
nothing reaches the kernel keyring that a later run of the same cell uid could read.
A cell's network namespace serves all its runs on the warm path: the filter denies IPv6
flow labels (which outlive their socket), and a zygote gives the cell a fresh namespace
when a socket of an earlier run is still in it (hidden in flight, not yet collected).
They run on both launch paths (``arena``): how a child starts decides its namespaces.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import running_stack, stack_settings
from tests.hostile.harness import MIB, Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(90)]

# Made by a Python callback: a 0666 SysV segment holding a secret, a message queue, a
# semaphore set (all under KEY) and a POSIX message queue; then it waits (HOLD_S) so that
# callbacks of other cells can look while it still runs.
LEAVE_IPC = r"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
made = []
shm = libc.shmget(KEY, 1 << 20, 0o1666)  # IPC_CREAT | 0666
if shm >= 0:
    address = libc.shmat(shm, None, 0)
    ctypes.memmove(address, b'SECRET-{TOKEN}', 21)
    libc.shmdt(ctypes.c_void_p(address))
    made.append('shm')
if libc.msgget(KEY + 1, 0o1666) >= 0:
    made.append('msg')
if libc.semget(KEY + 2, 1, 0o1666) >= 0:
    made.append('sem')
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
if libc.mq_open(b'/{TOKEN}', os.O_CREAT | os.O_RDWR, 0o666, None) >= 0:
    made.append('mq')
print(' '.join(made), flush=True)
time.sleep(HOLD_S)
"""

# Looks for what LEAVE_IPC made (from another cell, or later): what it found, if anything.
FIND_IPC = {
    "python": r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
found = []
shm = libc.shmget(KEY, 0, 0)
if shm >= 0:
    address = libc.shmat(shm, None, 0o10000)  # SHM_RDONLY
    found.append('shm:' + ctypes.string_at(address, 21).decode(errors='replace'))
if libc.msgget(KEY + 1, 0) >= 0:
    found.append('msg')
if libc.semget(KEY + 2, 1, 0) >= 0:
    found.append('sem')
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
if libc.mq_open(b'/{TOKEN}', os.O_RDONLY, 0, None) >= 0:
    found.append('mq')
print('found', ' '.join(found) or 'nothing')
""",
    "perl": r"""
my @found;
my $shm = shmget(KEY, 0, 0);
if (defined $shm) {
    my $secret = '';
    shmread($shm, $secret, 0, 21);
    push @found, "shm:$secret";
}
push @found, 'msg' if defined msgget(KEY + 1, 0);
push @found, 'sem' if defined semget(KEY + 2, 1, 0);
print 'found ', (@found ? join(' ', @found) : 'nothing'), "\n";
""",
}

HOLD_S = 4.0


def _code(template: str, key: int, token: str) -> str:
    return (
        template.replace("KEY", str(key)).replace("HOLD_S", str(HOLD_S)).replace("{TOKEN}", token)
    )


def _host_sysv_keys() -> set[int]:
    """The SysV keys of the host's IPC namespace (this test process's)."""
    keys: set[int] = set()
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as table:
            next(table)
            keys.update(int(line.split()[0]) for line in table if line.strip())
    return keys


async def test_ipc_objects_are_seen_by_no_other_cell_and_die_with_the_run(arena: Arena) -> None:
    key = random.randint(0x10000000, 0x7FFFFF00)
    token = f"cbexec-hostile-{os.urandom(6).hex()}"

    async def look_later(language: str) -> str:
        await asyncio.sleep(1.5)  # the leaver has made its objects by then
        response = await arena.run(_code(FIND_IPC[language], key, token), language=language)
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
        return response.stdout.strip()

    leaver, from_python, from_perl = await asyncio.gather(
        arena.run(_code(LEAVE_IPC, key, token), limits={"wall_seconds": 10}),
        look_later("python"),
        look_later("perl"),
    )

    assert_outcome(leaver, Outcome.OUTCOME_SUCCEEDED)
    assert leaver.stdout.split() == ["shm", "msg", "sem", "mq"], leaver.stdout + leaver.stderr
    # Another cell, while the leaver still ran: nothing of it, in Python or in Perl.
    assert from_python == "found nothing", from_python
    assert from_perl == "found nothing", from_perl
    # And on the host once it has ended: no SysV object, no POSIX queue.
    later = await arena.run(_code(FIND_IPC["python"], key, token))
    assert later.stdout.strip() == "found nothing", later.stdout
    assert not {key, key + 1, key + 2} & _host_sysv_keys()
    if os.path.isdir("/dev/mqueue"):
        assert token not in os.listdir("/dev/mqueue")
    await arena.assert_nothing_survives()


@pytest.fixture(params=["zygote", "cold"])
async def one_cell(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Arena]:
    """An arena whose executor has a single slot: every Python run is in the same cell."""
    settings = stack_settings(tmp_path / "data", launcher=request.param, max_concurrent=1)
    async with running_stack(settings) as stack:
        yield Arena(stack, tmp_path)


async def test_a_segment_left_behind_does_not_count_against_the_next_run(one_cell: Arena) -> None:
    cgroups = one_cell.stack.running.options.cgroups
    if cgroups is None or "memory" not in cgroups.controllers:
        pytest.skip("no memory cgroup: a segment would count against nobody")
    limits = {"memory_bytes": 320 * MIB, "wall_seconds": 20}
    # 200 MiB of shared memory, touched and left behind (no IPC_RMID), under 320 MiB.
    leave = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "shm = libc.shmget(0, 200 << 20, 0o1600)  # IPC_PRIVATE\n"
        "address = libc.shmat(shm, None, 0)\n"
        "ctypes.memset(address, 1, 200 << 20)\n"
        "libc.shmdt(ctypes.c_void_p(address))\n"
        "print('left', shm)\n"
    )
    innocent = (
        "block = bytearray(150 << 20)\nblock[::4096] = b'x' * len(block[::4096])\nprint('fine')\n"
    )

    left = await one_cell.run(leave, limits=limits)
    assert_outcome(left, Outcome.OUTCOME_SUCCEEDED)
    assert left.stdout.startswith("left"), left.stdout + left.stderr
    for _ in range(3):  # the same cell each time: one slot
        response = await one_cell.run(innocent, limits=limits)
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
        assert response.stdout.strip() == "fine"
    await one_cell.assert_nothing_survives()


# Tries to leave IPv6 flow labels in its network namespace (CREATE|EXCL, share ANY,
# linger and expiry 120 s: they would outlive the socket and the run); prints what each
# attempt gave.
LEAVE_FLOW_LABELS = {
    "python": r"""
import socket, struct
destination = socket.inet_pton(socket.AF_INET6, '2001:db8::1')
seen = []
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
    for label in LABELS:
        # struct in6_flowlabel_req: dst, label, action GET, share ANY, flags, expires, linger
        request = struct.pack(
            '16sIBBHHHI', destination, socket.htonl(label), 0, 255, 3, 120, 120, 0
        )
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, 32, request)  # IPV6_FLOWLABEL_MGR
            seen.append('made')
        except OSError as err:
            seen.append(f'errno {err.errno}')
print(' '.join(seen))
""",
    "perl": r"""
socket(my $sock, 10, 2, 0) or die "socket: $!";  # AF_INET6, SOCK_DGRAM
my $destination = pack('n8', 0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
my @seen;
for my $label (@{[LABELS]}) {
    my $request = pack('a16 N C C S S S L', $destination, $label, 0, 255, 3, 120, 120, 0);
    push @seen, setsockopt($sock, 41, 32, $request) ? 'made' : 'errno ' . ($! + 0);
}
print join(' ', @seen), "\n";
""",
}
# The flow labels its network namespace holds, as the kernel lists them.
FIND_FLOW_LABELS = {
    "python": r"""
with open('/proc/net/ip6_flowlabel') as table:
    labels = [line.split()[0] for line in list(table)[1:]]
print('labels', ' '.join(labels) or 'none')
""",
    "perl": r"""
open(my $table, '<', '/proc/net/ip6_flowlabel') or die "ip6_flowlabel: $!";
my (undef, @rows) = <$table>;
my @labels = map { (split)[0] } @rows;
print 'labels ', (@labels ? join(' ', @labels) : 'none'), "\n";
""",
}


async def test_no_flow_label_crosses_into_the_cells_next_run(
    one_cell: Arena, language: str
) -> None:
    # A cell's runs share its network namespace on the warm path; a label outlives its
    # socket there (its linger), so which labels existed carried data to the next run.
    if not os.path.exists("/proc/net/ip6_flowlabel"):
        pytest.skip("no IPv6 in this kernel")
    base = random.randrange(0x10000, 0xFF000)
    labels = [base + bit for bit in (0, 2, 3, 5)]
    leave = LEAVE_FLOW_LABELS[language].replace("LABELS", repr(tuple(labels)))

    left = await one_cell.run(leave, language=language)
    found = await one_cell.run(FIND_FLOW_LABELS[language], language=language)

    assert_outcome(left, Outcome.OUTCOME_SUCCEEDED)
    assert_outcome(found, Outcome.OUTCOME_SUCCEEDED)
    assert found.stdout == "labels none\n", f"the next run found {found.stdout!r}"
    assert left.stdout.split() == ["errno", "1"] * len(labels), left.stdout  # EPERM
    await one_cell.assert_nothing_survives()


# Binds abstract Unix sockets under NAMES and hides them in flight, in a message queued on
# a socket pair that only that message holds (a cycle for the kernel's garbage collector
# to find), then exits: they outlive the run until the collector has run.
HIDE_ABSTRACT_SOCKETS = {
    "python": r"""
import array, os, socket
hidden = []
for name in NAMES:
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(b'\0' + name.encode())
    bound.listen()
    hidden.append(bound)
here, there = socket.socketpair()
descriptors = array.array('i', [there.fileno(), *(bound.fileno() for bound in hidden)])
here.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, descriptors)])
print('hidden', len(hidden), flush=True)
os._exit(0)
""",
    "perl": r"""
use Socket qw(AF_UNIX SOCK_STREAM SOL_SOCKET SCM_RIGHTS);
$| = 1;
my @hidden;
for my $name (@{[NAMES]}) {
    socket(my $bound, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
    bind($bound, pack('S', AF_UNIX) . "\0$name") or die "bind: $!";
    listen($bound, 1) or die "listen: $!";
    push @hidden, $bound;
}
socketpair(my $here, my $there, AF_UNIX, SOCK_STREAM, 0) or die "socketpair: $!";
my @fds = (fileno $there, map { fileno $_ } @hidden);
my $rights = pack('Q i i', 16 + 4 * @fds, SOL_SOCKET, SCM_RIGHTS) . pack('i*', @fds);
$rights .= "\0" x ((8 - length($rights) % 8) % 8);
my $buffer = 'x';
# struct msghdr: name, namelen, iov, iovlen, control, controllen, flags
my $iov = pack('P Q', $buffer, 1);
my $header = pack('Q L x4 P Q P Q i x4', 0, 0, $iov, 1, $rights, length $rights, 0);
syscall(SYS_sendmsg, fileno $here, $header, 0) >= 0 or die "sendmsg: $!";
print 'hidden ', scalar @hidden, "\n";
POSIX::_exit(0);
""",
}
# Which of NAMES can be bound (a name still taken was left by an earlier run).
BIND_ABSTRACT_SOCKETS = {
    "python": r"""
import socket
taken = []
for name in NAMES:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(b'\0' + name.encode())
        except OSError:
            taken.append(name)
print('taken', ' '.join(taken) or 'none')
""",
    "perl": r"""
use Socket qw(AF_UNIX SOCK_STREAM);
my @taken;
for my $name (@{[NAMES]}) {
    socket(my $probe, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
    push @taken, $name if !bind($probe, pack('S', AF_UNIX) . "\0$name");
}
print 'taken ', (@taken ? join(' ', @taken) : 'none'), "\n";
""",
}
SENDMSG = {"x86_64": 46, "aarch64": 211}


async def test_no_abstract_socket_hidden_in_flight_reaches_the_cells_next_run(
    one_cell: Arena, language: str
) -> None:
    # Such sockets outlive the run until the kernel's garbage collector frees them; when
    # that had not happened yet, the cell's next run found the names taken (1 run in 3).
    if os.uname().machine not in SENDMSG:
        pytest.skip(f"no sendmsg number for {os.uname().machine}")
    for attempt in range(6):
        names = tuple(f"cbexec-hidden-{attempt}-{os.urandom(4).hex()}" for _ in range(3))
        hide = HIDE_ABSTRACT_SOCKETS[language].replace("NAMES", repr(names))
        hide = hide.replace("SYS_sendmsg", str(SENDMSG[os.uname().machine]))
        bind = BIND_ABSTRACT_SOCKETS[language].replace("NAMES", repr(names))

        hidden = await one_cell.run(hide, language=language)
        bound = await one_cell.run(bind, language=language)

        assert_outcome(hidden, Outcome.OUTCOME_SUCCEEDED)
        assert_outcome(bound, Outcome.OUTCOME_SUCCEEDED)
        assert hidden.stdout == "hidden 3\n", hidden.stdout + hidden.stderr
        assert bound.stdout == "taken none\n", f"run {attempt}: the next run found {bound.stdout!r}"
    await one_cell.assert_nothing_survives()


# Adds a key holding a secret to the cell uid's user keyring (KEY_SPEC_USER_KEYRING),
# then looks for one an earlier run added; prints what each step gave.
KEYRING = {
    "python": r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
secret = b'SECRET-{TOKEN}'
added = libc.syscall(SYS_ADD_KEY, b'user', b'cbexec-hostile-key', secret, len(secret), -4)
add = 'added' if added > 0 else f'errno {ctypes.get_errno()}'
found = libc.syscall(SYS_KEYCTL, 10, -4, b'user', b'cbexec-hostile-key', 0)  # KEYCTL_SEARCH
read = f'errno {ctypes.get_errno()}'
if found > 0:
    buffer = ctypes.create_string_buffer(256)
    size = libc.syscall(SYS_KEYCTL, 11, found, buffer, 256)  # KEYCTL_READ
    read = buffer.raw[:max(size, 0)].decode(errors='replace')
print(f'add: {add}; earlier: {read}')
""",
    "perl": r"""
# Variables, not literals: syscall() may write to its string arguments.
my ($type, $description, $secret) = ('user', 'cbexec-hostile-key', 'SECRET-{TOKEN}');
my $added = syscall(SYS_ADD_KEY, $type, $description, $secret, length $secret, -4);
my $add = $added > 0 ? 'added' : 'errno ' . ($! + 0);
my $found = syscall(SYS_KEYCTL, 10, -4, $type, $description, 0);
my $read = 'errno ' . ($! + 0);
if ($found > 0) {
    my $buffer = "\0" x 256;
    my $size = syscall(SYS_KEYCTL, 11, $found, $buffer, 256);
    $read = substr($buffer, 0, $size > 0 ? $size : 0);
}
print "add: $add; earlier: $read\n";
""",
}
SYSCALL_NUMBERS = {
    "x86_64": {"ADD_KEY": 248, "KEYCTL": 250},
    "aarch64": {"ADD_KEY": 217, "KEYCTL": 219},
}


def _keyring_code(language: str, token: str) -> str:
    numbers = SYSCALL_NUMBERS.get(os.uname().machine)
    if numbers is None:
        pytest.skip(f"no syscall numbers for {os.uname().machine}")
    code = KEYRING[language].replace("{TOKEN}", token)
    return code.replace("SYS_ADD_KEY", str(numbers["ADD_KEY"])).replace(
        "SYS_KEYCTL", str(numbers["KEYCTL"])
    )


async def test_nothing_left_in_the_keyring_reaches_a_later_run(arena: Arena, language: str) -> None:
    token = f"cbexec-hostile-{os.urandom(6).hex()}"
    code = _keyring_code(language, token)
    # Every cell of the language gets the key offered, then each is asked again.
    runs = [await arena.run(code, language=language) for _ in range(8)]

    for response in runs:
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
        assert token not in response.stdout, "a run read the key an earlier run left"
        assert response.stdout.strip() == "add: errno 1; earlier: errno 1", response.stdout
    await arena.assert_nothing_survives()


@pytest.mark.parametrize("launcher", ["zygote", "cold"])
async def test_nothing_left_in_the_keyring_survives_an_executor_restart(
    tmp_path: Path, launcher: str
) -> None:
    token = f"cbexec-hostile-{os.urandom(6).hex()}"
    code = _keyring_code("python", token)
    # One slot: both executors run it in cell 0, as the same uid.
    settings = stack_settings(tmp_path / "data", launcher=launcher, max_concurrent=1)
    seen = []
    for _ in range(2):
        async with running_stack(settings) as stack:
            arena = Arena(stack, tmp_path)
            response = await arena.run(code)
            await arena.assert_nothing_survives()
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
        seen.append(response.stdout.strip())

    assert token not in seen[1], "the run after the restart read the key left before it"
    assert seen == ["add: errno 1; earlier: errno 1"] * 2, seen
