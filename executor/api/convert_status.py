"""Conversions of what the executor says about itself: metrics, registered jobs, universal callbacks.

Beside ``convert.py`` (requests, results, runs): these are the answers of the calls a
person's tools make (``cbexec metrics``, the dashboard), read-only and never validated
as input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from executor.api import convert
from executor.model import Outcome
from executor.runs.metrics import Histogram, MetricsSnapshot
from executor.triggers.parsed import canonical_triggers
from executor.triggers.store_rows import JobHead, StoredCallback
from executor.triggers.universal import CONF_NAME, ReloadStatus, UniversalCallback
from supervisor_client.qbcallback.v1 import executor_pb2


def histogram_message(histogram: Histogram) -> executor_pb2.Histogram:
    """The wire form of a latency histogram."""
    return executor_pb2.Histogram(
        bounds_seconds=histogram.bounds_s,
        counts=histogram.counts,
        total=histogram.total,
        sum_seconds=histogram.sum_s,
    )


def metrics_message(snapshot: MetricsSnapshot) -> executor_pb2.GetMetricsResponse:
    """The wire form of a metrics snapshot (counters, histograms and the readings)."""
    readings = snapshot.readings
    return executor_pb2.GetMetricsResponse(
        runs_by_outcome=snapshot.runs_by_outcome,
        rejected_at_capacity=snapshot.rejected_at_capacity,
        active_children=readings.active_children,
        queue_depth=readings.queue_depth,
        run_wall_seconds=histogram_message(snapshot.run_wall),
        queue_seconds=histogram_message(snapshot.queue),
        outbox_pending=readings.outbox_pending,
        events_published=readings.events_published,
        callbacks_fired=readings.callbacks_fired,
        event_ids_forgotten_early=readings.event_ids_forgotten_early,
        repeat_ticks_skipped=readings.repeat_ticks_skipped,
        outbox_dead_letters=readings.outbox_dead_letters,
        outbox_last_error=readings.outbox_last_error,
        storage_problem=readings.storage_problem,
        slots_problem=readings.slots_problem,
        health_status=readings.health_status,
        prepared_children=readings.prepared_children,
        slots=readings.slots,
        queue_limit=readings.queue_limit,
        trigger_jobs=readings.trigger_jobs,
        trigger_callbacks=readings.trigger_callbacks,
        firings_queued=readings.firings_queued,
        firings_held=readings.firings_held,
        universal_callbacks=readings.universal_callbacks,
        universal_reload_errors=readings.universal_reload_errors,
        zygotes=[
            executor_pb2.Zygote(
                language=z.language, pid=z.pid, restarts=z.restarts, warm=z.warm, died=z.died
            )
            for z in readings.zygotes
        ],
        sandbox=executor_pb2.SandboxTier(
            description=readings.tier.description,
            launcher=readings.tier.launcher,
            mechanisms=[
                executor_pb2.SandboxMechanism(name=name, active=active)
                for name, active in readings.tier.flags()
            ],
        ),
        runs=[
            executor_pb2.RunCount(
                outcome=convert.outcome_message(Outcome(outcome)),
                language=language,
                source=source,
                runs=count,
            )
            for (outcome, language, source), count in sorted(snapshot.runs.items())
        ],
    )


def registered_job_message(
    job: JobHead, callbacks: Sequence[StoredCallback]
) -> executor_pb2.RegisteredJob:
    """The wire form of a job as the trigger engine holds it, with its callbacks."""
    return executor_pb2.RegisteredJob(
        id=job.job_id,
        pgrp=job.pgrp,
        label=job.label,
        name=job.name,
        user=job.user,
        pid=max(0, job.pid),
        callbacks=[convert.registered_message(cb) for cb in callbacks],
    )


def universal_message(
    directories: Sequence[Path], loaded: Sequence[UniversalCallback], reload: ReloadStatus
) -> executor_pb2.GetUniversalCallbacksResponse:
    """The active universal callbacks grouped by directory, with the last reload."""
    answer = executor_pb2.GetUniversalCallbacksResponse(
        last_reload_at=reload.attempted_at, loaded_at=reload.loaded_at, errors=reload.errors
    )
    for directory in directories:
        entry = answer.directories.add(
            path=str(directory), has_conf=(directory / CONF_NAME).is_file()
        )
        for callback in loaded:
            if Path(callback.source).parent == directory:
                entry.callbacks.add(
                    source=callback.source,
                    language=callback.language,
                    triggers=callback.triggers,
                    canonical_triggers=canonical_triggers(callback.triggers),
                    policy=callback.policy or "universal",
                    shadow=callback.shadow,
                )
    return answer
