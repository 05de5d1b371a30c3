"""The executor's end of a child's bridge: send the start frame, answer qb calls, keep the done frame.

Every frame the child sends is checked (``protocol.parse_child_frame``) before it is
believed; a length beyond the child's frame limit is refused before anything is read
into memory. Whatever the callback writes on its bridge may end its own run's bridge
(``bridge_error``), never the executor: the socket is shut down, so a qb call after
garbage fails at once instead of waiting. The processes of a run share the bridge, and
each one's bytes are framed apart (by the sender's pid the kernel attaches).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Final

from executor.child import protocol
from executor.child.protocol import CallFrame, ChildFrame, ReplyFrame
from executor.sandbox.exit_status import ChildExit
from executor.sandbox.reply_encoding import encode_in_steps

READ_CHUNK: Final = 64 << 10
# Room for the sender's SCM_CREDENTIALS (struct ucred: pid, uid, gid) on every read: the
# executor's end has SO_PASSCRED, so the kernel attaches them to what each process
# sends, and never hands data of two senders over in one read.
_CREDENTIALS: Final = struct.Struct("iII")
_CREDENTIALS_SPACE: Final = socket.CMSG_SPACE(_CREDENTIALS.size)
# The most processes of a run with part of a frame buffered at once (each at most a
# frame, 1 MiB), counted after their whole frames are taken: one more is a protocol
# break, so a callback's forks cannot make the executor hold more than this many frames
# of their bytes (and the one read that made the ninth).
MAX_SENDERS: Final = 8

logger = logging.getLogger(__name__)

# Answers one qb call of the child (the run's HostApi.serve_frame).
CallHandler = Callable[[CallFrame], Awaitable[ReplyFrame]]


class BridgeViolation(Exception):
    """The child broke the bridge protocol (the message says how)."""


def send_now(sock: socket.socket, frame: bytes) -> bytes:
    """Write what the socket takes without blocking; returns the rest.

    The start frame goes out before anything else is set up, so a prepared child starts
    on the callback while the executor is still setting up its readers.
    """
    try:
        return frame[sock.send(frame, socket.MSG_DONTWAIT) :]
    except (BlockingIOError, InterruptedError):
        return frame
    except OSError:
        return frame  # the child is gone; the bridge task meets the same error and stops


def _next_frame(buffer: bytearray) -> ChildFrame | None:
    """The child's next whole frame in ``buffer``, checked and taken out of it; None if incomplete."""
    header = protocol.HEADER.size
    if len(buffer) < header:
        return None
    (size,) = protocol.HEADER.unpack_from(buffer)
    if size > protocol.MAX_CHILD_FRAME_BYTES:
        raise BridgeViolation(f"frame of {size} bytes exceeds the 1 MiB frame limit")
    if len(buffer) - header < size:
        return None
    body = bytes(buffer[header : header + size])
    del buffer[: header + size]
    return protocol.parse_child_frame(body)


def too_large(frame: CallFrame, size: int) -> ReplyFrame:
    """The reply for an answer past the child's frame limit: a plain QbError saying so.

    The supervisor's answer is bounded as protobuf (64 MiB), but the callback gets it as
    JSON, 4.5 (an agenda) to 15 times (many small jobs) larger. Sent, the child would take
    the frame for a broken bridge (bytes lost), refuse every later call, and tell a read
    that it "may have been applied" (probe 104). Refused here, measured on the bytes that
    would go, the bridge stays in step, and a call that asks for less goes on (only reads
    answer more than a count).
    """
    return {
        "type": "reply",
        "id": frame["id"],
        "ok": False,
        "error": {
            "kind": "QbError",
            "message": (
                f"the answer to {frame['fn']} is too large for the callback: {size} bytes"
                f" as it gets them (JSON), and the bridge carries at most"
                f" {protocol.MAX_PARENT_FRAME_BYTES} bytes (64 MiB); ask for less of it"
                f" (some fields, no agenda, fewer jobs)"
            ),
        },
    }


