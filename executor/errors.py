"""Domain errors of the executor; they know nothing of gRPC (``status.py`` maps them).

ExecutorError
 +-- InvalidRequestError      the request is malformed or asks for more than the caps
 +-- NotFoundError            the request names something the executor does not have
 +-- AlreadyExistsError       the request's id already names something else (another run)
 |    +-- EventIdReusedError  an event_id an earlier, different event was applied under
 +-- ChangedMeanwhileError    what the request continues changed since it began: start over
 +-- TakenOverError           another run of the invocation id took over (a fleet's stalled run)
 +-- PermissionDeniedError    the caller's Qube user may not do what it asks (the farm)
 +-- CapacityError            every slot is busy and the queue is full
 |    +-- StoreFullError      the registered jobs fill triggers.db to triggers_max_bytes
 +-- UnavailableError         draining, or a child could not be started
 |    +-- ShuttingDownError   the executor's stop ended or refused the run
 +-- DataLossError            a database a request reads is damaged (the message names it)
 +-- ConfigError              settings that cannot work, naming the setting
HostCallError                 a qb call from a callback failed (goes back to the callback)
"""

from __future__ import annotations

from executor.child.protocol import QbErrorKind


class ExecutorError(Exception):
    """Base of the executor's own errors."""


class InvalidRequestError(ExecutorError):
    """The request cannot be run as given; the message names the field."""


class NotFoundError(ExecutorError):
    """The request names a run, job or callback the executor does not know."""


class AlreadyExistsError(ExecutorError):
    """The request's idempotency key already names a different thing (another run)."""


class EventIdReusedError(AlreadyExistsError):
    """An event published under an event_id an earlier, different event was applied under.

    Attributes:
        index: The event's place among the events applied together (a PublishEvents
            call's ``events[i]``).
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class ChangedMeanwhileError(ExecutorError):
    """What the request continues changed since it began (a job registered again between pages).

    Retrying the same request cannot help; starting over from the first page can.
    """


class TakenOverError(ExecutorError):
    """A fleet's run lost its claim on its invocation id to another replica's run of it.

    Its result is not the id's record (the other run's is): it is neither reported nor
    kept. Resending cannot bring it back; a resend is a new run of the id.
    """


class PermissionDeniedError(ExecutorError):
    """The Qube user a request acts as may not apply that verb to that job."""


class CapacityError(ExecutorError):
    """Admission refused: all slots are busy and the queue is full."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreFullError(CapacityError):
    """A registration would take triggers.db past ``triggers_max_bytes`` (the message says what to do)."""

    def __init__(self, message: str) -> None:
        # Jobs leave the store when the scheduler publishes their removal, not in seconds.
        super().__init__(message, retry_after_s=60.0)


class UnavailableError(ExecutorError):
    """The executor cannot run callbacks right now (draining, spawn failure)."""


class ShuttingDownError(UnavailableError):
    """The executor's stop ended the run or kept it from starting.

    Not worth a retry in this process: nothing runs again before the next start. A fired
    callback so refused stays in the trigger store's queue and runs then.
    """


class DataLossError(ExecutorError):
    """A database the request reads is damaged: no retry mends it; the message names the file."""


class ConfigError(ExecutorError):
    """A setting is invalid; the message names it."""


class HostCallError(Exception):
    """A qb call failed. ``kind`` is the exception class the callback sees."""

    def __init__(self, kind: QbErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def own_copy(err: Exception) -> Exception:
    """``err`` again, as an object of its own for one more waiter on a failed shared step.

    One object raised in each waiter (of a shared commit, a zygote lost) gathers every
    waiter's frames in its traceback, and whoever lets go of those frames (the gRPC layer
    clears an aborted call's) closes the waiters still suspended in them: a result waiting
    to be tried again was dropped for good (probe 74). The copy shares the original's
    cause and the frames it was raised in.
    """
    try:
        copy = type(err).__new__(type(err))
        copy.__dict__.update(err.__dict__)
    except (TypeError, AttributeError):  # a type made otherwise: a plain error, same words
        copy = Exception(*err.args)
    copy.args = err.args
    copy.__cause__ = err.__cause__
    copy.__context__ = err.__context__
    copy.__suppress_context__ = err.__suppress_context__
    return copy.with_traceback(err.__traceback__)
