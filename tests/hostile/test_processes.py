"""Hostile callbacks against the process tree: bombs, escapes, stray children, signals, exits.

The escape cases run on both launch paths (``arena``: warm zygote and cold fork+exec),
since how a child starts decides what it inherits and who reaps what it leaves.
Processes meant to outlive the callback carry the attack's token in their command
line and scrub their environment, so the check finds them even without the sandbox's
environment marker.
"""

from __future__ import annotations

import os

import pytest

from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

WALL = 1.5
# Wall deadline + grace (0.3 s in tests) + time to kill, reap and answer on a busy 2-core host.
SLACK_S = 2.0

FORK_BOMB = {
    "python": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    ),
    "perl": "while (1) { fork; }\n",
}


async def test_fork_bomb_is_contained(arena: Arena, language: str) -> None:
    response = await arena.attack(
        FORK_BOMB[language], language=language, limits={"wall_seconds": WALL, "max_processes": 16}
    )

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
    assert "wall-clock limit" in response.failure.message


ESCAPES = {
    # setsid + double fork: the daemon leaves the session and its parent; it also drops
    # the environment (and so the sandbox marker) and renames itself.
    "python": (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execve(sys.executable,\n"
        "                  [sys.executable, '-I', '-S', '-c', 'import time; time.sleep(1000)', '{TOKEN}'], {})\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(0.3)\n"
        "print('daemon started')\n"
    ),
    "perl": (
        "use POSIX ();\n"
        "my $pid = fork;\n"
        "if ($pid == 0) {\n"
        "    POSIX::setsid();\n"
        "    if (fork == 0) { %ENV = (); $0 = 'daemon {TOKEN}'; sleep 1000; POSIX::_exit(0); }\n"
        "    POSIX::_exit(0);\n"
        "}\n"
        "waitpid($pid, 0);\n"
        "select(undef, undef, undef, 0.3);\n"
        'print "daemon started\\n";\n'
    ),
}


async def test_double_fork_setsid_daemon_dies_with_the_run(arena: Arena, language: str) -> None:
    response = await arena.attack(ESCAPES[language], language=language, limits={"wall_seconds": 5})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert response.stdout.strip() == "daemon started"
    assert response.usage.wall_seconds < 4, "the run waited for its daemon instead of killing it"


STRAYS = {
    # Qube's advice for long work (subprocess.Popen) left running as the callback returns:
    # one that keeps the environment, one without it and renamed by its argv.
    "python": (
        "import subprocess, sys\n"
        "subprocess.Popen(['sleep', '1000'])\n"
        "subprocess.Popen([sys.executable, '-I', '-S', '-c', 'import time; time.sleep(1000)', '{TOKEN}'],\n"
        "                 env={}, start_new_session=True)\n"
        "print('left running')\n"
    ),
    "perl": (
        "system('sleep 1000 &');\n"
        "if (!fork) { %ENV = (); exec {'/bin/sh'} '{TOKEN}', '-c', 'sleep 1000; true'; }\n"
        'print "left running\\n";\n'
    ),
}


async def test_popen_left_running_is_killed(arena: Arena, language: str) -> None:
    response = await arena.attack(STRAYS[language], language=language, limits={"wall_seconds": 5})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert response.stdout.strip() == "left running"
    assert response.usage.wall_seconds < 4


IGNORE_SIGTERM = {
    # The main process and a setsid'd child both ignore SIGTERM: only SIGKILL (to the
    # group, and to the cgroup or namespace for the one that left the group) ends them.
    "python": (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.execve(sys.executable, [sys.executable, '-I', '-S', '-c',\n"
        "              'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)',\n"
        "              '{TOKEN}'], {})\n"
        "time.sleep(1000)\n"
    ),
    "perl": (
        "use POSIX ();\n"
        "$SIG{TERM} = 'IGNORE';\n"
        "if (!fork) { POSIX::setsid(); $0 = 'stubborn {TOKEN}'; sleep 1000; POSIX::_exit(0); }\n"
        "sleep 1000;\n"
    ),
}


async def test_ignoring_sigterm_ends_at_the_wall_deadline(arena: Arena, language: str) -> None:
    response = await arena.attack(
        IGNORE_SIGTERM[language], language=language, limits={"wall_seconds": WALL}
    )

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
    assert "wall-clock limit of 1.5s" in response.failure.message
    grace = arena.stack.settings.grace_seconds
    assert response.usage.wall_seconds <= WALL + grace + SLACK_S, response.usage.wall_seconds


SLEEP_FOREVER = {
    "python": "import time\ntime.sleep(1e6)\n",
    "perl": "sleep 1_000_000;\n",
}


async def test_sleeping_forever_ends_at_the_wall_deadline(arena_warm: Arena, language: str) -> None:
    response = await arena_warm.attack(
        SLEEP_FOREVER[language], language=language, limits={"wall_seconds": 1}
    )

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
    assert "wall-clock limit of 1s" in response.failure.message
    assert response.usage.wall_seconds <= 1 + arena_warm.stack.settings.grace_seconds + SLACK_S


def _kill_code(language: str, how: str, executor_pid: int) -> str:
    python = {
        # ProcessLookupError: there was nobody it could signal (the PID namespace).
        "kill-all": (
            "import os, signal\n"
            "try:\n"
            "    os.kill(-1, signal.SIGKILL)\n"
            "except ProcessLookupError:\n"
            "    pass\n"
            "print('still here')\n"
        ),
        "kill-parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('still here')\n",
        # The executor's host pid, which the callback could learn from anywhere (a log line).
        "kill-executor-pid": (
            "import os, signal\n"
            f"for pid in ({executor_pid}, {executor_pid} + 1, {executor_pid} + 2):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
            "print('still here')\n"
        ),
        "kill-every-pid": (
            "import os, signal\n"
            "for pid in range(2, 32768):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
            "print('still here')\n"
        ),
    }
    perl = {
        "kill-all": "kill 'KILL', -1;\nprint \"still here\\n\";\n",
        "kill-parent": "kill 'KILL', getppid();\nprint \"still here\\n\";\n",
        "kill-executor-pid": (
            f"kill 'KILL', $_ for ({executor_pid}, {executor_pid} + 1, {executor_pid} + 2);\n"
            'print "still here\\n";\n'
        ),
        "kill-every-pid": "kill 'KILL', $_ for 2 .. 32767;\nprint \"still here\\n\";\n",
    }
    return (python if language == "python" else perl)[how]


@pytest.mark.parametrize("how", ["kill-all", "kill-parent", "kill-executor-pid", "kill-every-pid"])
async def test_killing_everything_it_can_see_harms_only_itself(
    arena: Arena, language: str, how: str
) -> None:
    response = await arena.attack(_kill_code(language, how, os.getpid()), language=language)

    # Killing its own launcher (kill-parent: getppid() is 0 in a PID namespace, so the
    # signal goes to its own process group) may end the callback itself; nothing else.
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED, Outcome.OUTCOME_KILLED)
    if how != "kill-parent":
        assert response.stdout.strip() == "still here"
