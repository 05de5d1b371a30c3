"""Hostile callbacks against the kernel's attack surface: the syscall filter holds, callbacks still work.

Every child runs under ``executor/child/seccomp.py``'s filter, installed after its other
confinement and before its code, by both zygotes and by the cold launcher (where it
survives the exec of Perl). A denied call fails with an errno the callback can see, and
what callbacks need (threads, fork, subprocesses, sockets, qb) goes on working.
"""

from __future__ import annotations

import json
import os

import pytest

from executor.child import seccomp
from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

# Each attempt prints "ok" or "errno N"; then what must still work.
PROBE = {
    "python": r"""
import ctypes, json, os, socket, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
seen = {}
def outcome(result):
    return 'ok' if result >= 0 else f'errno {ctypes.get_errno()}'
seen['unshare(CLONE_NEWUSER)'] = outcome(libc.unshare(0x10000000))
seen['setns'] = outcome(libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0))
params = ctypes.create_string_buffer(120)
seen['io_uring_setup'] = outcome(libc.syscall(SYS_io_uring_setup, 1, params))
aio_context = ctypes.c_ulong(0)
seen['io_setup'] = outcome(libc.syscall(SYS_io_setup, 1, ctypes.byref(aio_context)))
seen['userfaultfd'] = outcome(libc.syscall(SYS_userfaultfd, 1))  # UFFD_USER_MODE_ONLY
attr = ctypes.create_string_buffer(128)
ctypes.memmove(attr, (1).to_bytes(4, 'little') + (128).to_bytes(4, 'little'), 8)  # software, size
seen['perf_event_open'] = outcome(libc.syscall(SYS_perf_event_open, attr, 0, -1, -1, 0))
seen['bpf'] = outcome(libc.syscall(SYS_bpf, 0, ctypes.create_string_buffer(128), 128))
seen['ptrace(TRACEME)'] = outcome(libc.syscall(SYS_ptrace, 0, 0, 0, 0))
seen['inotify_init1'] = outcome(libc.inotify_init1(0))
seen['personality(ADDR_NO_RANDOMIZE)'] = outcome(libc.personality(0x0040000))
seen['clone3'] = outcome(libc.syscall(SYS_clone3, None, 0))
child = libc.syscall(SYS_clone, 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD
if child == 0:
    os._exit(0)
seen['clone(CLONE_NEWUSER)'] = outcome(child)
if child > 0:
    os.waitpid(child, 0)
try:
    socket.socket(38, socket.SOCK_SEQPACKET).close()  # AF_ALG
    seen['socket(AF_ALG)'] = 'ok'
except OSError as err:
    seen['socket(AF_ALG)'] = f'errno {err.errno}'
seen['filter'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')]
# What must still work.
threads = [threading.Thread(target=lambda: None) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
seen['threads'] = len(threads)
pid = os.fork()
if pid == 0:
    os._exit(7)
seen['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
seen['subprocess'] = subprocess.run(['/bin/sh', '-c', 'echo hi'], capture_output=True, text=True).stdout
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
socket.socketpair()[0].close()
seen['qb'] = qb.jobid()
print(json.dumps(seen))
""",
    "perl": r"""
use POSIX ();
my %seen;
sub outcome { return $_[0] >= 0 ? 'ok' : 'errno ' . ($! + 0) }
$seen{'unshare(CLONE_NEWUSER)'} = outcome(syscall(SYS_unshare, 0x10000000));
open(my $own, '<', '/proc/self/ns/net') or die "ns: $!";
$seen{setns} = outcome(syscall(SYS_setns, fileno $own, 0));
my $params = "\0" x 120;
$seen{io_uring_setup} = outcome(syscall(SYS_io_uring_setup, 1, $params));
my $aio_context = "\0" x 8;
$seen{io_setup} = outcome(syscall(SYS_io_setup, 1, $aio_context));
$seen{userfaultfd} = outcome(syscall(SYS_userfaultfd, 1));
my $attr = pack('LL', 1, 128) . ("\0" x 120);
$seen{perf_event_open} = outcome(syscall(SYS_perf_event_open, $attr, 0, -1, -1, 0));
my $bpf_attr = "\0" x 128;
$seen{bpf} = outcome(syscall(SYS_bpf, 0, $bpf_attr, 128));
$seen{'ptrace(TRACEME)'} = outcome(syscall(SYS_ptrace, 0, 0, 0, 0));
$seen{inotify_init1} = outcome(syscall(SYS_inotify_init1, 0));
$seen{'personality(ADDR_NO_RANDOMIZE)'} = outcome(syscall(SYS_personality, 0x0040000));
$seen{clone3} = outcome(syscall(SYS_clone3, 0, 0));
my $child = syscall(SYS_clone, 0x10000000 | 17, 0, 0, 0, 0);
POSIX::_exit(0) if $child == 0;
$seen{'clone(CLONE_NEWUSER)'} = outcome($child);
waitpid($child, 0) if $child > 0;
$seen{'socket(AF_ALG)'} = socket(my $alg, 38, 5, 0) ? 'ok' : 'errno ' . ($! + 0);
open(my $status, '<', '/proc/self/status') or die "status: $!";
$seen{filter} = [map { (split)[1] } grep { /\ASeccomp:/ } <$status>];
# What must still work.
my $pid = fork // die "fork: $!";
POSIX::_exit(7) if !$pid;
waitpid($pid, 0);
$seen{fork} = $? >> 8;
$seen{subprocess} = `/bin/sh -c 'echo hi'`;
$seen{qb} = qb::jobid();
print qb::JSON::encode(\%seen);
""",
}

