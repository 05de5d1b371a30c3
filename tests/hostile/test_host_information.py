"""Hostile callbacks that look for other callbacks and for the host: abstract sockets, interfaces, cgroups, /run.

- Abstract Unix sockets live in a network namespace: each cell has its own (a zygote
  makes one per cell; a cold child one of its own), so a callback that listens on one
  is reached by no callback of another cell, and hands nobody its secrets or its
  working directory over SCM_RIGHTS.
- The bridge socket was made in an empty network namespace: SIOCGIFCONF on it lists
  none of the host's interfaces. The host's interfaces in sysfs, its daemons' sockets
  under /run and the cgroup tree are masked, and a cgroup namespace rooted at the cell
  keeps the executor's pid out of /proc/self/cgroup.

They run on both launch paths (``arena``): how a child starts decides its namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.child.isolation import under
from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

HOLD_S = 4.0

# Listens on an abstract socket; hands each caller a secret (and, from Python, its
# working directory).
LISTEN = {
    "python": r"""
import array, os, socket
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(b'\0{TOKEN}')
server.listen(8)
server.settimeout(HOLD_S)
print('listening', flush=True)
served = 0
try:
    while True:
        conn, _ = server.accept()
        cwd = os.open('.', os.O_RDONLY)
        conn.sendmsg([b'SECRET-{TOKEN}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [cwd]))])
        conn.close()
        served += 1
except (TimeoutError, socket.timeout):
    pass
print('served', served)
""",
    "perl": r"""
use Socket qw(AF_UNIX SOCK_STREAM SOL_SOCKET SO_RCVTIMEO pack_sockaddr_un);
socket(my $server, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
bind($server, pack_sockaddr_un("\0{TOKEN}")) or die "bind: $!";
listen($server, 8) or die "listen: $!";
$| = 1;
print "listening\n";
my ($served, $until) = (0, time + HOLD_S);
while (time < $until) {
    my $wanted = '';
    vec($wanted, fileno $server, 1) = 1;
    next if !select(my $ready = $wanted, undef, undef, 0.2);
    accept(my $conn, $server) or next;
    syswrite($conn, 'SECRET-{TOKEN}');
    close $conn;
    $served++;
}
print "served $served\n";
""",
}

# Tries the listener's abstract socket for a while; says what it got.
CONNECT = {
    "python": r"""
import array, os, socket, time
result = 'refused'
deadline = time.monotonic() + 2.5
while time.monotonic() < deadline:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(b'\0{TOKEN}')
    except OSError:
        client.close()
        time.sleep(0.05)
        continue
    message, ancillary, _, _ = client.recvmsg(100, socket.CMSG_SPACE(4))
    result = f'connected {message.decode()} with {len(ancillary)} fds'
    break
print(result)
""",
    "perl": r"""
use Socket qw(AF_UNIX SOCK_STREAM pack_sockaddr_un);
use Time::HiRes ();
my $result = 'refused';
my $deadline = Time::HiRes::time() + 2.5;
while (Time::HiRes::time() < $deadline) {
    socket(my $client, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
    if (connect($client, pack_sockaddr_un("\0{TOKEN}"))) {
        sysread($client, my $secret, 100);
        $result = "connected $secret";
        last;
    }
    close $client;
    Time::HiRes::sleep(0.05);
}
print "$result\n";
""",
}


def _fill(code: str, token: str) -> str:
    return code.replace("{TOKEN}", token).replace("HOLD_S", str(HOLD_S))


async def test_abstract_sockets_do_not_cross_callbacks(arena: Arena, language: str) -> None:
    token = f"cbexec-hostile-{os.urandom(6).hex()}"

    async def connect_later() -> str:
        await asyncio.sleep(0.5)
        response = await arena.run(_fill(CONNECT[language], token), language=language)
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
        return response.stdout.strip()

    # Two at once: never the same cell (one run per cell at a time); of one language, so
    # of one zygote.
    listener, connector = await asyncio.gather(
        arena.run(_fill(LISTEN[language], token), language=language, limits={"wall_seconds": 10}),
        connect_later(),
    )

    assert_outcome(listener, Outcome.OUTCOME_SUCCEEDED)
    assert listener.stdout.split("\n")[0] == "listening", listener.stdout + listener.stderr
    assert connector == "refused", connector
    assert listener.stdout.split()[-2:] == ["served", "0"]
    await arena.assert_nothing_survives()


# What a callback can learn of the host: SIOCGIFCONF on its bridge (fd 3), the network
# interfaces in sysfs (DEVICE_DIRS: where the host keeps them), its cgroups, the cgroup
# tree, /run, and whether a host daemon's 0666 socket under /run answers (DAEMON).
LOOK_AT_THE_HOST = {
    "python": r"""
import array, fcntl, json, os, socket, struct
seen = {}
buffer = array.array('B', bytes(4096))
request = struct.pack('iL', len(buffer), buffer.buffer_info()[0])
length = struct.unpack('iL', fcntl.ioctl(3, 0x8912, request))[0]  # SIOCGIFCONF
raw = buffer.tobytes()[:length]
seen['ifconf'] = [
    [raw[i:i + 16].split(b'\0')[0].decode(), socket.inet_ntoa(raw[i + 20:i + 24])]
    for i in range(0, length, 40)
]
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as err:
        return f'errno {err.errno}'
seen['dirs'] = {path: listing(path) for path in DEVICE_DIRS + ['/sys/fs/cgroup', '/run']}
seen['cgroup'] = open('/proc/self/cgroup').read()
daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    daemon.connect(DAEMON)
    seen['daemon'] = 'answered'
except OSError as err:
    seen['daemon'] = f'errno {err.errno}'
print(json.dumps(seen))
""",
    "perl": r"""
use Socket qw(AF_UNIX SOCK_STREAM pack_sockaddr_un);
my %seen;
open(my $bridge, '+<&=', 3) or die "bridge: $!";
my $buffer = "\0" x 4096;
my $request = pack('i x4 p', length $buffer, $buffer);
ioctl($bridge, 0x8912, $request) or die "SIOCGIFCONF: $!";
my $length = unpack('i', $request);
$seen{ifconf} = [map {
    my ($name, $address) = unpack('Z16 x4 a4', substr($buffer, $_, 40));
    [$name, join('.', unpack('C4', $address))]
} grep { $_ % 40 == 0 } 0 .. $length - 1];
for my $path (DEVICE_DIRS, '/sys/fs/cgroup', '/run') {
    my $dir;
    $seen{dirs}{$path} = opendir($dir, $path)
        ? [sort grep { !/\A\.\.?\z/ } readdir $dir] : 'errno ' . ($! + 0);
}
open(my $cgroup, '<', '/proc/self/cgroup') or die "cgroup: $!";
$seen{cgroup} = join('', <$cgroup>);
socket(my $daemon, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
$seen{daemon} = 'errno ' . ($! + 0) if !connect($daemon, pack_sockaddr_un(DAEMON));
$seen{daemon} //= 'answered';
print qb::JSON::encode(\%seen);
""",
}


def _host_interfaces() -> dict[str, str]:
    """The host's interfaces, by name, and the sysfs directory of each one's device."""
    return {
        name: os.path.dirname(os.path.realpath(f"/sys/class/net/{name}"))
        for _, name in socket.if_nameindex()
    }


@contextlib.contextmanager
def host_daemon(path: str) -> Iterator[None]:
    """A 0666 Unix socket under /run that answers anyone who connects (a host daemon)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        os.chmod(path, 0o666)  # noqa: S103 - the host daemon's socket anyone may use
        server.listen(8)
        yield
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def test_the_host_stays_out_of_sight(arena: Arena, language: str) -> None:
    options = arena.stack.running.options
    if options.isolation is None:
        pytest.xfail("needs the hardened tier (root, namespaces): masks and a cgroup namespace")
    if not os.path.isdir("/run"):
        pytest.skip("this host has no /run")
    interfaces = _host_interfaces()
    device_dirs = sorted({"/sys/class/net", *interfaces.values()})
    daemon = f"/run/cbexec-hostile-{os.urandom(6).hex()}.sock"
    code = LOOK_AT_THE_HOST[language].replace("DAEMON", repr(daemon))
    # A JSON list is a Python list; its items, comma-separated, a Perl one.
    dirs = json.dumps(device_dirs)
    code = code.replace("DEVICE_DIRS", dirs if language == "python" else dirs[1:-1])

    with host_daemon(daemon):
        response = await arena.attack(code, language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(response.stdout)
    leaks = []  # every one, not just the first
    # The bridge's namespace has no interface with an address (its loopback is down).
    if seen["ifconf"]:
        leaks.append(f"SIOCGIFCONF on the bridge: {seen['ifconf']}")
    # No interface of the host's in sysfs, no cgroup, nothing of /run.
    leaks += [f"{path}: {listing}" for path, listing in seen["dirs"].items() if listing != []]
    # The cgroup namespace is rooted at the cell: no executor pid, no cell number.
    if f"cbexec-{os.getpid()}" in seen["cgroup"] or "cell-" in seen["cgroup"]:
        leaks.append(f"/proc/self/cgroup: {seen['cgroup']!r}")
    # The daemon's socket is not there at all.
    if seen["daemon"] != "errno 2":
        leaks.append(f"the daemon under /run: {seen['daemon']}")
    assert not leaks, "\n".join(leaks)


# The mount table the callback can read: each mount's point and file system type.
READ_MOUNTINFO = {
    "python": r"""
import json
print(json.dumps([
    [line.split(' - ')[0].split(' ')[4], line.split(' - ')[1].split(' ')[0]]
    for line in open('/proc/self/mountinfo').read().splitlines()
]))
""",
    "perl": r"""
open(my $table, '<', '/proc/self/mountinfo') or die "mountinfo: $!";
my @mounts;
while (my $line = <$table>) {
    my ($before, $after) = split / - /, $line, 2;
    push @mounts, [(split / /, $before)[4], (split / /, $after)[0]];
}
print qb::JSON::encode(\@mounts);
""",
}


@contextlib.contextmanager
def host_mount(point: str) -> Iterator[None]:
    """A small tmpfs of the host's at ``point`` (another user's, under the masked /tmp)."""
    os.makedirs(point)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", point], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", point], check=False)


async def test_the_mount_table_lists_nothing_the_masks_hide(
    arena: Arena, language: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = arena.stack.running.options
    if options.isolation is None or os.geteuid() != 0:
        pytest.xfail("needs the hardened tier (root, namespaces): masks")
    masked = [*options.isolation.masks, *options.isolation.late_masks]
    hidden = str(tmp_path / "host-mount")
    assert any(under(hidden, mask) for mask in masked), "the test's mount must be under a mask"

    with (
        caplog.at_level(logging.WARNING, logger="executor.sandbox.spawners"),
        host_mount(hidden),  # made before the first callback starts its zygote
    ):
        response = await arena.attack(READ_MOUNTINFO[language], language=language)
        still_mounted = os.path.ismount(hidden)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    listed = json.loads(response.stdout)
    leaks = [f"{point} ({kind})" for point, kind in listed if under(point, hidden)]
    # Nor the cgroup hierarchies under the masked tree, nor the host's own /dev/shm or
    # pty instances under the child's: one mount at each, the child's.
    leaks += [f"{point} ({kind})" for point, kind in listed if kind in ("cgroup", "cgroup2")]
    for place in ("/dev/shm", "/dev/pts"):
        at = [kind for point, kind in listed if point == place]
        if len(at) > 1:
            leaks.append(f"{place}: {len(at)} mounts ({', '.join(at)})")
    assert not leaks, "\n".join(leaks)
    assert still_mounted, "the host's own mount went with the sandbox's"
    assert "cold" not in caplog.text, "a zygote did not start its child"
