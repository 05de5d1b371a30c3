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


def listen(server: grpc.aio.Server, path: Path, what: str) -> PrivateSocket:
    """Have ``server`` listen (insecure) on a 0600 Unix socket at ``path``; call before it starts.

    Whatever is at ``path`` (a socket a stopped executor left) is replaced. A path too
    long for a Unix socket is given up for one in a new 0700 directory in the system's
    temp dir. ConfigError, naming ``what``, when it cannot be bound.
    """
    if len(str(path.parent)) + max(len(path.name) + 1, _STAGED_EXTRA) > MAX_UNIX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix="cbexec-")) / path.name
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
    return PrivateSocket(path, (found.st_dev, found.st_ino))
