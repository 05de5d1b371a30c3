"""An empty network namespace the executor keeps, to make the sockets it hands to children in.

A socket belongs to the network namespace it was made in, whoever holds it later: an
ioctl such as SIOCGIFCONF on a child's bridge socket answers with the interfaces of the
namespace the executor made it in. Made in this empty one (no interface but a loopback
that is down), the bridge tells a callback nothing about the host.

The executor's thread enters it around ``socket.socketpair()`` and leaves at once
(setns is per thread, and a network namespace may be switched in a threaded process);
two setns calls, a few microseconds. Needs CAP_SYS_ADMIN (root); ``create`` returns the
reason it could not be made otherwise.
"""

from __future__ import annotations

import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


class EmptyNetwork:
    """Descriptors of the empty namespace and of the executor's own; see the module docstring."""

    def __init__(self, empty: int, own: int) -> None:
        self._empty = empty
        self._own = own

    @classmethod
    def create(cls) -> EmptyNetwork | str:
        """Make the namespace (this thread enters it and comes back); the reason on failure."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        except OSError as err:
            os.close(own)
            return str(err)
        try:
            empty = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            # Back, whatever happened: a thread of the executor left in the empty
            # namespace would lose the network.
            _check(_libc.setns(own, CLONE_NEWNET), "setns back to the executor's network")
        return cls(empty, own)

    def socketpair(self) -> tuple[socket.socket, socket.socket]:
        """An AF_UNIX stream socketpair that belongs to the empty namespace."""
        _check(_libc.setns(self._empty, CLONE_NEWNET), "setns(empty network)")
        try:
            return socket.socketpair()
        finally:
            _check(_libc.setns(self._own, CLONE_NEWNET), "setns back to the executor's network")

    def close(self) -> None:
        """Let the namespace go (sockets made in it keep working)."""
        for fd in (self._empty, self._own):
            if fd >= 0:
                os.close(fd)
        self._empty = self._own = -1