DENIED = {
    "unshare(CLONE_NEWUSER)": "errno 1",
    "setns": "errno 1",
    "io_uring_setup": "errno 1",
    "io_setup": "errno 1",  # native AIO: its events are a host-wide pool
    "userfaultfd": "errno 1",
    "perf_event_open": "errno 1",
    "bpf": "errno 1",
    "ptrace(TRACEME)": "errno 1",
    "inotify_init1": "errno 1",  # a watch on /etc or the stdlib shows the host's activity
    "personality(ADDR_NO_RANDOMIZE)": "errno 1",
    "clone(CLONE_NEWUSER)": "errno 1",
    "clone3": "errno 38",  # ENOSYS: glibc falls back to clone
    "socket(AF_ALG)": "errno 97",  # EAFNOSUPPORT
}


# The kernel's number, not the filter's table: the probe asks whether it is denied.
IO_SETUP = {"x86_64": 206, "aarch64": 0}
PRCTL = {"x86_64": 157, "aarch64": 167}


def _probe(language: str) -> str:
    return _probe_code(PROBE[language])


def _probe_code(code: str) -> str:
    """``code`` with each ``SYS_name`` replaced by this machine's syscall number."""
    arch = seccomp.native_arch()
    if arch is None:
        pytest.skip(f"no syscall filter for {os.uname().machine}")
    code = code.replace("SYS_io_setup", str(IO_SETUP[arch])).replace("SYS_prctl", str(PRCTL[arch]))
    for name, numbers in sorted(seccomp.SYSCALLS.items(), key=lambda item: -len(item[0])):
        number = numbers[list(seccomp.ARCHES).index(arch)]
        code = code.replace(f"SYS_{name}", str(number))
    return code


async def test_the_filter_denies_and_everything_else_works(arena: Arena, language: str) -> None:
    response = await arena.attack(_probe(language), language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(response.stdout)
    assert {name: seen[name] for name in DENIED} == DENIED
    assert [str(mode) for mode in seen["filter"]] == ["2"]  # SECCOMP_MODE_FILTER
    assert seen.get("threads", 4) == 4
    assert seen["fork"] == 7
    assert seen["subprocess"] == "hi\n"
    assert seen["qb"] == arena.job_id


async def test_a_denied_call_is_an_error_the_callback_can_report(arena: Arena) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) != 0:\n"
        "    raise PermissionError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n"
    )
    response = await arena.attack(code)

    assert_outcome(response, Outcome.OUTCOME_FAILED)
    assert response.failure.exception_type == "PermissionError"
    assert "Operation not permitted" in response.failure.message


