"""Hostile callbacks against resources: memory, CPU, output, files, descriptors, stack, stdin, exits.

Not about how children start, so they run on the warm path only (``arena_warm``).
"""

from __future__ import annotations

import errno
import os

import pytest

from executor.sandbox.limits import OPEN_FILES
from tests.hostile.harness import MIB, Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

MEMORY_BOMB = {
    "python": "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n",
    "perl": "my @chunks;\nwhile (1) { push @chunks, 'x' x (16 << 20); }\n",
}


async def test_memory_bomb_hits_the_memory_limit(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(
        MEMORY_BOMB[language],
        language=language,
        limits={"memory_bytes": 256 * MIB, "wall_seconds": 10},
    )

    assert_outcome(response, Outcome.OUTCOME_MEMORY_LIMIT)
    assert "out of memory" in response.failure.message


def require_memory_cgroup(arena: Arena) -> None:
    cgroups = arena.stack.running.options.cgroups
    if cgroups is None or "memory" not in cgroups.controllers:
        pytest.xfail("no writable memory cgroup: RLIMIT_AS bounds each process only")


async def test_memory_limit_covers_the_callbacks_children_together(arena_warm: Arena) -> None:
    require_memory_cgroup(arena_warm)
    # Four children each fill (and touch) 150 MiB under a 256 MiB limit, say so on a pipe
    # of their own and keep holding it. Once every child has said so or died (no
    # allocation is left, so no OOM kill either), the parent counts those that said so
    # and still live: each holds 150 MiB at that moment, so with one memory cgroup for
    # the callback's processes together, at most one can. (How many said so over time
    # depends on whom the OOM killer took when: not checked.)
    code = (
        "import os, time\n"
        "children = {}\n"
        "for _ in range(4):\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(r)\n"
        "        block = b'x' * (150 << 20)\n"
        "        os.write(w, b'1')\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    os.close(w)\n"
        "    children[pid] = r\n"
        "said = {pid: os.read(r, 1) for pid, r in children.items()}  # b'' if it died first\n"
        "time.sleep(0.5)  # a child the last allocation's OOM kill hit has finished dying\n"
        "holding = sum(1 for pid in children if said[pid] and os.waitpid(pid, os.WNOHANG)"
        " == (0, 0))\n"
        "print(holding)\n"
        "for pid in children:\n"
        "    try:\n"
        "        os.kill(pid, 9)\n"
        "    except ProcessLookupError:\n"
        "        pass\n"
    )
    response = await arena_warm.attack(
        code, limits={"memory_bytes": 256 * MIB, "max_processes": 8, "wall_seconds": 30}
    )

    # The parent outlived the children the kernel killed, and said so: it succeeded.
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    holding = int(response.stdout.strip())
    assert holding <= 1, f"{holding} children held 150 MiB each at once under a 256 MiB limit"


async def test_a_child_killed_for_memory_fails_the_run_as_memory_limit(arena_warm: Arena) -> None:
    require_memory_cgroup(arena_warm)
    # Each process stays under RLIMIT_AS; together they pass the cgroup's limit, and the
    # parent fails when a child does not come back.
    code = (
        "import os, sys\n"
        "pids = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (150 << 20)\n"
        "        import time; time.sleep(2)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]\n"
        "sys.exit(f'children ended {codes}' if any(codes) else 0)\n"
    )
    response = await arena_warm.attack(
        code, limits={"memory_bytes": 256 * MIB, "max_processes": 8, "wall_seconds": 10}
    )

    assert_outcome(response, Outcome.OUTCOME_MEMORY_LIMIT)
    assert "together exceeded the memory limit" in response.failure.message


CPU_SPIN = {
    "python": "while True:\n    pass\n",
    "perl": "1 while 1;\n",
}


async def test_cpu_spin_hits_the_cpu_limit(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(
        CPU_SPIN[language], language=language, limits={"cpu_seconds": 1, "wall_seconds": 10}
    )

    assert_outcome(response, Outcome.OUTCOME_CPU_LIMIT)
    assert "CPU limit of 1s" in response.failure.message


async def test_a_fractional_cpu_limit_is_quoted_as_the_kernel_enforced_it(
    arena_warm: Arena,
) -> None:
    response = await arena_warm.attack(
        CPU_SPIN["python"], limits={"cpu_seconds": 0.5, "wall_seconds": 10}
    )

    assert_outcome(response, Outcome.OUTCOME_CPU_LIMIT)
    assert "CPU limit of 1s (the 0.5s asked for, rounded up to whole seconds" in (
        response.failure.message
    )


OUTPUT_FLOOD = {
    "python": (
        "import sys\n"
        "block = 'o' * 65536\n"
        "while True:\n"
        "    sys.stdout.write(block)\n"
        "    sys.stderr.write(block.replace('o', 'e'))\n"
    ),
    "perl": (
        "$| = 1;\n"
        "my $block = 'o' x 65536;\n"
        "while (1) { print STDOUT $block; print STDERR 'e' x 65536; }\n"
    ),
}


async def test_output_flood_is_truncated_and_bounded(arena_warm: Arena, language: str) -> None:
    cap = 64 << 10
    response = await arena_warm.attack(
        OUTPUT_FLOOD[language], language=language, limits={"output_bytes": cap, "wall_seconds": 1.5}
    )

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
    assert response.stdout_truncated and response.stderr_truncated
    assert len(response.stdout) == cap and set(response.stdout) == {"o"}
    assert len(response.stderr) == cap and set(response.stderr) == {"e"}
    assert response.usage.wall_seconds < 1.5 + 3


HUGE_FILE = {
    # Python ignores SIGXFSZ (the write fails with EFBIG); Perl may die of it.
    "python": (
        "import os\n"
        "print(os.getcwd(), flush=True)\n"
        "block = b'x' * (1 << 20)\n"
        "with open('huge', 'wb', buffering=0) as f:\n"
        "    while True:\n"
        "        f.write(block)\n"
    ),
    "perl": (
        "use Cwd ();\n"
        "$| = 1;\n"
        'print Cwd::getcwd(), "\\n";\n'
        "open(my $f, '>', 'huge') or die \"open: $!\";\n"
        "binmode $f;\n"
        "$f->autoflush(1);\n"
        "my $block = 'x' x (1 << 20);\n"
        'while (1) { print {$f} $block or die "write failed: $!\\n"; }\n'
    ),
}


async def test_huge_file_stops_at_the_file_size_limit(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(
        HUGE_FILE[language], language=language, limits={"wall_seconds": 10}
    )

    assert_outcome(response, Outcome.OUTCOME_FAILED, Outcome.OUTCOME_KILLED)
    if response.outcome == Outcome.OUTCOME_FAILED:
        assert "File too large" in response.failure.message + response.stderr
    else:
        assert response.signal == 25  # SIGXFSZ
    workdir = response.stdout.splitlines()[0]
    assert not os.path.exists(workdir), "the working directory (and its huge file) was left behind"


# Six files just under the per-file limit: 6 x 60 MiB with the default 64 MiB limit.
FILL_THE_DISK = {
    "python": (
        "block = b'x' * (1 << 20)\n"
        "written = 0\n"
        "try:\n"
        "    for n in range(6):\n"
        "        with open(f'fill-{n}', 'wb', buffering=0) as f:\n"
        "            for _ in range(60):\n"
        "                f.write(block)\n"
        "                written += 1\n"
        "except OSError as err:\n"
        "    print('stopped', err.errno)\n"
        "print(written)\n"
    ),
    "perl": (
        "my $block = 'x' x (1 << 20); my $written = 0;\n"
        "FILL: for my $n (0 .. 5) {\n"
        "    open(my $f, '>', \"fill-$n\") or do { print 'stopped ', $! + 0, \"\\n\"; last };\n"
        "    for (1 .. 60) {\n"
        "        if (!defined syswrite($f, $block)) { print 'stopped ', $! + 0, \"\\n\"; last FILL }\n"
        "        $written++;\n"
        "    }\n"
        "}\n"
        'print "$written\\n";\n'
    ),
}


async def test_many_files_cannot_fill_the_disk(arena_warm: Arena, language: str) -> None:
    # Each zygote mounts its children's working directories itself.
    if arena_warm.stack.running.options.isolation is None:
        pytest.xfail("the working directory is on the host's disk: needs the hardened tier")
    response = await arena_warm.attack(
        FILL_THE_DISK[language],
        language=language,
        limits={"wall_seconds": 20, "disk_bytes": 100 * MIB},
    )

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert f"stopped {errno.ENOSPC}" in response.stdout
    written_mib = int(response.stdout.split()[-1])
    assert 60 <= written_mib <= 100, f"wrote {written_mib} MiB under a 100 MiB quota"


async def test_thread_bomb_stops_at_the_process_cap(arena_warm: Arena) -> None:
    # Threads are tasks: the pids cgroup (and RLIMIT_NPROC) count them like processes.
    code = (
        "import threading, time\n"
        "started = 0\n"
        "try:\n"
        "    for _ in range(10000):\n"
        "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "        started += 1\n"
        "except RuntimeError as err:\n"
        "    print(started, err)\n"
    )
    response = await arena_warm.attack(code, limits={"max_processes": 16, "wall_seconds": 10})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    started = int(response.stdout.split()[0])
    assert 0 < started < 16, response.stdout
    assert "can't start new thread" in response.stdout


OPEN_FDS = {
    "python": (
        "import os, resource, socket\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "        held.extend(s.detach() for s in socket.socketpair())\n"
        "except OSError as err:\n"
        "    print(len(held), err.errno)\n"
    ),
    "perl": (
        "my @held;\n"
        "while (open(my $h, '<', '/dev/null')) { push @held, $h; }\n"
        "print scalar(@held), ' ', $! + 0, \"\\n\";\n"
    ),
}


async def test_opening_thousands_of_fds_stops_at_the_fd_limit(
    arena_warm: Arena, language: str
) -> None:
    response = await arena_warm.attack(OPEN_FDS[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    count, code = map(int, response.stdout.split())
    assert code == errno.EMFILE
    assert count < OPEN_FILES


RAISE_LIMITS = {
    "python": (
        "import resource\n"
        "for name in ('CPU', 'AS', 'FSIZE', 'NOFILE', 'NPROC', 'CORE'):\n"
        "    which = getattr(resource, 'RLIMIT_' + name)\n"
        "    soft, hard = resource.getrlimit(which)\n"
        "    try:\n"
        "        resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "        print(name, 'raised')\n"
        "    except (ValueError, OSError):\n"
        "        print(name, 'refused')\n"
    ),
    "perl": (
        "require 'syscall.ph' if 0;\n"
        "use POSIX ();\n"
        # No core module sets rlimits; prlimit(1) from util-linux does it for the process.
        "for my $name (qw(cpu as fsize nofile nproc core)) {\n"
        '    my $ok = system(\'prlimit\', "--pid=$$", "--$name=unlimited:unlimited") == 0;\n'
        "    print $name, ' ', ($ok ? 'raised' : 'refused'), \"\\n\";\n"
        "}\n"
    ),
}


async def test_callback_cannot_raise_its_own_limits(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(RAISE_LIMITS[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    verdicts = dict(line.split() for line in response.stdout.splitlines())
    assert len(verdicts) == 6, response.stdout + response.stderr
    assert set(verdicts.values()) == {"refused"}, verdicts


RECURSION = {
    # Through repr(), so every level is a C frame too (3.11 runs plain Python-to-Python
    # calls without the C stack, which would end at the memory limit instead).
    "python": (
        "import sys\n"
        "sys.setrecursionlimit(10**6)\n"
        "class Deep:\n"
        "    def __repr__(self):\n"
        "        return repr(Deep()) + '.'\n"
        "repr(Deep())\n"
    ),
    # Perl has no recursion limit: its stack lives on the heap, so this ends at the memory limit.
    "perl": "no warnings 'recursion';\nsub down { return down($_[0] + 1) + 1 }\ndown(0);\n",
}


async def test_recursion_to_stack_overflow_crashes_only_the_callback(
    arena_warm: Arena, language: str
) -> None:
    response = await arena_warm.attack(
        RECURSION[language],
        language=language,
        limits={"memory_bytes": 256 * MIB, "wall_seconds": 20},
    )

    assert_outcome(
        response, Outcome.OUTCOME_KILLED, Outcome.OUTCOME_FAILED, Outcome.OUTCOME_MEMORY_LIMIT
    )
    assert response.failure.message


SEGFAULT = {
    "python": "import ctypes\nctypes.string_at(0)\n",
    # Read a string at address 1.
    "perl": "my $x = unpack('p', pack('J', 1));\nprint length $x;\n",
}


async def test_segfault_is_killed_by_sigsegv(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(SEGFAULT[language], language=language)

    assert_outcome(response, Outcome.OUTCOME_KILLED)
    assert response.signal == 11
    assert "SIGSEGV" in response.failure.message


EXITS = {
    "python": [
        ("import sys\nprint('before')\nsys.exit()\nprint('after')", Outcome.OUTCOME_SUCCEEDED, 0),
        ("import sys\nsys.exit(7)", Outcome.OUTCOME_FAILED, 7),
        ("import sys\nsys.exit('going away')", Outcome.OUTCOME_FAILED, 1),
        ("import os\nprint('flushed?')\nos._exit(5)", Outcome.OUTCOME_FAILED, 5),
        ("import os\nos._exit(0)", Outcome.OUTCOME_SUCCEEDED, 0),
        ("raise SystemExit(3)", Outcome.OUTCOME_FAILED, 3),
        # An exit handler that never returns is still bounded by the wall limit.
        (
            "import atexit, sys, time\natexit.register(time.sleep, 1000)\nsys.exit(0)",
            Outcome.OUTCOME_WALL_TIMEOUT,
            None,
        ),
    ],
    "perl": [
        ('print "before\\n";\nexit;\nprint "after\\n";', Outcome.OUTCOME_SUCCEEDED, 0),
        ("exit 7;", Outcome.OUTCOME_FAILED, 7),
        ("CORE::exit(6);", Outcome.OUTCOME_FAILED, 6),
        ("use POSIX ();\nPOSIX::_exit(5);", Outcome.OUTCOME_FAILED, 5),
        ('die "going away\\n";', Outcome.OUTCOME_FAILED, None),
        ("END { sleep 1000 }\nexit 0;", Outcome.OUTCOME_WALL_TIMEOUT, None),
    ],
}


async def test_exits_end_only_the_callback(arena_warm: Arena, language: str) -> None:
    # All forms in one service: each is quick, and the service must survive them all.
    mismatches = []
    for code, outcome, exit_code in EXITS[language]:
        response = await arena_warm.run(code, language=language, limits={"wall_seconds": 1})
        got = (response.outcome, response.exit_code if exit_code is not None else None)
        if got != (outcome, exit_code):
            mismatches.append((code, got, response.failure.message, response.stderr[-300:]))
        if "before" in code:
            assert response.stdout == "before\n", response.stdout
        if "going away" in code and language == "python":
            assert "going away" in response.stderr
    assert not mismatches, mismatches
    await arena_warm.assert_nothing_survives()
    await arena_warm.assert_service_answers()


STDIN = {
    "python": (
        "import os, sys\n"
        "data = sys.stdin.read()\n"
        "try:\n"
        "    input()\n"
        "    print('got a line')\n"
        "except EOFError:\n"
        "    print('eof', repr(data), os.readlink('/proc/self/fd/0'))\n"
    ),
    "perl": (
        "my $line = <STDIN>;\n"
        "print defined $line ? \"got a line\\n\" : 'eof ' . readlink('/proc/self/fd/0') . \"\\n\";\n"
    ),
}


async def test_reading_stdin_gets_eof_at_once(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(
        STDIN[language], language=language, limits={"wall_seconds": 5}
    )

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)  # not blocked until the wall limit
    assert response.stdout.split()[0] == "eof"
    assert response.stdout.split()[-1] == "/dev/null"
