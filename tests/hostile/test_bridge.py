"""Hostile callbacks against the bridge socket: closing it, garbage, oversized frames, call storms.

The bridge is the callback's only channel to the executor (4-byte big-endian length +
JSON frames, at most ``MAX_CHILD_FRAME_BYTES`` from the child). Whatever the callback
writes on it may end its own run, never the service or another callback; the executor
must not believe a length it was told (a 2 GiB header allocates nothing).
"""

from __future__ import annotations

import psutil
import pytest

from executor.child.protocol import MAX_ARG_DEPTH, MAX_CHILD_FRAME_BYTES, MAX_INT_DIGITS
from executor.host_api import MAX_CALLS_PER_RUN
from tests.hostile.harness import MIB, Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

FIND_BRIDGE = (
    "import os, struct\n"
    "def bridge_fd():\n"
    "    for name in os.listdir('/proc/self/fd'):\n"
    "        try:\n"
    "            if os.readlink(f'/proc/self/fd/{name}').startswith('socket:'):\n"
    "                return int(name)\n"
    "        except OSError:\n"
    "            pass\n"
    "    raise SystemExit('no bridge socket found')\n"
    "fd = bridge_fd()\n"
)

PERL_FIND_BRIDGE = (
    "use POSIX ();\n"
    "opendir(my $d, '/proc/self/fd') or die \"opendir: $!\";\n"
    "my ($fd) = grep { (readlink(\"/proc/self/fd/$_\") // '') =~ /^socket:/ } readdir $d;\n"
    'die "no bridge socket found\\n" unless defined $fd;\n'
)


async def test_closing_the_bridge_ends_qb_not_the_service(arena_warm: Arena, language: str) -> None:
    code = {
        "python": FIND_BRIDGE
        + (
            "os.close(fd)\n"
            "try:\n"
            "    qb.jobstatus(qb.jobid())\n"
            "except qb.QbError as err:\n"
            "    print('closed', type(err.__cause__).__name__)\n"
        ),
        "perl": PERL_FIND_BRIDGE
        + ('POSIX::close($fd);\neval { qb::jobstatus(qb::jobid()); 1 } or print "closed\\n";\n'),
    }[language]
    response = await arena_warm.attack(code, language=language, limits={"wall_seconds": 5})

    # Without a done frame the exit status tells how it ended.
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED, Outcome.OUTCOME_FAILED)
    assert response.stdout.startswith("closed"), response.stdout + response.stderr


# Each writes its garbage, then makes a qb call and reports how that went.
GARBAGE = {
    "random-bytes": "payload = os.urandom(4 << 20)\n",
    "not-json": "payload = struct.pack('>I', 64) + b'\\xff' * 64\n",
    "json-not-object": "body = b'[1, 2, 3]'\npayload = struct.pack('>I', len(body)) + body\n",
    "unknown-frame-type": (
        'body = b\'{"type": "reply", "id": 1, "ok": true}\'\n'
        "payload = struct.pack('>I', len(body)) + body\n"
    ),
    # Within the frame limit, but deeper than any JSON parser's recursion limit.
    "nested-json": (
        f"body = b'[' * ({MAX_CHILD_FRAME_BYTES} - 8)\n"
        "payload = struct.pack('>I', len(body)) + body\n"
    ),
    "call-with-nested-args": (
        'body = (\'{"type":"call","id":1,"fn":"jobstatus","args":\' + \'[\' * 900 + \']\' * 900'
        " + ',\"kwargs\":{}}').encode()\n"
        "payload = struct.pack('>I', len(body)) + body\n"
    ),
    "call-with-bad-fields": (
        'body = b\'{"type": "call", "id": {"x": 1}, "fn": [1], "args": "no", "kwargs": 5}\'\n'
        "payload = struct.pack('>I', len(body)) + body\n"
    ),
    "oversized-frame": (
        f"payload = struct.pack('>I', {MAX_CHILD_FRAME_BYTES} + 1) + b'x' * ({MAX_CHILD_FRAME_BYTES} + 1)\n"
    ),
    "2GiB-header": "payload = struct.pack('>I', 2 << 30) + b'x' * (8 << 20)\n",
    "4GiB-header": "payload = struct.pack('>I', (4 << 30) - 1) + b'x' * (8 << 20)\n",
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_on_the_bridge_ends_only_this_run(arena_warm: Arena, kind: str) -> None:
    code = (
        FIND_BRIDGE
        + GARBAGE[kind]
        + (
            "try:\n"
            "    os.write(fd, payload)\n"
            "    print('written')\n"
            "except OSError as err:\n"
            "    print('write failed', type(err).__name__)\n"
            "try:\n"
            "    print('answer', qb.jobstatus(qb.jobid()))\n"
            "except Exception as err:\n"
            "    print('qb failed', type(err).__name__)\n"
        )
    )
    executor = psutil.Process()
    rss_before = executor.memory_info().rss

    response = await arena_warm.attack(code, limits={"wall_seconds": 5})

    if kind == "call-with-nested-args":  # a well-formed call: it may be answered (or refused)
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED, Outcome.OUTCOME_FAILED)
    else:  # a protocol violation: the run is ended at once, and says why
        assert_outcome(response, Outcome.OUTCOME_KILLED)
        assert response.failure.message.startswith("the callback broke the bridge protocol")
        assert "answer" not in response.stdout, response.stdout
    # The executor believed no announced length (the test process is the executor).
    assert executor.memory_info().rss - rss_before < 64 * MIB