# dnotify and flock on host files it may read, then the record locks and SQLite it
# still needs on its own files.
LOCKS_AND_WATCHES = {
    "python": r"""
import fcntl, json, os, sqlite3, tempfile
seen = {}
def attempt(name, call):
    try:
        call()
        seen[name] = 'ok'
    except OSError as err:
        seen[name] = f'errno {err.errno}'
host = os.open(os.__file__, os.O_RDONLY)
attempt('flock host file', lambda: fcntl.flock(host, fcntl.LOCK_SH | fcntl.LOCK_NB))
directory = os.open(os.path.dirname(os.__file__), os.O_RDONLY)
notify = fcntl.DN_ACCESS | fcntl.DN_MULTISHOT
attempt('dnotify', lambda: fcntl.fcntl(directory, fcntl.F_NOTIFY, notify))
own = os.open('own.lock', os.O_CREAT | os.O_RDWR, 0o600)
attempt('flock own file', lambda: fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB))
attempt('lockf own file', lambda: fcntl.lockf(own, fcntl.LOCK_EX | fcntl.LOCK_NB))
with tempfile.NamedTemporaryFile() as in_tmpdir:  # $TMPDIR
    attempt('lockf in TMPDIR', lambda: fcntl.lockf(in_tmpdir, fcntl.LOCK_SH | fcntl.LOCK_NB))
for journal in ('delete', 'wal'):
    with sqlite3.connect(f'{journal}.db') as db:
        db.execute(f'pragma journal_mode={journal}')
        db.execute('create table frames (number integer)')
        db.executemany('insert into frames values (?)', [(n,) for n in range(100)])
    with sqlite3.connect(f'{journal}.db') as db:
        seen[f'sqlite {journal}'] = db.execute('select sum(number) from frames').fetchone()[0]
print(json.dumps(seen))
""",
    "perl": r"""
use Fcntl qw(:flock O_RDONLY F_SETLK F_WRLCK SEEK_SET);
use File::Basename qw(dirname);
my %seen;
sub outcome { return $_[0] ? 'ok' : 'errno ' . ($! + 0) }
open(my $host, '<', $INC{'strict.pm'}) or die "strict.pm: $!";
$seen{'flock host file'} = outcome(flock($host, LOCK_SH | LOCK_NB));
sysopen(my $directory, dirname($INC{'strict.pm'}), O_RDONLY) or die "directory: $!";
$seen{dnotify} = outcome(fcntl($directory, 1026, 0x80000001));  # F_NOTIFY, DN_ACCESS|MULTISHOT
open(my $own, '+>', 'own.lock') or die "own.lock: $!";
$seen{'flock own file'} = outcome(flock($own, LOCK_EX | LOCK_NB));
my $lock = pack('s s x4 q q i x4', F_WRLCK, SEEK_SET, 0, 0, 0);  # struct flock
$seen{'fcntl lock own file'} = outcome(fcntl($own, F_SETLK, $lock));
print qb::JSON::encode(\%seen);
""",
}
LOCKS_AND_WATCHES_SEEN = {
    "python": {
        "flock host file": "errno 37",  # ENOLCK
        "dnotify": "errno 1",
        "flock own file": "errno 37",
        "lockf own file": "ok",
        "lockf in TMPDIR": "ok",
        "sqlite delete": 4950,
        "sqlite wal": 4950,
    },
    "perl": {
        "flock host file": "errno 37",
        "dnotify": "errno 1",
        "flock own file": "errno 37",
        "fcntl lock own file": "ok",
    },
}


