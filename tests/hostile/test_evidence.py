"""The child's word never beats the kernel's, and nothing a callback sends grows the executor.

A callback can write any frame on its bridge. What it reports is believed only where the
kernel agrees: success then a signal, success then spinning into the CPU limit, "never
ran" after a qb call, a frame that is not of its schema. And whatever it sends (long
function names, a storm of calls, bytes that are not UTF-8) comes back within the sizes
the README states.
"""

from __future__ import annotations

import re

import psutil
import pytest

from executor.bounds import (
    MAX_ACTIONS_BYTES,
    MAX_FAILURE_MESSAGE_BYTES,
    MAX_TRACEBACK_BYTES,
    MAX_VERB_CHARS,
)
from tests.hostile.harness import MIB, Arena, Outcome, assert_outcome
from tests.hostile.test_bridge import FIND_BRIDGE, PERL_FIND_BRIDGE

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(90)]

# A done frame, written by the callback itself on its bridge (fd found as test_bridge does).
FORGE_DONE = FIND_BRIDGE + (
    "import json\n"
    "def forge(frame):\n"
    "    body = json.dumps(frame).encode()\n"
    "    os.write(fd, struct.pack('>I', len(body)) + body)\n"
)
PERL_FORGE_DONE = PERL_FIND_BRIDGE + (
    "open(my $b, '+<&=', $fd) or die \"fdopen: $!\";\n"
    "binmode $b;\n"
    "sub forge { my ($body) = @_; syswrite($b, pack('N', length $body) . $body) }\n"
)


async def test_success_then_spinning_into_the_cpu_limit_is_cpu_limit(
    arena_warm: Arena, language: str
) -> None:
    code = {
        "python": FORGE_DONE + "forge({'type': 'done', 'status': 'ok'})\nwhile True:\n    pass\n",
        "perl": PERL_FORGE_DONE + 'forge(\'{"type":"done","status":"ok"}\');\n1 while 1;\n',
    }[language]
    response = await arena_warm.attack(
        code, language=language, limits={"cpu_seconds": 1, "wall_seconds": 20}
    )

    assert_outcome(response, Outcome.OUTCOME_CPU_LIMIT)
    assert response.usage.cpu_seconds >= 0.75


def _end_mark_code(language: str, *, stray: bool) -> str:
    """A callback that makes the end mark itself, then sleeps; with a stray process if asked."""
    if language == "python":
        return FORGE_DONE + (
            "import socket, subprocess, sys, time\n"
            + (
                "subprocess.Popen([sys.executable, '-I', '-S', '-c', 'import time; time.sleep(1000)',"
                " '{TOKEN}'])\n"
                if stray
                else ""
            )
            + "print('marked', flush=True)\n"
            "forge({'type': 'done', 'status': 'exception', 'message': 'said so'})\n"
            "socket.socket(fileno=fd).shutdown(socket.SHUT_WR)\n"
            "time.sleep(30)\n"
        )
    return PERL_FORGE_DONE + (
        ("if (!fork) { $0 = 'stray {TOKEN}'; sleep 1000; POSIX::_exit(0); }\n" if stray else "")
        + "$| = 1;\n"
        'print "marked\\n";\n'
        'forge(\'{"type":"done","status":"exception","message":"said so"}\');\n'
        "shutdown($b, 1);\n"
        "sleep 30;\n"
    )


async def test_an_end_mark_of_a_callback_alone_in_its_cell_ends_the_run_there(
    arena_warm: Arena, language: str
) -> None:
    # The end mark (a done frame, then the bridge shut down for writing) is how a
    # bootstrap ends a finished run; a callback that makes one itself, from its own
    # process and alone in its cell, ends its own run there: answered as its frame says.
    code = _end_mark_code(language, stray=False)
    if arena_warm.policy:
        # The widened policy's binds start children cold: the handle is a shim that
        # mirrors the callback's exit, so no mark is taken and the exit decides.
        response = await arena_warm.attack(code, language=language, limits={"wall_seconds": 3})
        assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
        assert response.stdout == "marked\n"
        return
    response = await arena_warm.attack(code, language=language, limits={"wall_seconds": 20})

    assert_outcome(response, Outcome.OUTCOME_FAILED)
    assert response.failure.message == "said so"
    assert response.stdout == "marked\n"
    assert response.usage.wall_seconds < 10, "the run waited past its end mark"


async def test_an_end_mark_with_another_process_in_the_cell_leaves_the_exit_to_decide(
    arena_warm: Arena, language: str
) -> None:
    # The bridge's end does not say who shut it down, so with another process in the
    # cell (one that could have made the mark) the callback's exit decides: here the
    # wall limit, and what runs on is killed.
    code = _end_mark_code(language, stray=True)
    response = await arena_warm.attack(code, language=language, limits={"wall_seconds": 3})

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
    assert response.stdout == "marked\n"


