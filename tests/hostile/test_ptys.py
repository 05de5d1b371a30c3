"""Hostile callbacks against the host's pty pool: each child has a devpts instance of its own.

On the host's instance a callback opened ptys out of the host's whole pool
(``kernel.pty.max``) until nobody on the host, nor any other callback, could get a
terminal. Now each child mounts its own instance on ``/dev/pts`` (``/dev/ptmx`` reaches
it), of at most ``PTYS`` ptys: past them it gets ENOSPC, the host's count grows by no
more, and a callback beside it still gets its own. A pty still works inside a callback.

They run on both launch paths (``arena``): each mounts the instance in its own way.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os

import pytest

from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

# tier.PTYS_PER_CHILD, spelled out: the test says what a callback must see.
PTYS = 16
WAIT_S = 10

# Opens up to 1000 ptys and holds them until a callback beside it has opened one of its
# own (the host's count goes past what it was with these open); then lets one of its own
# go, the bystander's sign to end, and waits until it has (each wait at most WAIT_S).
# The count is read through a descriptor opened first: none is left once the ptys are.
HOARD = {
    "python": r"""
import json, os, time
count = os.open('/proc/sys/kernel/pty/nr', os.O_RDONLY)
def host_ptys():
    return int(os.pread(count, 32, 0))
seen = {'before': host_ptys(), 'pts_device': os.stat('/dev/pts').st_dev, 'error': 0}
held = []
try:
    while len(held) < 1000:
        held.append(os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY))
except OSError as err:
    seen['error'] = err.errno
seen['opened'] = len(held)
seen['after'] = after = host_ptys()
deadline = time.monotonic() + WAIT_S
while host_ptys() <= after and time.monotonic() < deadline:
    time.sleep(0.05)
seen['overlapped'] = host_ptys() > after
if held:
    os.close(held.pop())
while host_ptys() >= after and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps(seen))
""",
    "perl": r"""
use POSIX ();
open(my $count, '<', '/proc/sys/kernel/pty/nr') or die "pty/nr: $!";
sub host_ptys {
    sysseek($count, 0, 0);
    sysread($count, my $n, 32);
    return $n + 0;
}
my %seen = (before => host_ptys(), pts_device => (stat '/dev/pts')[0], error => 0);
my @held;
while (@held < 1000) {
    if (!sysopen(my $pty, '/dev/ptmx', POSIX::O_RDWR() | POSIX::O_NOCTTY())) {
        $seen{error} = $! + 0;
        last;
    } else {
        push @held, $pty;
    }
}
$seen{opened} = scalar @held;
my $after = $seen{after} = host_ptys();
my $deadline = time + WAIT_S;
select(undef, undef, undef, 0.05) while host_ptys() <= $after && time < $deadline;
$seen{overlapped} = host_ptys() > $after ? 1 : 0;
pop @held;
select(undef, undef, undef, 0.05) while host_ptys() >= $after && time < $deadline;
print qb::JSON::encode(\%seen);
""",
}

# Beside the hoarder: once the host's count shows its ptys, one pty of its own, held
# until the hoarder has seen it (it lets one of its own go).
BYSTANDER = r"""
import os, time
count = os.open('/proc/sys/kernel/pty/nr', os.O_RDONLY)
def host_ptys():
    return int(os.pread(count, 32, 0))
deadline = time.monotonic() + WAIT_S
while host_ptys() < PTYS and time.monotonic() < deadline:
    time.sleep(0.05)
master, terminal = os.openpty()
mine = host_ptys()
print(os.ttyname(terminal), flush=True)
while host_ptys() >= mine and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _code(template: str) -> str:
    return template.replace("WAIT_S", str(WAIT_S)).replace("PTYS", str(PTYS))


def _require_hardened(arena: Arena) -> None:
    if arena.stack.running.options.isolation is None:
        pytest.skip("a devpts instance per child needs private mounts (the hardened tier)")