async def test_garbage_flood_on_the_bridge_from_perl(arena_warm: Arena) -> None:
    code = PERL_FIND_BRIDGE + (
        "open(my $b, '+<&=', $fd) or die \"fdopen: $!\";\n"
        "binmode $b;\n"
        "$SIG{PIPE} = 'IGNORE';\n"
        "syswrite($b, pack('N', 2 << 30) . ('x' x (1 << 20))) for 1 .. 16;\n"
        'eval { qb::jobstatus(qb::jobid()); print "answered\\n"; 1 } or print "qb failed\\n";\n'
    )
    response = await arena_warm.attack(code, language="perl", limits={"wall_seconds": 5})

    assert_outcome(response, Outcome.OUTCOME_KILLED)
    assert response.failure.message.startswith("the callback broke the bridge protocol")
    assert "answered" not in response.stdout


async def test_half_a_frame_then_silence_ends_at_the_wall_deadline(arena_warm: Arena) -> None:
    code = FIND_BRIDGE + (
        "import time\n"
        f"os.write(fd, struct.pack('>I', {MAX_CHILD_FRAME_BYTES}) + b'{{\"type\"')\n"
        "time.sleep(1000)\n"
    )
    response = await arena_warm.attack(code, limits={"wall_seconds": 1})

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)


async def test_qb_call_storm_is_cut_off_at_the_call_limit(arena_warm: Arena) -> None:
    # 20000 real supervisor round trips were asked for; the executor answers the first
    # MAX_CALLS_PER_RUN and refuses the rest (about 10 s of storm on the 2-core host).
    code = (
        "done = 0\n"
        "try:\n"
        "    for _ in range(20000):\n"
        "        qb.jobstatus(qb.jobid())\n"
        "        done += 1\n"
        "except qb.QbError as err:\n"
        "    print(done, type(err).__name__, err)\n"
    )
    response = await arena_warm.attack(code, limits={"wall_seconds": 50})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    count, kind, message = response.stdout.split(" ", 2)
    assert int(count) == MAX_CALLS_PER_RUN
    assert kind == "QbError"
    assert f"at most {MAX_CALLS_PER_RUN} qb calls" in message
    assert len(response.actions) == MAX_CALLS_PER_RUN


async def test_qb_call_storm_from_perl_is_cut_off_too(arena_warm: Arena) -> None:
    # Calls the executor refuses without asking the supervisor (a malformed job id)
    # count as well, so this storm is quicker: InvalidArgument until the limit, then QbError.
    calls = MAX_CALLS_PER_RUN + 100
    code = (
        "my %kinds;\n"
        f"for (1 .. {calls}) {{\n"
        "    eval { qb::jobstatus('not-a-job'); 1 } and next;\n"
        "    $kinds{ $@->kind }++;\n"
        "    $kinds{last} = $@->message;\n"
        "}\n"
        'print join(\' \', map { "$_=$kinds{$_}" } qw(InvalidArgument QbError)), "\\n$kinds{last}\\n";\n'
    )
    response = await arena_warm.attack(code, language="perl", limits={"wall_seconds": 30})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    counts, last = response.stdout.splitlines()
    assert counts == f"InvalidArgument={MAX_CALLS_PER_RUN} QbError={calls - MAX_CALLS_PER_RUN}"
    assert f"at most {MAX_CALLS_PER_RUN} qb calls" in last
    assert len(response.actions) == MAX_CALLS_PER_RUN