async def test_no_flock_nor_dnotify_but_record_locks_and_sqlite_work(
    arena: Arena, language: str
) -> None:
    # flock on debconf's world-readable config.dat made the host's apt fail while the run
    # lasted; dnotify on the stdlib showed a sibling callback's imports, as inotify did.
    response = await arena.attack(LOCKS_AND_WATCHES[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert json.loads(response.stdout) == LOCKS_AND_WATCHES_SEEN[language]


SET_ID_FILES = {
    "python": r"""
import json, os
seen = {}
def attempt(name, call):
    try:
        call()
        seen[name] = 'ok'
    except OSError as err:
        seen[name] = f'errno {err.errno}'
with open('plain', 'w') as f:
    f.write('#!/bin/sh\n')
attempt('chmod 4755', lambda: os.chmod('plain', 0o4755))
attempt('chmod 2755', lambda: os.chmod('plain', 0o2755))
attempt('chmod 755', lambda: os.chmod('plain', 0o755))
attempt('create 4755', lambda: os.close(os.open('made', os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt('create 644', lambda: os.close(os.open('fine', os.O_CREAT | os.O_WRONLY, 0o644)))
seen['modes'] = sorted((n, oct(os.stat(n).st_mode & 0o7777)) for n in os.listdir('.'))
print(json.dumps(seen))
""",
    "perl": r"""
open(my $f, '>', 'plain') or die; print $f "#!/bin/sh\n"; close $f;
my @seen;
push @seen, (chmod(04755, 'plain') ? 'ok' : 'errno ' . ($! + 0));
push @seen, (chmod(0755, 'plain') ? 'ok' : 'errno ' . ($! + 0));
print join(',', @seen), "\n";
""",
}


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_no_callback_file_gets_a_setuid_or_setgid_bit(arena: Arena, language: str) -> None:
    # Made in a read-write bind, such a file would be the host's, where nosuid does not hold.
    response = await arena.attack(SET_ID_FILES[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    if language == "perl":
        assert response.stdout == "errno 1,ok\n"
        return
    seen = json.loads(response.stdout)
    assert seen["chmod 4755"] == seen["chmod 2755"] == seen["create 4755"] == "errno 1"
    assert seen["chmod 755"] == seen["create 644"] == "ok"
    modes = dict(seen["modes"])
    assert sorted(modes) == ["fine", "plain"] and modes["plain"] == "0o755"
    assert not int(modes["fine"], 8) & 0o6000  # its permissions are the policy's umask's


# Touch 200 MiB, free it, then try the kernel's "reset the peak RSS" knob
# (/proc/self/clear_refs, writable only by a dumpable process).
PEAK_RESET = {
    "python": r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
memory = bytearray(200 << 20)
for at in range(0, len(memory), 4096):
    memory[at] = 1
del memory
seen = {'dumpable': libc.prctl(3, 0, 0, 0, 0)}  # PR_GET_DUMPABLE
seen['set undumpable'] = 'ok' if libc.prctl(4, 0, 0, 0, 0) == 0 else f'errno {ctypes.get_errno()}'
seen['set dumpable'] = 'ok' if libc.prctl(4, 1, 0, 0, 0) == 0 else f'errno {ctypes.get_errno()}'
try:
    with open('/proc/self/clear_refs', 'w') as knob:
        knob.write('5')
    seen['reset'] = 'ok'
except OSError as err:
    seen['reset'] = f'errno {err.errno}'
print(json.dumps(seen))
""",
    "perl": r"""
my %seen;
my $memory = "\1" x (200 << 20);
undef $memory;
$seen{dumpable} = syscall(SYS_prctl, 3, 0, 0, 0, 0);
$seen{'set undumpable'} = syscall(SYS_prctl, 4, 0, 0, 0, 0) == 0 ? 'ok' : 'errno ' . ($! + 0);
$seen{'set dumpable'} = syscall(SYS_prctl, 4, 1, 0, 0, 0) == 0 ? 'ok' : 'errno ' . ($! + 0);
if (open(my $knob, '>', '/proc/self/clear_refs')) {
    $seen{reset} = (print $knob '5') && close($knob) ? 'ok' : 'errno ' . ($! + 0);
} else {
    $seen{reset} = 'errno ' . ($! + 0);
}
print qb::JSON::encode(\%seen);
""",
}
PEAK = 200 << 20


async def test_a_callback_cannot_lower_its_peak_rss(arena: Arena, language: str) -> None:
    # Dumpable again, a process may write 5 to clear_refs: the kernel then forgets the
    # peak that both wait4 and VmHWM report. Its processes stay undumpable instead.
    response = await arena.attack(_probe_code(PEAK_RESET[language]), language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(response.stdout)
    assert seen == {
        "dumpable": 0,
        "set dumpable": "errno 1",
        "set undumpable": "ok",
        "reset": "errno 13",  # EACCES: /proc/self's files are root's
    }
    assert response.usage.peak_rss_bytes >= PEAK, response.usage.peak_rss_bytes


# The same after an exec, which makes a process dumpable again: the kernel keeps the
# peak of the image it replaced (for wait4), the new image resets only its own.
EXEC_THEN_RESET = {
    "python": r"""
import os, sys
memory = bytearray(200 << 20)
for at in range(0, len(memory), 4096):
    memory[at] = 1
del memory
sys.stdout.flush()
reset = "open('/proc/self/clear_refs', 'w').write('5'); print('reset')"
os.execv(sys.executable, [sys.executable, '-c', reset])
""",
    "perl": r"""
my $memory = "\1" x (200 << 20);
undef $memory;
my $reset = 'open(my $k, ">", "/proc/self/clear_refs") or die "$!"; print $k "5";'
    . ' close $k or die "$!"; print "reset\n"';
exec($^X, '-e', $reset) or die "exec: $!";
""",
}


async def test_an_exec_does_not_lower_the_peak_rss(arena: Arena, language: str) -> None:
    response = await arena.attack(EXEC_THEN_RESET[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert response.stdout == "reset\n"
    assert response.usage.peak_rss_bytes >= PEAK, response.usage.peak_rss_bytes
