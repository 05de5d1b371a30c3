"""A gRPC server's Unix socket that only the executor's user can connect to, whatever the umask.

gRPC binds and listens in ``add_insecure_port``, the socket taking the mode the process
umask leaves (0777 under umask 000, which python-daemon's ``DaemonContext`` and classic
``daemon()`` wrappers set): any local user, and any other executor's callback, could
connect (probe 108). A chmod after the bind leaves a window: a Unix socket's mode is
checked at connect only, and a connection queued meanwhile is served once the server
starts. So the socket is bound in a fresh 0700 directory beside its path, made 0600
there, and only then renamed to its path: at no moment can another user reach it. The
umask itself is left alone: it is the process's, and other threads make files meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from executor.errors import ConfigError

SOCKET_MODE: Final = 0o600
# sun_path holds 108 bytes, the terminating NUL included.
MAX_UNIX_SOCKET_PATH: Final = 107
# The staging directory's name (mkdtemp: "." and 8 characters) and the socket's in it:
# shorter than any name it is renamed to, so a path that fits stages in place.
_STAGED_EXTRA: Final = len("/.12345678/s")


@dataclass(frozen=True, slots=True)
class PrivateSocket:
    """A socket ``listen`` bound, at ``path``: removed by ``remove`` once its server stopped."""

    path: Path
    inode: tuple[int, int]
    # The directory made for it in the system's temp dir (a data dir path too long for a
    # Unix socket), removed with it; None: it is in the data dir.
    own_dir: Path | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def remove(self) -> None:
        """Remove the socket, unless something else is at its path by now.

        gRPC removes the path it bound at its stop: the staged one, renamed away.
        """
        with contextlib.suppress(OSError):
            found = os.lstat(self.path)
            if (found.st_dev, found.st_ino) == self.inode:
                self.path.unlink()
        if self.own_dir is not None:  # left at every stop before (probe 164)
            with contextlib.suppress(OSError):
                self.own_dir.rmdir()


def listen(server: grpc.aio.Server, path: Path, what: str) -> PrivateSocket:
    """Have ``server`` listen (insecure) on a 0600 Unix socket at ``path``; call before it starts.

    Whatever is at ``path`` (a socket a stopped executor left) is replaced. A path too
    long for a Unix socket is given up for one in a new 0700 directory in the system's
    temp dir. ConfigError, naming ``what``, when it cannot be bound.
    """
    own_dir = None
    if len(str(path.parent)) + max(len(path.name) + 1, _STAGED_EXTRA) > MAX_UNIX_SOCKET_PATH:
        own_dir = Path(tempfile.mkdtemp(prefix="cbexec-"))
        path = own_dir / path.name
    try:
        return _bind(server, path, what, own_dir)
    except ConfigError:
        if own_dir is not None:
            with contextlib.suppress(OSError):
                own_dir.rmdir()
        raise


def _bind(server: grpc.aio.Server, path: Path, what: str, own_dir: Path | None) -> PrivateSocket:
    """``listen``'s binding: staged in a 0700 directory beside ``path``, then renamed to it."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    except OSError as err:
        raise ConfigError(f"data_dir: cannot listen on the {what} {path}: {err}") from err
    staged = staging / "s"
    try:
        os.chmod(staging, 0o700)  # mkdtemp's 0700 is the umask's too: no fewer bits
        if server.add_insecure_port(f"unix:{staged}") == 0:
            raise ConfigError(f"data_dir: cannot listen on the {what} {path}")
        os.chmod(staged, SOCKET_MODE)
        found = os.lstat(staged)
        os.rename(staged, path)
    except OSError as err:  # a directory at the path, say
        raise ConfigError(f"data_dir: cannot listen on the {what} {path}: {err}") from err
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()  # only when the rename did not happen
        with contextlib.suppress(OSError):
            staging.rmdir()
    return PrivateSocket(path, (found.st_dev, found.st_ino), own_dir)