async def test_success_then_a_segfault_is_killed(arena_warm: Arena, language: str) -> None:
    code = {
        "python": FORGE_DONE
        + "forge({'type': 'done', 'status': 'ok'})\nimport ctypes\nctypes.string_at(0)\n",
        "perl": PERL_FORGE_DONE
        + 'forge(\'{"type":"done","status":"ok"}\');\nmy $x = unpack(\'p\', pack(\'J\', 8));\n',
    }[language]
    response = await arena_warm.attack(code, language=language)

    assert_outcome(response, Outcome.OUTCOME_KILLED)
    assert response.signal == 11
    assert "SIGSEGV" in response.failure.message


async def test_never_ran_after_a_qb_call_is_failed_not_rejected(
    arena_warm: Arena, language: str
) -> None:
    code = {
        "python": FORGE_DONE
        + (
            "qb.block(qb.jobid())\n"
            "forge({'type': 'done', 'status': 'rejected', 'message': 'never ran, honest'})\n"
            "os._exit(2)\n"
        ),
        "perl": PERL_FORGE_DONE
        + (
            "qb::block(qb::jobid());\n"
            'forge(\'{"type":"done","status":"rejected","message":"never ran"}\');\n'
            "POSIX::_exit(2);\n"
        ),
    }[language]
    response = await arena_warm.attack(code, language=language)

    assert_outcome(response, Outcome.OUTCOME_FAILED)
    assert "made 1 qb calls" in response.failure.message
    assert [(a.verb, a.ok) for a in response.actions] == [("block", True)]


async def test_a_malformed_done_frame_is_a_recorded_and_reported_violation(
    arena_warm: Arena, language: str
) -> None:
    code = {
        "python": FORGE_DONE
        + (
            "qb.block(qb.jobid())\n"
            "forge({'type': 'done', 'status': 'exit', 'exit_code': 'not-a-number'})\n"
            "import time\ntime.sleep(30)\n"
        ),
        "perl": PERL_FORGE_DONE
        + (
            "qb::block(qb::jobid());\n"
            'forge(\'{"type":"done","status":"exit","exit_code":"not-a-number"}\');\n'
            "sleep 30;\n"
        ),
    }[language]
    response = await arena_warm.attack(code, language=language, limits={"wall_seconds": 20})

    assert_outcome(response, Outcome.OUTCOME_KILLED)
    assert "broke the bridge protocol" in response.failure.message
    assert "exit_code" in response.failure.message
    assert response.usage.wall_seconds < 15, "the violation ended the run at once"
    run = await arena_warm.stack.client.get_run(response.invocation_id)
    assert run.outcome == Outcome.OUTCOME_KILLED
    assert [a.verb for a in run.result.actions] == ["block"]


async def test_usage_cannot_be_reported_by_the_child(arena_warm: Arena) -> None:
    code = FORGE_DONE + (
        "forge({'type': 'done', 'status': 'ok', 'cpu_seconds': 0, 'peak_rss_bytes': 1})\n"
    )
    response = await arena_warm.attack(code)

    assert_outcome(response, Outcome.OUTCOME_KILLED)
    assert "unknown field 'cpu_seconds'" in response.failure.message


async def test_huge_function_names_do_not_grow_the_executor(arena_warm: Arena) -> None:
    code = FIND_BRIDGE + (
        "import json\n"
        "name = 'f' * 800_000\n"
        "for n in range(32):\n"
        "    body = json.dumps({'type': 'call', 'id': n + 1, 'fn': name, 'args': ['x' * 100_000],"
        " 'kwargs': {}}).encode()\n"
        "    os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "    size = struct.unpack('>I', os.read(fd, 4))[0]\n"
        "    while size:\n"
        "        size -= len(os.read(fd, size))\n"
        "print('sent 32')\n"
    )
    executor = psutil.Process()
    rss_before = executor.memory_info().rss

    response = await arena_warm.attack(code, limits={"memory_bytes": 64 * MIB})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert response.stdout == "sent 32\n"
    assert len(response.actions) == 32
    assert all(len(a.verb) <= MAX_VERB_CHARS for a in response.actions)
    assert sum(len(a.verb) + len(a.target) + len(a.message) for a in response.actions) < 256_000
    assert response.ByteSize() < 512_000
    assert executor.memory_info().rss - rss_before < 32 * MIB


def unblock_storm(target: str, calls: int) -> str:
    """Python code calling ``qb.workunblock(<target expression>)`` ``calls`` times, errors aside."""
    return (
        f"target = {target}\n"
        f"for _ in range({calls}):\n"
        "    try:\n"
        "        qb.workunblock(target)\n"
        "    except qb.QbError:\n"
        "        pass\n"
        "print('done')\n"
    )


