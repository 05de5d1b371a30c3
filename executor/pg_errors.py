"""The PostgreSQL store's errors, and what a driver's error says of its session.

``PgDb`` raises the stores' own errors for what the driver met (``StoreUnavailable``,
``StoreLockTimeout``, ``StoreConflict``, ``StorePermissionDenied``); the helpers here
read a driver error's SQLSTATE: a session the server ended, a resource it was short of,
the server's words behind one of libpq's own.
"""

from __future__ import annotations

from typing import Any, Final

from executor.errors import ConfigError, UnavailableError


class StoreUnavailable(UnavailableError):
    """PostgreSQL cannot be reached (down, restarting, the network): try again later."""


class StoreLockTimeout(UnavailableError):
    """A statement waited ``LOCK_TIMEOUT_S`` for a lock another session holds, and gave up.

    Not an outage: the connection is sound and kept, and only what needs the locked rows
    or table fails (an admin's transaction left open, a ``LOCK TABLE``, a ``VACUUM
    FULL``). The storage is not marked degraded for it; try again later.
    """


class StoreConflict(UnavailableError):
    """A transaction lost a deadlock or a serialization race: run it again."""


class StorePermissionDenied(ConfigError):
    """The store's role lacks a privilege a statement needs: the deployment's to fix."""


# SQLSTATEs of a session the server ended: an admin's pg_terminate_backend or a shutdown
# (57P01), a crash of another backend (57P02), a server starting or stopping (57P03).
_SESSION_ENDED: Final = frozenset({"57P01", "57P02", "57P03"})


def session_ended(err: Any) -> bool:
    """Whether a driver error means the connection is over, or in a state nothing can follow.

    The server's word that it ended the session (it may come before libpq has seen the
    connection close), a connection exception (class 08), or an error of libpq's own,
    without an SQLSTATE (a query it could not send, a pipeline it could not leave).
    """
    sqlstate = getattr(err, "sqlstate", None)
    return sqlstate is None or sqlstate in _SESSION_ENDED or sqlstate.startswith("08")


def server_short(err: Any) -> bool:
    """Whether the server refused for want of a resource: the statement did nothing.

    Its disk, memory or connection slots (class 53), or its file system failed it (58).
    """
    sqlstate = getattr(err, "sqlstate", None) or ""
    return sqlstate.startswith(("53", "58"))


def server_said(err: BaseException) -> BaseException:
    """The server's error behind one of libpq's own, if any: what to tell the caller.

    Leaving a pipeline after the server ended the session fails with "cannot exit
    pipeline mode while busy", raised while handling the server's "terminating
    connection due to administrator command", which says what happened.
    """
    context = err.__context__
    if context is not None and getattr(err, "sqlstate", None) is None:
        return context if getattr(context, "sqlstate", None) else err
    return err


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