async def test_oversized_qb_call_from_the_callback_fails_the_call(
    arena_warm: Arena, language: str
) -> None:
    code = {
        "python": (
            "try:\n"
            "    qb.jobstatus('1' * (2 << 20))\n"
            "except Exception as err:\n"
            "    print('refused', type(err).__name__)\n"
        ),
        "perl": (
            "eval { qb::jobstatus('1' x (2 << 20)); 1 } or print 'refused ', $@->kind, \"\\n\";\n"
        ),
    }[language]
    response = await arena_warm.attack(code, language=language, limits={"wall_seconds": 5})

    # Refused in the callback before it is sent: the run goes on.
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    assert response.stdout == "refused InvalidArgument\n", response.stdout + response.stderr


async def test_a_qb_call_after_the_callback_broke_its_bridge_raises_a_qb_error(
    arena_warm: Arena,
) -> None:
    # Closed, or shut down for reading: either way the callback's qb calls raise
    # qb.QbError (as the README says of every qb error), saying whether the call went.
    code = FIND_BRIDGE + (
        "import socket\n"
        "socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RD)\n"
        "try:\n"
        "    qb.jobstatus(qb.jobid())\n"
        "except qb.QbError as err:\n"
        "    print('shut:', err)\n"
        "os.close(fd)\n"
        "try:\n"
        "    qb.jobstatus(qb.jobid())\n"
        "except qb.QbError as err:\n"
        "    print('closed:', err)\n"
    )
    response = await arena_warm.attack(code, limits={"wall_seconds": 5})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED, Outcome.OUTCOME_FAILED)
    shut, closed = response.stdout.splitlines()
    assert shut.startswith("shut: qb.jobstatus was sent but no answer came: the bridge")
    assert shut.endswith("it may have been applied")
    assert closed.startswith("closed: qb.jobstatus could not be sent: the bridge")


async def test_a_qb_call_after_the_callback_put_another_file_over_its_bridge_raises(
    arena_warm: Arena,
) -> None:
    # Its stdout's pipe, or a socket of its own, over the bridge's descriptor: the call
    # waited for an answer from it until the wall limit (probe 75).
    code = FIND_BRIDGE + (
        "import socket\n"
        "bridge, (mine, _) = os.dup(fd), socket.socketpair()\n"
        "for name, other in (('stdout', 1), ('socket', mine.fileno())):\n"
        "    os.dup2(other, fd)\n"
        "    try:\n"
        "        qb.jobstatus(qb.jobid())\n"
        "    except qb.QbError as err:\n"
        "        print(name + ':', err)\n"
        "os.dup2(bridge, fd)\n"
        "print('again:', qb.jobstatus(qb.jobid()))\n"
    )
    response = await arena_warm.attack(code, limits={"wall_seconds": 10})

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    *lines, again = response.stdout.splitlines()
    assert again.startswith("again: ")  # the bridge put back, the calls go through again
    assert [line.split(":", 1)[0] for line in lines] == ["stdout", "socket"]
    for line in lines:
        assert "qb.jobstatus could not be sent: the bridge to the executor is broken (its" in line
        assert line.endswith("is another file now: the callback replaced it)")


DEEP_ARGUMENT = {
    "python": (
        "x = 1\n"
        "for _ in range(2000):\n"
        "    x = [x]\n"
        "looped = []\n"
        "looped.append(looped)\n"
        "for argument in (x, looped):\n"
        "    try:\n"
        "        qb.jobinfo('-id', argument)\n"
        "    except qb.InvalidArgument as err:\n"
        "        print(type(err).__name__, err)\n"
        "print('went on', qb.jobstatus(qb.jobid()))\n"
    ),
    "perl": (
        "my $x = 1;\n"
        "$x = [$x] for 1 .. 2000;\n"
        "my $looped = [];\n"
        "push @$looped, $looped;\n"
        "for my $argument ($x, $looped) {\n"
        "    eval { qb::jobinfo('-id', $argument); 1 } and next;\n"
        '    print $@->kind, " ", $@->message, "\\n";\n'
        "}\n"
        'print "went on ", qb::jobstatus($qb::jobid), "\\n";\n'
    ),
}


