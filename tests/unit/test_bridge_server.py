"""The executor's end of a bridge: what counts as a child's end mark, and what does not.

A run is answered before its child exits only on the end mark: the done frame, then the
bridge shut down for writing, and nothing else (``BridgeServer.end_marked``). Anything
else leaves the run to the child's exit status, as before.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest

from executor.child import protocol
from executor.child.protocol import CallFrame, ReplyFrame
from executor.sandbox.bridge import MAX_SENDERS, BridgeServer
from executor.sandbox.exit_status import ChildExit

DONE = protocol.encode({"type": "done", "status": "ok", "exit_code": 0})
CALL = protocol.encode({"type": "call", "id": 1, "fn": "jobid", "args": [], "kwargs": {}})


class Served:
    def __init__(self, *, with_senders: bool = False) -> None:
        self.ours, self.child = socket.socketpair()
        self.ours.setblocking(False)
        self.evidence = ChildExit()
        self.violations: list[str] = []
        self.marks = 0
        if with_senders:  # as the executor's end is: each read comes with its sender's pid
            self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        main_pid = os.getpid() if with_senders else 0  # this process plays the callback's
        self.server = BridgeServer(
            self.ours,
            b"",
            self._answer,
            self.evidence,
            self.violations.append,
            self._mark,
            lambda: main_pid,
        )

    async def _answer(self, frame: CallFrame) -> ReplyFrame:
        return {"type": "reply", "id": frame["id"], "ok": True, "value": 42}

    def _mark(self) -> None:
        self.marks += 1

    async def ended(self) -> None:
        await asyncio.wait_for(self.server.ended, 5)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    made = Served()
    yield made
    made.server.close()
    made.ours.close()
    made.child.close()


@pytest.fixture
async def served_with_senders() -> AsyncIterator[Served]:
    made = Served(with_senders=True)
    yield made
    made.server.close()
    made.ours.close()
    made.child.close()


# The first bytes of a frame of 256 bytes: a forked process that died writing it.
PART_OF_A_FRAME = b'\0\0\1\0{"id":'


def send_from_another_process(sock: socket.socket, data: bytes) -> None:
    """``data`` sent on ``sock`` by a forked process, which then exits (as a callback's fork)."""
    pid = os.fork()
    if pid == 0:  # only async-signal-safe calls in the fork of a threaded process
        os.write(sock.fileno(), data)
        os._exit(0)
    os.waitpid(pid, 0)


async def test_another_process_part_of_a_frame_leaves_the_callbacks_frames_whole(
    served_with_senders: Served,
) -> None:
    served = served_with_senders
    send_from_another_process(served.child, PART_OF_A_FRAME)
    served.child.sendall(CALL)  # read on its own, not as the rest of the other's frame
    reply = await asyncio.wait_for(asyncio.to_thread(served.child.recv, 4096), 5)
    assert protocol.decode_body(reply[protocol.HEADER.size :])["value"] == 42
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    # What the other process left is its own loss: the callback's end stands.
    assert served.server.end_marked and served.marks == 1 and not served.violations


async def test_frames_of_two_processes_interleaved_are_each_taken_whole(
    served_with_senders: Served,
) -> None:
    served = served_with_senders
    served.child.sendall(CALL[:10])
    forged = protocol.encode({"type": "done", "status": "exception", "message": "forged"})
    send_from_another_process(served.child, forged)  # whole, inside the callback's frame
    served.child.sendall(CALL[10:])
    reply = await asyncio.wait_for(asyncio.to_thread(served.child.recv, 4096), 5)
    assert protocol.decode_body(reply[protocol.HEADER.size :])["value"] == 42
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert served.evidence.done == {"type": "done", "status": "ok", "exit_code": 0}
    assert served.server.end_marked and not served.violations


async def test_the_callbacks_own_part_of_a_frame_at_the_end_is_still_a_violation(
    served_with_senders: Served,
) -> None:
    served = served_with_senders
    served.child.sendall(DONE + PART_OF_A_FRAME)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert not served.server.end_marked
    assert served.violations == [
        "the callback broke the bridge protocol: malformed frame: the bridge closed inside a frame"
    ]


async def test_parts_of_frames_are_kept_for_a_bounded_number_of_processes(
    served_with_senders: Served,
) -> None:
    served = served_with_senders
    for _ in range(MAX_SENDERS + 1):
        send_from_another_process(served.child, PART_OF_A_FRAME)
    await served.ended()

    assert served.violations == [
        "the callback broke the bridge protocol: "
        f"more than {MAX_SENDERS} processes with part of a frame on the bridge at once"
    ]


async def test_whole_frames_need_no_room_beside_the_most_parts_of_frames(
    served_with_senders: Served,
) -> None:
    served = served_with_senders
    for _ in range(MAX_SENDERS):
        send_from_another_process(served.child, PART_OF_A_FRAME)
    served.child.sendall(CALL)  # the callback's own process: a whole frame holds no part
    reply = await asyncio.wait_for(asyncio.to_thread(served.child.recv, 4096), 5)
    assert protocol.decode_body(reply[protocol.HEADER.size :])["value"] == 42
    send_from_another_process(served.child, DONE)  # another process's whole frame, ignored
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert served.server.end_marked and not served.violations
    assert served.evidence.calls == 1


async def test_a_whole_frame_then_part_of_one_takes_room_from_the_most(
    served_with_senders: Served,
) -> None:
    served = served_with_senders
    for _ in range(MAX_SENDERS):
        send_from_another_process(served.child, PART_OF_A_FRAME)
    send_from_another_process(served.child, DONE + PART_OF_A_FRAME)
    await served.ended()

    assert served.violations == [
        "the callback broke the bridge protocol: "
        f"more than {MAX_SENDERS} processes with part of a frame on the bridge at once"
    ]


async def test_done_then_shutdown_is_the_end_mark(served: Served) -> None:
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert served.server.end_marked and served.marks == 1
    assert served.evidence.done == {"type": "done", "status": "ok", "exit_code": 0}


async def test_a_call_is_answered_and_the_mark_still_counts_after_it(served: Served) -> None:
    served.child.sendall(CALL)
    reply = await asyncio.wait_for(asyncio.to_thread(served.child.recv, 4096), 5)
    assert protocol.decode_body(reply[protocol.HEADER.size :])["value"] == 42
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert served.server.end_marked and served.evidence.calls == 1


async def test_eof_without_a_done_frame_is_no_mark(served: Served) -> None:
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert not served.server.end_marked and served.marks == 0 and not served.violations


async def test_a_done_frame_without_eof_is_no_mark(served: Served) -> None:
    served.child.sendall(DONE)
    await asyncio.sleep(0.1)

    assert served.evidence.done is not None
    assert not served.server.end_marked and not served.server.ended.done()


async def test_bytes_after_the_done_frame_spoil_the_mark(served: Served) -> None:
    served.child.sendall(DONE + b"\0\0")  # half a header, then EOF
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert not served.server.end_marked and served.marks == 0


async def test_a_second_done_frame_is_a_violation_not_a_mark(served: Served) -> None:
    served.child.sendall(DONE + DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    assert not served.server.end_marked
    assert served.violations == ["the callback broke the bridge protocol: a second done frame"]


async def test_our_side_is_shut_down_once_after_a_mark_however_often_it_is_ended(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutdowns: list[int] = []
    real_shutdown = socket.socket.shutdown

    def counted(sock: socket.socket, how: int) -> None:
        if sock is served.ours:
            shutdowns.append(how)
        real_shutdown(sock, how)

    monkeypatch.setattr(socket.socket, "shutdown", counted)
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()
    assert served.server.end_marked and not shutdowns  # the child waits for our side

    served.server.release_after_mark()
    served.server.close()
    served.server.close()

    assert shutdowns == [socket.SHUT_RDWR]
    assert served.child.recv(1) == b""  # and the child sees it


async def test_read_pending_takes_an_end_mark_the_loop_has_not_handed_over(
    served: Served,
) -> None:
    # No await between the send and the look: the loop never ran its reader.
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    served.server.read_pending()

    assert served.server.end_marked and served.marks == 1
    assert served.server.ended.done()


async def test_read_pending_with_nothing_sent_changes_nothing(served: Served) -> None:
    served.server.read_pending()

    assert not served.server.ended.done() and served.marks == 0


async def test_a_done_frame_after_a_call_is_kept_when_the_child_exits_before_the_reply(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal handler's die ends a call mid-wait; the child reports it and exits (a cold
    # child makes no end mark) before the call's answer comes: the reply cannot be sent,
    # and the done frame after the call still says how the run ended.
    child_gone = asyncio.Event()

    async def answer_after_the_exit(frame: CallFrame) -> ReplyFrame:
        await child_gone.wait()
        return {"type": "reply", "id": frame["id"], "ok": True, "value": 42}

    monkeypatch.setattr(served.server, "_on_call", answer_after_the_exit)
    failed = protocol.encode({"type": "done", "status": "exception", "message": "TIMEOUT"})
    served.child.sendall(CALL + failed)
    await asyncio.sleep(0.05)  # the call is taken (and answered later)
    served.child.close()
    child_gone.set()
    await served.ended()

    assert served.evidence.done is not None and served.evidence.done["message"] == "TIMEOUT"
    assert served.evidence.calls == 1 and not served.violations


@pytest.mark.parametrize("one_read", [True, False], ids=["with-the-call", "after-the-call"])
async def test_a_call_given_up_after_the_childs_death_leaves_its_done_frame_read(
    served: Served, monkeypatch: pytest.MonkeyPatch, one_read: bool
) -> None:
    # The child reported a handler's die and exited while its call was still being
    # answered (a large answer): the answer is given up, the done frame is still taken,
    # and a reset for our reply left unread is no sign of a start frame left unread.
    cancelled = asyncio.Event()

    async def never_answered(frame: CallFrame) -> ReplyFrame:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    monkeypatch.setattr(served.server, "_on_call", never_answered)
    failed = protocol.encode({"type": "done", "status": "exception", "message": "TIMEOUT"})
    if one_read:
        served.child.sendall(CALL + failed)
        await asyncio.sleep(0.05)
    else:
        served.child.sendall(CALL)
        await asyncio.sleep(0.05)  # the call is taken, the reading paused
        served.child.sendall(failed + CALL)  # a call after it: nobody is left to answer
    served.ours.send(b"part of a reply")  # unread by the child: its close is a reset
    served.child.close()

    served.server.abandon_call()

    assert served.server.ended.done() and not served.server.answering
    assert served.evidence.done is not None and served.evidence.done["message"] == "TIMEOUT"
    assert not served.evidence.start_unread and not served.violations
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_finish_takes_what_is_queued_to_its_end_while_the_childs_end_is_held(
    served: Served,
) -> None:
    # Every process of the run is dead, its end of the bridge still open somewhere (in
    # flight in a unix socket): the done frame queued is taken, and the end is an EOF's.
    served.child.sendall(DONE + PART_OF_A_FRAME)

    served.server.finish()

    assert served.server.ended.done() and not served.server.end_marked
    assert served.evidence.done == {"type": "done", "status": "ok", "exit_code": 0}
    assert served.violations and "the bridge closed inside a frame" in served.violations[0]


async def test_finish_after_the_end_changes_nothing(served: Served) -> None:
    served.child.sendall(DONE)
    served.child.shutdown(socket.SHUT_WR)
    await served.ended()

    served.server.finish()

    assert served.server.end_marked and served.marks == 1 and not served.violations


async def test_an_answer_up_to_the_childs_frame_limit_goes_and_one_byte_more_is_refused(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by probe 104: a reply past the child's limit was sent, and the child took it
    # for a broken bridge; every later call was refused.
    empty = len(protocol.encode({"type": "reply", "id": 1, "ok": True, "value": ""}))
    chars = protocol.MAX_PARENT_FRAME_BYTES - (empty - protocol.HEADER.size)

    async def answer(frame: CallFrame) -> ReplyFrame:
        extra = int(frame["args"][0])
        return {"type": "reply", "id": frame["id"], "ok": True, "value": "x" * (chars + extra)}

    monkeypatch.setattr(served.server, "_on_call", answer)

    def call(extra: int) -> dict[str, object]:
        served.child.sendall(
            protocol.encode(
                {"type": "call", "id": 1, "fn": "jobinfo", "args": [extra], "kwargs": {}}
            )
        )
        served.child.settimeout(30)
        (size,) = protocol.HEADER.unpack(
            served.child.recv(protocol.HEADER.size, socket.MSG_WAITALL)
        )
        body = bytearray()
        while len(body) < size:
            body += served.child.recv(size - len(body))
        assert size <= protocol.MAX_PARENT_FRAME_BYTES
        return protocol.decode_body(bytes(body))

    fits = await asyncio.to_thread(call, 0)
    assert fits["ok"] is True and len(str(fits["value"])) == chars
    refused = await asyncio.to_thread(call, 1)
    assert refused["ok"] is False
    assert refused["error"] == {
        "kind": "QbError",
        "message": (
            f"the answer to jobinfo is too large for the callback:"
            f" {protocol.MAX_PARENT_FRAME_BYTES + 1} bytes as it gets them (JSON), and the"
            f" bridge carries at most {protocol.MAX_PARENT_FRAME_BYTES} bytes (64 MiB); ask"
            f" for less of it (some fields, no agenda, fewer jobs)"
        ),
    }
    assert not served.violations
