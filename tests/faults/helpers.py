"""What the fault tests share: a small tmpfs to fill, raw calls with any bytes, a counting supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final

import grpc
import pytest

from executor import server
from executor.config import Settings
from tests.helpers.supervisors import CountingSupervisor, SupervisorEndpoint

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int, *, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` (and ``inodes``) mounted at ``path`` for the block; skipped where mounting fails."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a database the test still holds open must not keep the mount alive.
        _libc.umount2(str(path).encode(), MNT_DETACH)


@contextlib.contextmanager
def ext4_that_fails(path: Path, size_bytes: int = 32 << 20) -> Iterator[Callable[[], None]]:
    """An ext4 filesystem mounted ``errors=remount-ro`` at ``path`` (a loop-mounted image beside it).

    Yields what makes the kernel meet a filesystem error there (``trigger_fs_error``):
    from then on every write is refused (EROFS) while the mount still shows ``rw``
    (``emergency_ro``), as after a real disk error. Skipped where that cannot be made.
    """
    image = path.with_name(f"{path.name}.ext4")
    with image.open("wb") as out:
        out.truncate(size_bytes)
    path.mkdir(parents=True, exist_ok=True)
    for argv in (
        ["mkfs.ext4", "-q", "-F", str(image)],
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(path)],
    ):
        made = subprocess.run(argv, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 filesystem here: {made.stderr.strip()}")
    try:
        device = Path(os.path.realpath(_mount_source(path))).name
        trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")
        if not trigger.exists():
            pytest.skip(f"this kernel cannot be made to meet an ext4 error ({trigger})")

        def fail() -> None:
            trigger.write_text("cbexec test\n")
            try:
                (path / ".after-the-error").touch()
            except OSError as err:
                if err.errno == errno.EROFS:
                    return
                raise
            pytest.skip("this kernel keeps writing to an ext4 filesystem after an error")

        yield fail
    finally:
        # Lazy: a database the test still holds open must not keep the mount alive; the
        # loop device goes with the mount (mount -o loop sets it to clear itself).
        _libc.umount2(str(path).encode(), MNT_DETACH)
        image.unlink(missing_ok=True)


def _mount_source(path: Path) -> str:
    """The device mounted at ``path`` (its last mount), from /proc/self/mountinfo."""
    source = ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, after = line.partition(" - ")
        if fields.split()[4] == str(path):
            source = after.split()[1]
    return source


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        chunk = b"\0" * (64 << 10)
        while True:
            out.write(chunk)
            out.flush()
    with contextlib.suppress(OSError), filler.open("ab") as out:  # the last few bytes
        while True:
            out.write(b"\0")
            out.flush()
    return filler


async def raw_call(channel: grpc.aio.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """Call ``method`` with ``payload`` as the request bytes; returns the status code."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        method, request_serializer=None, response_deserializer=None
    )
    try:
        await call(payload, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@asynccontextmanager
async def supervisor_endpoint(
    db: Path,
    *,
    servicer: type[CountingSupervisor] = CountingSupervisor,
    max_receive_bytes: int | None = None,
) -> AsyncIterator[SupervisorEndpoint]:
    """A counting SupervisorService on loopback, stopped and closed after the block."""
    endpoint = SupervisorEndpoint(db, servicer, max_receive_bytes=max_receive_bytes)
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()
        endpoint.store.close()


@asynccontextmanager
async def slow_link(target: str, delay_s: float) -> AsyncIterator[str]:
    """A loopback TCP proxy to ``target`` that holds each chunk ``delay_s`` each way; its address.

    Every connection it made is closed after the block.
    """
    host, port = target.rsplit(":", 1)
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                await asyncio.sleep(delay_s)
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def link(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, int(port))
        writers.extend((client_w, server_w))
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    proxy = await asyncio.start_server(link, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    finally:
        proxy.close()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await proxy.wait_closed()


@asynccontextmanager
async def executor(settings: Settings) -> AsyncIterator[server.RunningServer]:
    """A started executor, stopped after the block."""
    running = await server.start(settings)
    try:
        yield running
    finally:
        await running.stop()


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct nested ``depth`` levels deep: {"a": {"a": ...}}."""
    inner = b""
    for _ in range(depth):
        value = field(5, inner)  # Value.struct_value
        entry = field(1, b"a") + field(2, value)  # map entry: key, value
        inner = field(1, entry)  # Struct.fields
    return inner


def env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# Another process: connects, takes the write lock, says so, and lets go at a line on stdin.
LOCK_HOLDER: Final = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.readline()\n"
    "db.execute('COMMIT')\n"
)


@contextmanager
def locked(database: Path) -> Iterator[None]:
    """``BEGIN EXCLUSIVE`` on ``database``, held by another process for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("\n", timeout=10)
    assert holder.returncode == 0