async def test_a_qb_call_whose_arguments_nest_too_deep_fails_the_call(
    arena_warm: Arena, language: str
) -> None:
    # Refused in the callback, catchable, naming the function: sent, the frame was too
    # deep for the executor's parser and ended the run as a broken bridge.
    response = await arena_warm.attack(
        DEEP_ARGUMENT[language], language=language, limits={"wall_seconds": 10}
    )

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    *refusals, went_on = response.stdout.splitlines()
    separator = "." if language == "python" else "::"
    references = "lists or dicts" if language == "python" else "array or hash references"
    expected = (
        f"InvalidArgument qb{separator}jobinfo: its arguments nest {references} more than "
        f"{MAX_ARG_DEPTH} deep"
    )
    assert refusals == [expected, expected], response.stdout + response.stderr
    assert went_on.startswith("went on ")
    assert len(response.actions) == 1


HUGE_INTEGER = {
    # One int each place an id goes, then with Python's own limit on digits lifted, so
    # only qb stands between the number and the frame.
    "python": (
        "import sys\n"
        "huge = 10 ** 5000\n"
        "for call in (lambda: qb.jobstatus(huge), lambda: qb.block([huge]),\n"
        "             lambda: qb.jobinfo('-id', -huge), lambda: qb.jobinfo(fields={huge: 1}),\n"
        "             lambda: (sys.set_int_max_str_digits(0), qb.jobstatus(huge))):\n"
        "    try:\n"
        "        call()\n"
        "    except qb.QbError as err:\n"
        "        print(type(err).__name__, err)\n"
        "print('went on', qb.jobstatus(qb.jobid()))\n"
    ),
    # Perl sends a big integer as its digits, a string: the executor refuses the id.
    "perl": (
        "use Math::BigInt;\n"
        "eval { qb::jobstatus(Math::BigInt->new('1' . '0' x 5000)); 1 }\n"
        '    or print $@->kind, " ", substr($@->message, 0, 28), "\\n";\n'
        'print "went on ", qb::jobstatus($qb::jobid), "\\n";\n'
    ),
}


async def test_a_qb_call_with_an_integer_of_too_many_digits_fails_the_call(
    arena_warm: Arena, language: str
) -> None:
    # Python refuses it in the callback (its own int() limit raised a plain ValueError,
    # and with that lifted the executor ended the run, the frame "not UTF-8 JSON").
    response = await arena_warm.attack(
        HUGE_INTEGER[language], language=language, limits={"wall_seconds": 10}
    )

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    *refusals, went_on = response.stdout.splitlines()
    if language == "python":
        assert refusals == [
            f"InvalidArgument qb.{fn}: its arguments hold an integer of more than "
            f"{MAX_INT_DIGITS} digits"
            for fn in ("jobstatus", "block", "jobinfo", "jobinfo", "jobstatus")
        ], response.stdout + response.stderr
    else:
        assert refusals == ["InvalidArgument job id 1" + "0" * 20], response.stdout
    assert went_on.startswith("went on ")
    assert len(response.actions) == 1 + (language == "perl")


async def test_a_frame_with_a_number_of_too_many_digits_ends_the_run_saying_so(
    arena_warm: Arena,
) -> None:
    code = FIND_BRIDGE + (
        'body = b\'{"type":"call","id":\' + b\'1\' * 100_000 + b\',"fn":"jobid",\'\n'
        'body += b\'"args":[],"kwargs":{}}\'\n'
        "os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "print('answer', qb.jobstatus(qb.jobid()))\n"
    )
    response = await arena_warm.attack(code, limits={"wall_seconds": 10})

    assert_outcome(response, Outcome.OUTCOME_KILLED)
    assert response.failure.message == (
        "the callback broke the bridge protocol: malformed frame: "
        "frame holds a number of more than 4300 digits"
    )