async def test_a_storm_of_long_calls_keeps_the_actions_within_their_budget(
    arena_warm: Arena,
) -> None:
    code = unblock_storm("'12:' + ','.join(str(n) for n in range(2000))", 3000)
    response = await arena_warm.attack(code, limits={"wall_seconds": 60})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    kept = sum(len(a.verb) + len(a.target) + len(a.message) for a in response.actions)
    assert kept <= MAX_ACTIONS_BYTES + 1000
    assert response.actions[-1].target.endswith("more qb calls")
    assert response.ByteSize() < MAX_ACTIONS_BYTES + 512_000


async def test_a_storm_of_four_byte_characters_keeps_the_actions_within_their_bytes(
    arena_warm: Arena,
) -> None:
    # 1500 records of ~600 characters: within 1 MiB of characters, 3.5 MiB of bytes.
    code = unblock_storm("'12:' + '\\U0001F600' * 600", 1500)
    response = await arena_warm.attack(code, limits={"wall_seconds": 60})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    *kept, note = response.actions
    assert note.target.endswith("more qb calls"), note
    assert sum(a.ByteSize() + 3 for a in kept) <= MAX_ACTIONS_BYTES  # with the field's own framing
    assert response.ByteSize() < MAX_ACTIONS_BYTES + 64_000


async def test_a_failure_of_four_byte_characters_comes_back_within_its_bytes(
    arena_warm: Arena, language: str
) -> None:
    code = {
        "python": "def f(n):\n    if n == 0:\n        raise ValueError('\\U0001F600' * 10_000)\n"
        "    f(n - 1)\nf(900)\n",
        "perl": 'use utf8;\nsub f { my ($n) = @_; die "\\x{1F600}" x 10_000 if !$n; f($n - 1) }\nf(900);\n',
    }[language]
    response = await arena_warm.attack(code, language=language)

    assert_outcome(response, Outcome.OUTCOME_FAILED)
    assert len(response.failure.message.encode()) <= MAX_FAILURE_MESSAGE_BYTES
    assert response.failure.message.endswith(" more bytes]"), response.failure.message[-40:]
    assert len(response.failure.traceback.encode()) <= MAX_TRACEBACK_BYTES


async def test_a_long_traceback_is_kept_to_its_bound_and_a_cut_says_so(
    arena_warm: Arena, language: str
) -> None:
    # The bootstraps cut every text to 16,384 characters, without a word, though the
    # traceback's bound is 64 KiB.
    def raising(length: int) -> str:
        return {
            "python": f"raise ValueError('x' * {length})\n",
            "perl": f"die 'x' x {length};\n",
        }[language]

    kept = await arena_warm.attack(raising(40_000), language=language)
    cut = await arena_warm.attack(raising(200_000), language=language)

    assert_outcome(kept, Outcome.OUTCOME_FAILED)
    assert "x" * 40_000 in kept.failure.traceback
    assert_outcome(cut, Outcome.OUTCOME_FAILED)
    assert 60_000 < len(cut.failure.traceback.encode()) <= MAX_TRACEBACK_BYTES
    # Its end is kept, where the cause is, after a marker of what came before.
    assert re.match(r"…\[\d+ earlier (characters|bytes)\]x", cut.failure.traceback), (
        cut.failure.traceback[:60]
    )


async def test_a_forged_failure_is_cut_to_its_bytes_whatever_the_child_counted(
    arena_warm: Arena,
) -> None:
    # The bootstraps cut a done frame's texts to their bounds in characters; a frame the
    # callback writes itself need not.
    code = FORGE_DONE + (
        "text = '\\U0001F600' * 30_000\n"
        "forge({'type': 'done', 'status': 'exception', 'exception_type': 'E',"
        " 'message': text, 'traceback': text})\n"
        "os._exit(1)\n"
    )
    response = await arena_warm.attack(code)

    assert_outcome(response, Outcome.OUTCOME_FAILED)
    assert len(response.failure.message.encode()) <= MAX_FAILURE_MESSAGE_BYTES
    assert len(response.failure.traceback.encode()) <= MAX_TRACEBACK_BYTES
    assert re.match(r"…\[\d+ earlier bytes\]\U0001F600", response.failure.traceback)


async def test_output_that_is_not_utf8_stays_within_output_bytes(
    arena_warm: Arena, language: str
) -> None:
    code = {
        "python": (
            "import sys\n"
            "sys.stdout.buffer.write(b'\\xff' * (1 << 20))\n"
            "sys.stderr.buffer.write(b'\\xfe' * (1 << 20))\n"
        ),
        "perl": "binmode STDOUT; binmode STDERR;\n"
        'print STDOUT "\\xff" x (1 << 20);\nprint STDERR "\\xfe" x (1 << 20);\n',
    }[language]
    response = await arena_warm.attack(code, language=language, limits={"output_bytes": MIB})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    for text, cut in (
        (response.stdout, response.stdout_truncated),
        (response.stderr, response.stderr_truncated),
    ):
        assert len(text.encode()) <= MIB
        assert cut, "replacing invalid bytes would have tripled the output"