async def test_a_callback_hoarding_ptys_gets_a_few_and_leaves_the_pool_to_others(
    arena: Arena, language: str
) -> None:
    _require_hardened(arena)
    hoard, bystander = await asyncio.gather(
        arena.attack(_code(HOARD[language]), language=language),
        arena.run(_code(BYSTANDER)),
    )

    assert_outcome(hoard, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(hoard.stdout)
    assert (seen["opened"], seen["error"]) == (PTYS, errno.ENOSPC), seen
    # The host's pool lost no more than the callback's own instance holds.
    assert seen["after"] - seen["before"] <= PTYS, seen
    # An instance of its own: not the one the host's terminals are in.
    assert seen["pts_device"] != os.stat("/dev/pts").st_dev
    # A callback running beside the full one got a pty, the first of its own instance.
    assert_outcome(bystander, Outcome.OUTCOME_SUCCEEDED)
    assert bystander.stdout == "/dev/pts/0\n"
    assert seen["overlapped"], "the bystander's pty was not open while the hoarder held its own"


USE_ONE = {
    "python": r"""
import json, os, pty
seen = {}
master, terminal = pty.openpty()
seen['pty.openpty'] = os.ttyname(terminal)
os.write(master, b'hello\n')
seen['echo'] = os.read(terminal, 64).decode()
other, other_terminal = os.openpty()
seen['os.openpty'] = os.ttyname(other_terminal)
seen['own'] = os.stat(os.ttyname(terminal)).st_uid == os.getuid()
seen['listing'] = sorted(os.listdir('/dev/pts'))
print(json.dumps(seen))
""",
    # posix_openpt, unlockpt and ptsname as libc makes them (POSIX.pm has none of them);
    # IO::Pty where it is installed.
    "perl": r"""
use POSIX ();
my %seen;
sysopen(my $master, '/dev/ptmx', POSIX::O_RDWR() | POSIX::O_NOCTTY()) or die "ptmx: $!";
my $unlock = pack('i', 0);
ioctl($master, 0x40045431, $unlock) or die "unlockpt: $!";    # TIOCSPTLCK
my $number = pack('I', 0);
ioctl($master, 0x80045430, $number) or die "ptsname: $!";    # TIOCGPTN
my $name = '/dev/pts/' . unpack('I', $number);
sysopen(my $terminal, $name, POSIX::O_RDWR() | POSIX::O_NOCTTY()) or die "$name: $!";
syswrite($master, "hello\n");
sysread($terminal, my $line, 64);
$seen{posix_openpt} = $name;
$seen{echo} = $line;
$seen{own} = (stat $name)[4] == $< ? 1 : 0;
if (eval { require IO::Pty; 1 }) {
    my $pty = IO::Pty->new;
    $seen{io_pty} = $pty->ttyname;
}
opendir(my $ptys, '/dev/pts') or die "/dev/pts: $!";
$seen{listing} = [sort grep { !/\A\.\.?\z/ } readdir $ptys];
print qb::JSON::encode(\%seen);
""",
}


async def test_a_callback_can_still_use_a_pty(arena: Arena, language: str) -> None:
    _require_hardened(arena)
    response = await arena.attack(USE_ONE[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(response.stdout)
    listing = [str(name) for name in seen["listing"]]  # Perl's JSON gives 0 as a number
    assert seen["echo"] == "hello\n"
    assert seen["own"]
    # Only its own ptys in sight, numbered from 0: none of the host's terminals.
    if language == "python":
        assert (seen["pty.openpty"], seen["os.openpty"]) == ("/dev/pts/0", "/dev/pts/1")
        assert listing == ["0", "1", "ptmx"]
    else:
        assert seen["posix_openpt"] == "/dev/pts/0"
        if "io_pty" in seen:
            assert seen["io_pty"] == "/dev/pts/1"
            assert listing == ["0", "1", "ptmx"]
        else:
            assert listing == ["0", "ptmx"]
