"""A child's output pipes: read at the run's end unless watched, and read as output comes once watched.

A reader that is never registered with the event loop costs it nothing, so a run's
pipes are watched only when it outlasts ``PIPES_WATCHED_AFTER_S`` (or is drained after
its exit); until then ``drain`` reads what a pipe holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator

import pytest

from executor.sandbox.capture import DECODE_CHUNK, CapturedStream, PipeReader


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):  # the test may have closed it
            os.close(fd)


async def test_an_unwatched_pipe_is_not_registered_and_is_read_by_drain(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    loop = asyncio.get_running_loop()
    sink = CapturedStream(1 << 20)
    reader = PipeReader(loop, read_end, sink)
    os.write(write_end, b"early output")
    await asyncio.sleep(0.01)

    assert sink.data == b""  # nothing read it as it came
    assert not loop.remove_reader(read_end)  # and nothing was registered
    reader.drain()
    assert sink.data == b"early output"
    reader.close()
    assert reader.eof.done()


async def test_a_watched_pipe_is_read_as_output_comes_until_eof(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    loop = asyncio.get_running_loop()
    sink = CapturedStream(1 << 20)
    reader = PipeReader(loop, read_end, sink)
    reader.watch()
    reader.watch()  # again is harmless
    # More than the pipe holds: a writer needs the reader to make room.
    payload = b"x" * (256 << 10)
    written = 0
    os.set_blocking(write_end, False)
    while written < len(payload):
        try:
            written += os.write(write_end, payload[written:])
        except BlockingIOError:
            await asyncio.sleep(0.001)
    os.close(write_end)

    await asyncio.wait_for(reader.eof, 5)
    assert bytes(sink.data) == payload
    assert not loop.remove_reader(read_end)  # removed at EOF


async def test_watching_after_the_end_registers_nothing(pipe: tuple[int, int]) -> None:
    read_end, _ = pipe
    loop = asyncio.get_running_loop()
    reader = PipeReader(loop, read_end, CapturedStream(16))
    reader.close()
    reader.watch()
    assert not loop.remove_reader(read_end)


def whole_text(data: bytes, cap: int) -> tuple[str, bool]:
    """What ``text`` must give: all of it decoded, then cut to the cap (and whether it was)."""
    encoded = data.decode("utf-8", errors="replace").encode()
    return encoded[:cap].decode("utf-8", errors="ignore"), len(encoded) > cap


@pytest.mark.parametrize(
    ("data", "cap"),
    [
        (b"\xff" * (3 * DECODE_CHUNK + 5), 3 * DECODE_CHUNK + 5),  # cut in its first third
        ("é€😀".encode() * DECODE_CHUNK + b"\xe9", 9 * DECODE_CHUNK + 1),
        (b"ok\xe9" + "😀".encode() * (DECODE_CHUNK // 2), 3 * DECODE_CHUNK),  # split across pieces
        (b"\xe2\x82", 2),  # a sequence cut short at the very end
        (b"a\xffb", 5),  # replaced, still within the cap
    ],
)
def test_invalid_output_is_decoded_in_pieces_as_if_whole(data: bytes, cap: int) -> None:
    stream = CapturedStream(cap)
    stream.feed(data)

    assert (stream.text(), stream.truncated) == whole_text(data, cap)


async def test_finish_reads_all_a_pipe_holds_while_a_writer_is_still_open(
    pipe: tuple[int, int],
) -> None:
    # Nothing of the run can write any more, but a write end is still held (in flight in
    # a unix socket, or by a process outside the cell): no EOF is waited for, and a pipe
    # raised to 1 MiB is read whole.
    read_end, write_end = pipe
    capacity = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    payload = os.urandom(capacity)
    os.set_blocking(write_end, False)
    assert os.write(write_end, payload) == len(payload)
    sink = CapturedStream(2 << 20)
    reader = PipeReader(asyncio.get_running_loop(), read_end, sink)

    reader.finish()

    assert bytes(sink.data) == payload
    assert reader.eof.done()