class BridgeServer:
    """Finish sending the start frame, answer calls, keep the done frame; stop on EOF or garbage.

    Served from an event loop reader callback; a task only while a qb call is answered
    (the child waits for its reply, so nothing is read meanwhile). A frame that breaks
    the protocol is a violation: it is kept as ``bridge_error`` and ``on_violation``
    hears of it (the runner ends the run: a callback that forges frames gets no further
    say). On the socket itself, not asyncio streams: a run exchanges one or two frames.

    ``ended`` is done when the bridge is finished with (EOF, a violation, an error).
    ``end_marked``: the child sent its done frame and then shut the bridge down, in that
    order and nothing else after: how a bootstrap ends a run it has finished (its last
    act before ``_exit``); ``on_end_mark`` hears of it at once. The bootstrap then
    waits for our side to close (``close``), so its process can still be read.
    """

    def __init__(
        self,
        sock: socket.socket,
        unsent: bytes,
        on_call: CallHandler,
        result: ChildExit,
        on_violation: Callable[[str], object],
        on_end_mark: Callable[[], object],
        main_pid: Callable[[], int] = lambda: 0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._on_call = on_call
        self._result = result
        self._on_violation = on_violation
        self._on_end_mark = on_end_mark
        # What each process sent that is not a whole frame yet, by its pid: the bytes of
        # the processes sharing the bridge are separate streams, so one that leaves part
        # of a frame (a fork that died writing) garbles only its own. Pid 0: no
        # credentials came with the bytes (a socket without SO_PASSCRED: the tests').
        self._buffers: dict[int, bytearray] = {}
        # The sender whose frames are being taken (across a call's answer).
        self._sender = 0
        # The callback's own process, as the executor sees its pid (0: not known yet,
        # every sender is taken for it).
        self._main_pid = main_pid
        self._reading = False
        self._shut_down = False
        # The child is gone (abandon_call): a call frame it left is not answered.
        self._abandoned = False
        self._release_after_mark = False
        self._task: asyncio.Task[None] | None = None
        # A qb call is being answered: nothing more can come until its reply is sent.
        self.answering = False
        self.end_marked = False
        self.ended: asyncio.Future[None] = self._loop.create_future()
        if unsent:
            self._task = self._loop.create_task(self._send(unsent))
        else:
            self._read()

    def _read(self) -> None:
        if not self._reading and not self.ended.done():
            self._reading = True
            self._loop.add_reader(self._sock, self._on_readable)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._sock)

    async def _send(self, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(self._sock, data)
        except OSError:
            # Only the start frame is sent this way: the child's end is gone with it
            # unread (its callback never ran). What it sent first is still to be read
            # (a launcher's launch_failed frame).
            self._result.start_unread = True
            self._reading = True
            self.read_pending()
            self._end()
            return
        self._task = None
        self._read()

    def read_pending(self) -> bool:
        """Take now what the callback has sent that the event loop has not handed over yet.

        For the wall deadline: when the loop was held up (another run's large result, a
        busy machine), a done frame sent within the limit may be waiting unread. Returns
        whether the end is marked.
        """
        for _ in range(64):  # the rest of a frame's worth of chunks
            if not self._reading or not self._on_readable():
                break
        return self.end_marked

    def _on_readable(self) -> bool:
        """One read and what follows from it; False when there was nothing to read."""
        try:
            chunk, ancillary, _flags, _address = self._sock.recvmsg(READ_CHUNK, _CREDENTIALS_SPACE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            # Linux reports the reset (the child's end released with our bytes unread)
            # only once what it sent before is read: nothing of it is lost here.
            if err.errno == errno.ECONNRESET and not self._result.calls:
                # The child's end was released with data unread, and only the start
                # frame was ever sent to it: its callback never had its code.
                self._result.start_unread = True
            self._end()  # the callback went away mid-frame
            return False
        if not chunk:
            own = self._own_leftover()
            if len(own) >= protocol.HEADER.size:
                self._violated(
                    f"malformed frame: {protocol.FrameError('the bridge closed inside a frame')}"
                )
                return True
            # The bridge ending between frames (or inside a header) is the callback ending.
            # Part of a frame another process left is its own loss: the run is its
            # callback's own process's to report and end.
            self.end_marked = self._result.done is not None and not own
            # After a mark the child waits for our side to close: it stays open until
            # the runner has read the child's figures (close()).
            self._end(shut_down=not self.end_marked or self._release_after_mark)
            if self.end_marked:
                self._on_end_mark()
            return True
        sender = 0
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = _CREDENTIALS.unpack_from(data)[0]
        self._buffers.setdefault(sender, bytearray()).extend(chunk)
        self._sender = sender
        self._take_frames()
        return True

    def _is_main(self, sender: int) -> bool:
        """Whether ``sender`` may be the callback's own process (it or its pid is not known)."""
        return not sender or sender == self._main_pid() or not self._main_pid()

    def _own_leftover(self) -> bytes:
        """What the callback's own process sent after its last whole frame.

        Another process's leftover is its own loss: the run is its callback's own
        process's to report and end.
        """
        left = b"".join(bytes(data) for pid, data in self._buffers.items() if self._is_main(pid))
        if len(left) < sum(map(len, self._buffers.values())):
            logger.info("part of a frame another process of the callback sent is ignored")
        return left

    def _from_main_process(self) -> bool:
        """Whether the frame being taken was sent by the callback's own process.

        Only that process reports (and, with the bridge's end, ends) the run: a process
        it forked shares the bridge, and its done frame is not the run's (the kernel's
        SCM_CREDENTIALS say who sent what).
        """
        return self._is_main(self._sender)

    def _take_frames(self) -> None:
        buffer = self._buffers.get(self._sender)
        if buffer is None:
            return  # the sender's bytes were all taken before a call's answer
        try:
            self._take_frames_of(buffer)
        finally:
            if not buffer:
                del self._buffers[self._sender]
        # Counted once the sender's frames are taken: one that sent only whole frames
        # holds no part of one (while a call is answered, what follows it is not taken yet).
        if self._task is None and len(self._buffers) > MAX_SENDERS and not self.ended.done():
            self._violated(
                f"more than {MAX_SENDERS} processes with part of a frame on the bridge at once"
            )

    def _take_frames_of(self, buffer: bytearray) -> None:
        try:
            while (frame := _next_frame(buffer)) is not None:
                if self._result.launch_failure:
                    raise BridgeViolation("a frame after the launch failure report")
                if frame["type"] == "call":
                    self._result.calls += 1
                    if self._abandoned:
                        continue  # its caller is dead: there is no one to answer
                    self._pause()  # the child waits for the reply
                    self.answering = True
                    self._task = self._loop.create_task(self._answer(frame))
                    return
                if frame["type"] == "launch_failed":
                    if self._result.calls or self._result.done is not None:
                        raise BridgeViolation("a launch failure report after the run started")
                    self._result.launch_failure = frame["reason"] or "(no reason given)"
                    self._result.launch_errno = frame.get("errno", 0)
                    continue
                if not self._from_main_process():
                    logger.info("a done frame not from the callback's own process is ignored")
                    continue
                if self._result.done is not None:
                    raise BridgeViolation("a second done frame")
                self._result.done = frame
        except BridgeViolation as err:
            self._violated(str(err))
        except protocol.FrameError as err:
            self._violated(f"malformed frame: {err}")

    async def _answer(self, frame: CallFrame) -> None:
        try:
            reply = await self._on_call(frame)
        except Exception:
            logger.exception("answering a qb call failed; the run's bridge is closed")
            self._end()
            return
        finally:
            self.answering = False
        encoded = await encode_in_steps(reply)
        if len(encoded) - protocol.HEADER.size > protocol.MAX_PARENT_FRAME_BYTES:
            encoded = protocol.encode(too_large(frame, len(encoded) - protocol.HEADER.size))
        with contextlib.suppress(OSError):
            # When it fails, the callback went away before its reply: what it sent
            # before going is still to be read, up to the EOF. A call a signal handler's
            # die cut short is followed by the done frame that reports the die, and a
            # cold child exits after it without waiting for the reply.
            await self._loop.sock_sendall(self._sock, encoded)
        self._task = None
        self._take_frames()
        if self._task is None:
            self._read()

    def _violated(self, error: str) -> None:
        self._result.bridge_error = error
        self._end()
        self._on_violation(f"the callback broke the bridge protocol: {error}")

    def _end(self, *, shut_down: bool = True) -> None:
        self._pause()
        if not self.ended.done():
            self.ended.set_result(None)
        if shut_down and not self._shut_down:
            # The child sees EOF: a qb call after garbage fails at once instead of waiting.
            # Once: the runner's release and close both end it (a system call each).
            self._shut_down = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def release_after_mark(self) -> None:
        """From now on an end mark is not waited on: our side shuts down at once, and the child exits."""
        self._release_after_mark = True
        if self.end_marked:
            self._end()

    def abandon_call(self) -> None:
        """The child is dead with a qb call unanswered: give the call up, and take what it sent after it.

        A call a signal handler's die cut short is followed by the done frame that reports
        the die, and a cold child exits after it while the answer may still be in the
        making (a large jobinfo). Nobody waits for that answer any more; everything the
        child sent is in the kernel's queue by now, so it is read at once, to the end.
        """
        if self._task is not None:
            self._task.cancel()  # recorded as cut short (HostApi.call)
            self._task = None
        self.answering = False
        self._abandoned = True
        self._reading = True  # no reader is added: the reads happen here and now
        self._take_frames()  # what came in the same read as the call
        self.read_pending()
        self._end()

    def finish(self) -> None:
        """Every process of the run is dead: take what the bridge holds, to its end, and stop.

        Nothing can send on it any more, so the queue is final, whoever holds the
        child's end (a descriptor in flight in a unix socket is closed only by the
        kernel's garbage collector, whenever that runs): our side is shut down for
        reading, which makes the queue's end an EOF, read as any other (a part of a
        frame left there is the same violation). A call left unanswered is given up.
        """
        if not self.ended.done():
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
        elif not self.answering:
            return
        self.abandon_call()

    def close(self) -> None:
        """Stop serving: no more reading, our side shut down, a call in progress cancelled.

        A child waiting after its end mark goes on to exit.
        """
        self._end()
        if self._task is not None:
            self._task.cancel()
            self._task = None
