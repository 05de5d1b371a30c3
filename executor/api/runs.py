"""RunService: ListRuns, GetRun and GetMetrics over the run history and the metrics registry.

Refusals at capacity never reach the dispatcher's ``on_result`` (nothing ran), so
``interceptors.CallGuard`` counts them where they become visible: as
RESOURCE_EXHAUSTED statuses leaving the server. GetMetrics takes the readings of the
executor's parts at the moment it is asked (``Metrics.refresh``), as a scrape of
``/metrics`` does, so both show the same numbers. Neither waits for the history's
writer (the runs it holds are counted at once); ListRuns and GetRun do, in the
history readers' thread (``Recorder.read_history``), never on the event loop: a
``runs.db`` another process holds locked stalls only them.

GetRun answers with a whole run, up to 2 x 16 MiB of output: GetRuns take turns with
the other answers read from the history, one at a time (``answer_turns.py``; the
dashboard's whole streams take two, ``web/stream_gate.py``). One whose own connection
holds its share of unread answers waits, before its turn, until they have been read; at
the executor's bound it is refused (``unread_answers.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from executor.api import convert, convert_status
from executor.api.answer_turns import AnswerTurns
from executor.api.errors import Context, grpc_errors
from executor.api.unread_answers import answer_room
from executor.dispatcher import RunProgress
from executor.errors import InvalidRequestError, NotFoundError
from executor.model import Language
from executor.runs.history import RunRecord
from executor.runs.paging import RunFilters, decode_page_token, encode_page_token
from executor.runs.recorder import Recorder
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc

DEFAULT_LIST_LIMIT: Final = 50
# The shortest prefix GetRun resolves, as git's shortest abbreviation of a commit id.
MIN_PREFIX_CHARS: Final = 4
DEFAULT_DEAD_LETTER_LIMIT: Final = 100
MAX_LIST_LIMIT: Final = 1000
# Ids one RetryDeadLetters names (repeats count): a page of ListDeadLetters' at most.
# Each is checked and updated on the event loop, which holds outbox.db's write lock
# meanwhile; ``all`` retries any number.
MAX_RETRY_IDS: Final = 1000


class RunServicer(executor_pb2_grpc.RunServiceServicer):
    """Implements qbcallback.v1.RunService."""

    def __init__(
        self,
        recorder: Recorder,
        turns: AnswerTurns | None = None,
        progress: Callable[[str], RunProgress | None] = lambda _: None,
    ) -> None:
        """``turns``: shared with the other answers read from the history (``answer_turns.py``).

        ``progress``: how a run of an id is in progress here (``Dispatcher.progress``).
        """
        self._recorder = recorder
        self._progress = progress
        self._turns = turns or AnswerTurns()

    @grpc_errors
    async def ListRuns(
        self, request: executor_pb2.ListRunsRequest, context: Context
    ) -> executor_pb2.ListRunsResponse:
        """Run history, newest first, a page at a time; filters by job, outcome and start time."""
        if not math.isfinite(request.since):
            raise InvalidRequestError(f"since = {request.since} must be a finite number of seconds")
        # Any case, as Execute takes it; the history holds the lower-case name.
        language = request.language.strip().lower()
        if language and language not in set(Language):
            valid = ", ".join(Language)
            raise InvalidRequestError(f"language {request.language!r}: expected one of {valid}")
        filters = RunFilters(
            job_id=convert.check_id("job_id", request.job_id) or None,
            outcome=convert.outcome_from_message(request.outcome),
            since=request.since if request.since > 0 else None,
            language=language or None,
            shadow_only=request.shadow_only,
        )
        after = decode_page_token(request.page_token, filters) if request.page_token else None
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        page = await self._recorder.read_history(
            lambda history: history.list_page(filters, limit=limit, after=after)
        )
        return executor_pb2.ListRunsResponse(
            runs=[self._run_message(r) for r in page.runs],
            next_page_token=encode_page_token(page.next, filters) if page.next else "",
        )

    @grpc_errors
    async def GetRun(
        self, request: executor_pb2.GetRunRequest, context: Context
    ) -> executor_pb2.GetRunResponse:
        """One run with its result, by its id or a unique prefix; NOT_FOUND when unknown.

        INVALID_ARGUMENT for a prefix of several runs, or one shorter than
        ``MIN_PREFIX_CHARS`` that is no run's whole id.
        """
        # Looked up as a key: a NUL no stored id holds is refused as it would be stored.
        wanted = convert.check_text("invocation_id", request.invocation_id)
        return await self._turns.take(answer_room.get(), lambda: self._get_run(wanted))

    async def _get_run(self, wanted: str) -> executor_pb2.GetRunResponse:
        """GetRun's answer: the run of id ``wanted``, else of the one id it starts."""
        record = await self._recorder.read_history(lambda history: history.get(wanted))
        if record is None and (progress := self._progress(wanted)) is not None:
            # NOT_FOUND as the contract has it: the history has no record of the id yet.
            raise NotFoundError(
                f"run {wanted!r} is in progress ({progress.state}) at this executor: its record"
                " is made when it ends"
            )
        if record is None and len(wanted) < MIN_PREFIX_CHARS:
            raise InvalidRequestError(
                f"no run {wanted!r} in the history; as a prefix it is too short: give at "
                f"least {MIN_PREFIX_CHARS} characters of the id"
            )
        if record is None:
            matches = await self._recorder.read_history(
                lambda history: history.ids_starting_with(wanted)
            )
            if len(matches) > 1:
                shown = ", ".join(matches[:2]) + (", ..." if len(matches) > 2 else "")
                raise InvalidRequestError(
                    f"{wanted!r} is the start of several runs ({shown}); give more of the id"
                )
            if matches:
                match = matches[0]
                record = await self._recorder.read_history(lambda history: history.get(match))
        if record is None:
            raise NotFoundError(f"no run {wanted!r} in the history (unknown, or pruned)")
        return executor_pb2.GetRunResponse(run=self._run_message(record))

    def _run_message(self, record: RunRecord) -> executor_pb2.Run:
        """A record as sent, saying whether a newer run of its id is in progress here."""
        run = convert.run_message(record)
        progress = self._progress(record.invocation_id)
        # Compared by time: the run's own record, written as it ends, is no earlier run's.
        ended_at = record.started_at + record.usage.wall_seconds
        run.newer_run_in_progress = progress is not None and ended_at < progress.admitted_at
        return run

    @grpc_errors
    async def GetMetrics(
        self, request: executor_pb2.GetMetricsRequest, context: Context
    ) -> executor_pb2.GetMetricsResponse:
        """Counters, histograms and the readings of the executor's parts, now."""
        metrics = self._recorder.metrics
        metrics.refresh()
        return convert_status.metrics_message(metrics.snapshot())

    @grpc_errors
    async def ListDeadLetters(
        self, request: executor_pb2.ListDeadLettersRequest, context: Context
    ) -> executor_pb2.ListDeadLettersResponse:
        """Results set aside instead of delivered, newest first."""
        outbox = self._recorder.outbox
        limit = min(request.limit or DEFAULT_DEAD_LETTER_LIMIT, MAX_LIST_LIMIT)
        letters = outbox.dead_letters(limit) if outbox is not None else []
        return executor_pb2.ListDeadLettersResponse(
            dead_letters=[convert.dead_letter_message(letter) for letter in letters]
        )

    @grpc_errors
    async def RetryDeadLetters(
        self, request: executor_pb2.RetryDeadLettersRequest, context: Context
    ) -> executor_pb2.RetryDeadLettersResponse:
        """Queue dead letters (the ones named, or all) for delivery again."""
        if request.all == bool(request.invocation_ids):
            raise InvalidRequestError("name the invocation_ids to retry, or set all (not both)")
        if len(request.invocation_ids) > MAX_RETRY_IDS:
            raise InvalidRequestError(
                f"invocation_ids: at most {MAX_RETRY_IDS} per call, got"
                f" {len(request.invocation_ids)}; set all to retry every dead letter"
            )
        outbox = self._recorder.outbox
        if outbox is None:
            return executor_pb2.RetryDeadLettersResponse(queued=0)
        keys = None
        if not request.all:  # keys no stored id holds are refused as they would be stored
            keys = [
                convert.check_text(f"invocation_ids[{i}]", key)
                for i, key in enumerate(request.invocation_ids)
            ]
            keys = list(dict.fromkeys(keys))  # a key named twice is queued (and counted) once
        return executor_pb2.RetryDeadLettersResponse(queued=outbox.retry_dead(keys))
