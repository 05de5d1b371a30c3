"""Assembly: settings -> sandbox -> supervisor -> records -> dispatcher -> triggers -> api.

Every part is entered on one ``AsyncExitStack``: a start that fails part-way (a port
already taken, a bad TLS file) unwinds exactly what was started, and a stop is the same
unwinding, in the order the parts were pushed, reversed. The pushes below are arranged
so that a stop goes: no new run is admitted (Execute is UNAVAILABLE; a fired run waits
in the durable queue for the next start) and health says NOT_SERVING, the HTTP side port
answers 503 (its /healthz NOT_SERVING), the embedded supervisor's forwarding stops, the dispatcher drains (runs in
flight end KILLED "the executor is shutting down", are recorded, and their callers get
that answer; an Execute whose callback has not started is answered UNAVAILABLE, not
recorded, so its caller may send it again), the trigger engine stops, the gRPC server stops (its calls in flight
finish) and then the HTTP side port, results still in the outbox get a moment to reach the supervisor, then the
children's helpers, databases, channels and cgroups close.

With no ``supervisor`` address configured, the embedded reference supervisor (SQLite in
the data dir) is served on a private socket and the executor talks to it over gRPC, the
same code path a site's remote supervisor takes; its farm (FarmService: submit jobs,
move frames, simulated workers) is served on the public port beside the executor's
services.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from executor import data_dir, heap_return, open_files, process_limit, reload_signal, stop_signal
from executor.api import certificate_checks, security
from executor.api import edge as api_edge
from executor.api import embedded as api_embedded
from executor.api.farm import FarmServicer
from executor.api.health import HealthService
from executor.api.reporting import GrpcReportTransport, ReportEncoder
from executor.api.server_start import start_whole
from executor.api.supervisor import GrpcSupervisor
from executor.api.supervisor_channel import describe as describe_link
from executor.api.supervisor_channel import link_warnings, open_supervisor_channel
from executor.api.supervisor_reach import SupervisorReach
from executor.config import Settings
from executor.data_dir_lock import DataDirLock
from executor.dispatcher import Dispatcher
from executor.errors import ConfigError, UnavailableError
from executor.heap_return import HeapTrimmer
from executor.plurals import counted
from executor.policies import report as policy_report
from executor.policy_binds import bind_warnings
from executor.policy_host import exposure_warnings, for_host, network_warnings
from executor.runs.invocation_ids import FleetIds
from executor.runs.metrics import Metrics
from executor.runs.outbox import Outbox
from executor.runs.readings import ReadingSources, TierFlags
from executor.runs.recorder import Recorder
from executor.runtimes import mail_queue
from executor.runtimes.check import check_source
from executor.runtimes.mail import login_warnings as mail_login_warnings
from executor.runtimes.qube import QubeInterpreter
from executor.sandbox import host_limits, stuck_slots
from executor.sandbox.identity import UidClaim
from executor.sandbox.process import SandboxOptions, SandboxRunner
from executor.sandbox.spawners import ColdSpawner, Spawner, ZygoteSpawner
from executor.sandbox.stuck_slots import StuckSlots
from executor.sandbox.tier import describe_sandbox, mechanisms, root_warnings, sandbox_options
from executor.secret_files import open_to_others, with_other_links
from executor.sql import is_postgres
from executor.storage import StorageHealth, runs_nothing
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import JournalLimits
from executor.triggers.store import TriggerStore
from executor.triggers.universal import LAST_GOOD_NAME
from executor.web.app import Dashboard
from executor.web.auth import Access
from executor.web.explain import explain_from_engine
from executor.web.host_check import HostCheck, bind_name
from executor.web.server import SidePort
from executor.web.source import ExecutorSource
from supervisor_client import ExecutorClient
from supervisor_client.reference import ReferenceSupervisor
from supervisor_client.reference.farm import Farm
from supervisor_client.reference.forwarder import EventForwarder

logger = logging.getLogger(__name__)

# Seconds calls in flight get to finish once the server stops.
STOP_GRACE_S: Final = 5.0


@dataclass
class RunningServer:
    """A started executor; ``port`` is the bound port (useful with ':0')."""

    port: int
    options: SandboxOptions
    dispatcher: Dispatcher
    runner: SandboxRunner
    spawner: Spawner
    engine: TriggerEngine
    recorder: Recorder
    # The HTTP side port's bound port; None when http_bind is empty.
    http_port: int | None = None
    # What gives back the memory of large calls and pages (heap_return.py; its trims count).
    trimmer: HeapTrimmer | None = None
    # The embedded reference supervisor, with its forwarder (embedded mode only).
    _embedded: api_embedded.EmbeddedSupervisor | None = field(default=None, repr=False)
    _exit_stack: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)

    @property
    def reference(self) -> ReferenceSupervisor | None:
        """The embedded reference supervisor's store; None with a remote supervisor."""
        return self._embedded.reference if self._embedded is not None else None

    @property
    def forwarder(self) -> EventForwarder | None:
        """What sends the embedded supervisor's transitions to the trigger engine."""
        return self._embedded.forwarder if self._embedded is not None else None

    async def settle(self) -> None:
        """Until the embedded supervisor's transitions, and what they fired, have run."""
        if self._embedded is None:
            raise RuntimeError("settle needs the embedded supervisor")
        await self._embedded.settle(self.engine)

    async def stop(self) -> None:
        """Drain and stop everything, in the order ``start`` arranged (see the module doc)."""
        await self._exit_stack.aclose()


def _release_unless_mailing(lock: DataDirLock, qube: QubeInterpreter) -> None:
    """Free the data dir, unless a mail thread still sends: then the process's exit frees it.

    A restarted executor sends the spool's mails again; it must not start while this
    process may still be sending one of them.
    """
    if qube.mail_queue.sending:
        logger.warning(
            "the data dir stays locked until the process has exited: a mail is still being sent"
        )
        return
    lock.release()


def _run_refusal(
    storage: StorageHealth, outbox: Outbox | None, stuck: StuckSlots
) -> Callable[[], str]:
    """Why no run may start now, "" when one may: the dispatcher asks at the door and at its slot.

    A database lost under the executor (``StorageHealth.lost``): a fired run's result
    would go into a file nothing reads again; fired runs wait in their queue (until the
    restart) as Execute calls are refused. Then every slot kept by a killed process that
    has not ended: an Execute would wait for one until its deadline. Else the outbox
    past its bound.
    """

    def refusal() -> str:
        if storage.lost:
            return runs_nothing(storage.lost)
        if stuck.problem:
            return stuck_slots.refusal(stuck.problem)
        return outbox.refusal() if outbox is not None else ""

    return refusal


def _spawner(settings: Settings, options: SandboxOptions) -> Spawner:
    if settings.launcher == "zygote":
        return ZygoteSpawner(sys.executable, private_network=not options.network)
    return ColdSpawner(sys.executable)


async def start(settings: Settings) -> RunningServer:  # noqa: PLR0915 - the whole assembly
    """Build and start everything the settings describe."""
    heap_return.keep_large_blocks_apart()  # a large call's memory is given back after it
    async with AsyncExitStack() as stack:
        credentials = security.server_credentials(settings)  # bad TLS files fail first
        # The supervisor link's files too: a start-up error, not a channel failing later.
        remote = open_supervisor_channel(settings) if settings.supervisor else None
        if remote is not None:
            stack.push_async_callback(remote.close)
        security.check_bindable(settings.bind)
        if settings.http_bind:
            security.check_bindable(settings.http_bind, setting="http_bind")
        options = sandbox_options(settings)
        if options.cgroups is not None:
            stack.callback(options.cgroups.close)
        if options.isolation is not None:
            plan = options.isolation
            stack.callback(UidClaim.take(plan.uid_base, plan.uid_count).release)
        if options.bridge_network is not None:
            stack.callback(options.bridge_network.close)
        policies = for_host(settings, options, os.environ)
        data_dir.make(settings.data_dir, data_dir.databases(settings))
        qube = QubeInterpreter(
            settings.mail_settings, spool=settings.data_dir / mail_queue.SPOOL_NAME
        )
        # Held until no mail thread sends (mail_queue.close): else until the process exits.
        stack.callback(_release_unless_mailing, DataDirLock.take(settings.data_dir), qube)
        storage_health = StorageHealth(
            settings.data_dir, settings.store if is_postgres(settings.store) else ""
        )

        embedded = None
        if remote is not None:
            # Its own token (supervisor_token), never ours: a supervisor is no caller of ours.
            supervisor_channel = remote
        else:
            embedded = await api_embedded.start(
                settings.data_dir,
                max_message_bytes=settings.supervisor_max_message_bytes,
                history_retention_days=settings.history_retention_days,
                history_max_runs=settings.history_max_runs,
                history_max_bytes=settings.history_max_bytes,
                health=storage_health,
            )
            stack.push_async_callback(embedded.close, STOP_GRACE_S)
            supervisor_channel = embedded.channel

        metrics = Metrics()
        # What qb calls and result reports find of the supervisor: fired runs wait it out.
        reach = SupervisorReach(
            supervisor_channel,
            settings.supervisor_timeout_seconds,
            # The embedded one's reads go on while supervisor.db takes no write.
            write_check=embedded.write_refusal if embedded is not None else None,
        )
        transport = None
        if settings.report_results:
            transport = GrpcReportTransport(
                supervisor_channel, settings.supervisor_timeout_seconds, reach
            )
        trigger_store = TriggerStore(
            settings.store or str(settings.data_dir / "triggers.db"),
            health=storage_health,
            lease_s=settings.store_lease_seconds,
            max_bytes=settings.triggers_max_bytes,
        )
        stack.callback(trigger_store.close)
        recorder = Recorder.open(
            settings,
            metrics,
            transport=transport,
            encode_report=ReportEncoder(settings.supervisor_max_message_bytes),
            health=storage_health,
            # A fleet's fired runs are recorded only while their claim holds (fencing).
            claim_holds=trigger_store.claim_holds if trigger_store.fleet else None,
        )
        stack.push_async_callback(recorder.close)
        # Every database is open (and checked): their logs may give space back now, and a
        # data dir that takes no write is known before the first run, not by its result.
        # From now on each must stay the file opened (a deleted one loses what it records).
        storage_health.watch(settings.data_dir / name for name in data_dir.databases(settings))
        storage_health.check()

        spawner = _spawner(settings, options)
        stack.push_async_callback(spawner.close)
        # Every slot kept by a killed process that has not ended: health NOT_SERVING (edge).
        stuck = StuckSlots(settings.max_concurrent)
        runner = SandboxRunner(options, spawner, prepare_ahead=settings.prepare_ahead, stuck=stuck)
        dispatcher = Dispatcher(
            runner=runner,
            supervisor=GrpcSupervisor(
                supervisor_channel, settings.supervisor_timeout_seconds, reach
            ),
            qube=qube,
            languages=settings.languages,
            max_concurrent=settings.max_concurrent,
            max_queue=settings.max_queue,
            max_queue_bytes=settings.max_queue_bytes,
            on_result=recorder.on_result,
            policies=policies,
            refusal=_run_refusal(storage_health, recorder.outbox, stuck),
            unenforceable=functools.partial(
                host_limits.refusal, nproc=options.caps_processes_with_nproc
            ),
            behind=recorder.behind,
        )

        # After the drain (no run hands over more mail): the queue's last exchanges end.
        stack.push_async_callback(qube.mail_queue.close)
        # A stop's or crash's leftovers go first, before the re-runs that would mail again.
        qube.mail_queue.load_spool()

        engine = TriggerEngine(
            trigger_store,
            # Fired callbacks are durable work: never refused at the queue bound.
            functools.partial(dispatcher.execute, fired=True),
            limits=settings.default_limits,
            universal_dirs=settings.universal_callback_dirs,
            universal_policies=settings.universal_callback_policies,
            policies=policies,
            max_parallel_events=settings.max_concurrent,
            journal_limits=JournalLimits(
                entries=settings.trigger_journal_entries,
                max_age_s=settings.trigger_journal_days * 86400.0,
            ),
            event_id_retention_s=settings.event_id_retention_hours * 3600.0,
            event_id_max_count=settings.event_id_max_count,
            check_code=check_source,
            languages=settings.languages,
            # <data_dir>/callback need not exist; a directory named in the settings should.
            warn_missing_dirs=bool(settings.universal_callback_path.strip()),
            last_good=settings.data_dir / LAST_GOOD_NAME,
            recorded_result=recorder.recorded_result,
            supervisor_reach=reach,
        )
        # A fired run's result the storage refuses: its waiting publisher is told at once.
        recorder.tell_unrecorded(engine.unrecorded)
        _load_universal(engine, settings)

        farm = None
        if embedded is not None:
            # The farm's changes reach the engine through the forwarder like any transition.
            farm = FarmServicer(
                Farm(embedded.reference),
                engine.store.callbacks_of,
                functools.partial(embedded.settle, engine),
                embedded.registered,
                engine.labels,
                embedded.store_thread,
                room=engine.store.room,
                settled=functools.partial(embedded.settled_now, engine),
            )
        fleet_ids = None
        if trigger_store.fleet:  # Execute's id checks: one round trip to the shared store
            from executor.migrations import open_postgres

            # Sent as a call arrives, on a connection of its own (FleetIds.claim_ahead).
            ahead = open_postgres(settings.store, application_name="cbexec-execute-claims")
            stack.callback(ahead.close)
            fleet_ids = FleetIds(
                trigger_store.outside_transaction,
                recorder.pending,
                owner=trigger_store.owner,
                lease_s=trigger_store.lease_s,
                clock=trigger_store.clock.now,  # the database's: the leases' clock
                ahead=ahead,
            )
            recorder.give_back_claims(fleet_ids)
        edge = api_edge.build(
            settings,
            credentials,
            metrics=metrics,
            dispatcher=dispatcher,
            engine=engine,
            recorder=recorder,
            farm=farm,
            policies=policies,
            storage=storage_health,
            ids=fleet_ids,
        )
        metrics.read_from(
            _reading_sources(
                settings,
                options,
                dispatcher,
                runner,
                spawner,
                recorder,
                engine,
                trigger_store,
                storage_health,
                stuck,
                qube,
                embedded,
                edge.health,
            ).read
        )
        # The HTTP side port closes once the gRPC server has: until then its /healthz says
        # 503 NOT_SERVING (drain, below), so a load balancer sees a drain, not a crash.
        side_ports: list[SidePort] = []
        stack.push_async_callback(_close_all, side_ports)
        stack.push_async_callback(edge.close, STOP_GRACE_S)
        await start_whole(edge.server)  # a stop meanwhile waits for it (server_start)
        if edge.connections is not None:
            watch = asyncio.create_task(edge.connections.watch_forever())
            stack.push_async_callback(_stop_tasks, [watch])
        recorder.start()
        if fleet_ids is not None:  # until the drain has ended the runs that hold claims
            stack.push_async_callback(_stop_tasks, [asyncio.create_task(fleet_ids.renew_forever())])

        engine.start()  # firings decided before a restart run first, then new ones
        stack.push_async_callback(engine.close)
        # Runs in flight end KILLED ("shutting down"), recorded and reported; an Execute
        # not started yet is answered UNAVAILABLE, unrecorded, to be sent again; a fired one
        # stopped so (or still waiting for a slot) stays in the engine's durable queue and
        # runs again at the next start, under its invocation id, as after a crash.
        stack.push_async_callback(dispatcher.drain)
        # Before the drain: a fired run's result waiting for a full disk would hold it (on
        # SQLite, for as long as the disk stays full); not recorded, it runs at the next start.
        stack.callback(recorder.stop_waiting)
        edge.set_serving(True)
        edge.follow(storage_health, "storage")
        edge.follow(stuck, "slots")
        stack.push_async_callback(
            _stop_tasks, [asyncio.create_task(storage_health.probe_forever())]
        )
        if embedded is not None:
            embedded.forward_to(edge.own_channel)
            stack.push_async_callback(embedded.stop_forwarding)
        http_port = None
        if settings.http_bind:
            # Last in, first out: pages and scrapes stop (503) before anything they read does.
            side_port = _start_side_port(settings, edge.own_channel, metrics, edge.trimmer)
            side_ports.append(side_port)
            stack.callback(side_port.drain)
            http_port = side_port.port
        # Pushed last, so a stop begins here: no new run, and health says NOT_SERVING.
        stack.push_async_callback(edge.stop_serving)
        stack.callback(dispatcher.stop_admitting)

        logger.info("endpoint security: %s", security.describe(settings))
        if remote is not None:
            logger.info("supervisor link: %s", describe_link(settings))
        now = datetime.datetime.now(datetime.UTC)
        for warning in [
            *security.open_port_warnings(settings),
            *certificate_checks.warnings(settings, now),
            *link_warnings(settings),
        ]:
            logger.warning("%s", warning)
        logger.info(
            "serving on port %d; supervisor %s; sandbox: %s; languages: %s; slots %d, queue %d",
            edge.port,
            "embedded" if embedded else settings.supervisor,
            describe_sandbox(options, settings.launcher),
            ",".join(sorted(settings.languages)),
            settings.max_concurrent,
            settings.max_queue,
        )
        for line in policy_report(policies):
            logger.info("%s", line)
        for line in [
            *root_warnings(options),
            *network_warnings(settings, options),
            *exposure_warnings(policies, settings.auth_token),
            *bind_warnings(policies),
            *(api_embedded.shared_store_warnings(settings.store) if embedded else []),
            *open_to_others(settings),
            *with_other_links(settings),
            *mail_login_warnings(settings.mail),
            *_own_limits_warnings(settings),
            *host_limits.warnings(
                settings.default_limits,
                settings.max_limits,
                nproc=options.caps_processes_with_nproc,
            ),
        ]:
            logger.warning("%s", line)
        return RunningServer(
            port=edge.port,
            options=options,
            dispatcher=dispatcher,
            runner=runner,
            spawner=spawner,
            engine=engine,
            recorder=recorder,
            http_port=http_port,
            trimmer=edge.trimmer,
            _embedded=embedded,
            _exit_stack=stack.pop_all(),
        )
    raise AssertionError("unreachable: the block returns or raises")


def _start_side_port(
    settings: Settings, channel: grpc.aio.Channel, metrics: Metrics, trimmer: HeapTrimmer
) -> SidePort:
    """The HTTP side port, reading through the executor's own channel (it carries the token).

    Its large pages have the heap trimmed after them, as gRPC calls do (``trimmer``).
    """
    source = ExecutorSource(
        asyncio.get_running_loop(), ExecutorClient(channel), metrics, trimmer=trimmer
    )

    def dashboard(port: int) -> Dashboard:
        access = Access(
            settings.auth_token,
            port=port,
            exempt_probes=settings.http_exempt_metrics,
            secure_cookie=bool(settings.tls_cert),
        )
        hosts = HostCheck(
            [*settings.http_allowed_host_names, *bind_name(settings.http_bind)],
            required=not settings.auth_token,
        )
        return Dashboard(
            source, metrics.registry, access, explain=explain_from_engine(source), hosts=hosts
        )

    return SidePort.start(settings, dashboard)


def _reading_sources(
    settings: Settings,
    options: SandboxOptions,
    dispatcher: Dispatcher,
    runner: SandboxRunner,
    spawner: Spawner,
    recorder: Recorder,
    engine: TriggerEngine,
    store: TriggerStore,
    storage: StorageHealth,
    stuck: StuckSlots,
    qube: QubeInterpreter,
    embedded: api_embedded.EmbeddedSupervisor | None,
    health: HealthService,
) -> ReadingSources:
    """Where each gauge of the metrics comes from (each read on the event loop)."""
    outbox = recorder.outbox
    stats = engine.stats
    return ReadingSources(
        load=dispatcher,
        slots=settings.max_concurrent,
        queue_limit=settings.max_queue,
        tier=TierFlags(
            describe_sandbox(options, settings.launcher),
            settings.launcher,
            tuple(mechanisms(options).items()),
        ),
        prepared_children=lambda: runner.prepared,
        outbox=(lambda: (outbox.pending(), outbox.dead()))
        if outbox is not None
        else lambda: (0, 0),
        outbox_last_error=outbox.last_error if outbox is not None else lambda: "",
        firings_held=lambda: engine.firings_held,
        slots_kept_by_killed=lambda: (stuck.count, stuck.problem),
        # The outbox past outbox_max_bytes is said here too: it stops every run as well;
        # and the jobs whose events wait for triggers.db's room: their callbacks never fire.
        # Neither makes health NOT_SERVING (a failed write does: edge.follow(storage_health)):
        # reads, events and registrations are still served, Execute too for the second.
        storage_problem=lambda: (
            storage.problem
            or (outbox.refusal() if outbox else "")
            or (embedded.waits_for_room() if embedded else "")
        ),
        # Read in the same step as the problems: health changes in the step they do (edge.follow).
        health_status=health.status_name,
        trigger_counts=lambda: (
            stats.events_published,
            stats.callbacks_fired,
            stats.event_ids_forgotten_early,
            stats.repeat_ticks_skipped,
        ),
        trigger_store=lambda: (
            store.count_jobs(),
            store.count_callbacks(),
            store.count_firings(),
        ),
        universal=lambda: (len(engine.universal), len(engine.universal_reload.errors)),
        zygotes=spawner.status if isinstance(spawner, ZygoteSpawner) else tuple,
        mail=lambda: (qube.mail_queue.waiting, qube.mail_queue.sending, qube.mail_queue.not_sent),
    )


def _load_universal(engine: TriggerEngine, settings: Settings) -> None:
    """Load callbacks.conf; a broken one is one prominent line, or (``strict``) no start."""
    problems = engine.reload_universal(quiet=True)
    if not problems:
        return
    count = counted(len(problems), "problem")
    if settings.strict:
        raise ConfigError(f"universal callbacks: {count} in callbacks.conf; first: {problems[0]}")
    kept = engine.keep_last_good()
    if kept is not None:
        logger.error(
            "UNIVERSAL CALLBACKS NOT RELOADED: callbacks.conf has %s; the set loaded last "
            "before this start stays active (%d callbacks); first: %s (all of them: cbexec "
            "serve --check-config; fix, then cbexec triggers reload)",
            count,
            kept,
            problems[0],
        )
        return
    logger.error(
        "UNIVERSAL CALLBACKS ARE OFF: callbacks.conf has %s, so none of its callbacks is "
        "active; first: %s (all of them: cbexec serve --check-config; fix, then cbexec "
        "triggers reload)",
        count,
        problems[0],
    )


async def _close_all(side_ports: Sequence[SidePort]) -> None:
    for side_port in side_ports:
        await side_port.close()


async def _stop_tasks(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _own_limits_warnings(settings: Settings) -> list[str]:
    """The start-up WARNINGs of the executor's own open-file and process limits."""
    warnings = (
        open_files.limit_warning(open_files.limit(), settings.max_concurrent, settings.launcher),
        process_limit.limit_warning(process_limit.own_limit(), settings.max_concurrent),
    )
    return [warning for warning in warnings if warning is not None]


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    # The process's own limit, so here rather than in ``start`` (tests run that in theirs).
    before, after = open_files.raise_soft_limit()
    if after != before:
        logger.info("open-file limit raised from %d to the hard limit, %d", before, after)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in stop_signal.STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    if stop_signal.take_deferred() is not None:  # after the handlers: none is lost in between
        stop.set()
    running = await _start_unless_stopped(settings, stop)
    if running is None:
        logger.info("stopping during start-up: stopped what had started; not serving")
        return
    # What start-up made (modules, stubs, the server) lives as long as the process: the
    # collector need not walk it again on every full collection while callbacks run.
    gc.freeze()
    loop.add_signal_handler(signal.SIGHUP, functools.partial(_reload, running.engine))
    if reload_signal.take_deferred():  # after the handler: none is lost in between
        logger.info("SIGHUP during start-up: reloading callbacks.conf now that the executor is up")
        _reload(running.engine)
    try:
        await stop.wait()
        # The drain, a moment later, logs what it kills and what it answers UNAVAILABLE.
        logger.info("stopping: admitting no new run; then ending the runs in progress")
    finally:
        await running.stop()


async def _start_unless_stopped(settings: Settings, stop: asyncio.Event) -> RunningServer | None:
    """``start``, cancelled (unwinding what it started) if ``stop`` is set first; None then.

    A stop during start-up (a Ctrl-C, systemd's SIGTERM) is the same stop as later: the
    parts started so far stop in order, and the process exits 0, with no traceback.
    """
    if stop.is_set():
        return None
    starting = asyncio.create_task(start(settings))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.wait((starting,))  # its own unwinding: what it started is stopped
    if starting.cancelled():
        return None
    running = starting.result()  # a start that failed says why, as without a stop
    if stop.is_set():  # it ended as the stop came
        await running.stop()
        return None
    return running


def _reload(engine: TriggerEngine) -> None:
    """SIGHUP: re-read callbacks.conf here and, in a fleet, on every replica (off the loop)."""
    task = asyncio.get_running_loop().create_task(_reload_everywhere(engine))
    _background.add(task)
    task.add_done_callback(_background.discard)


# Tasks started by signal handlers, held until they end (the loop keeps only weak ones).
_background: set[asyncio.Task[None]] = set()


async def _reload_everywhere(engine: TriggerEngine) -> None:
    try:
        await engine.reload_universal_off_loop(fleet_wide=True)
    except UnavailableError as err:
        # The fleet's version row cannot be bumped now: this replica reloads anyway, and
        # the others are told once the store answers.
        logger.warning("SIGHUP: reloading here; the other replicas are told later: %s", err)
        await engine.reload_universal_off_loop()
        await _tell_the_fleet(engine)


async def _tell_the_fleet(engine: TriggerEngine, interval_s: float = 1.0) -> None:
    """Bump the fleet's reload version once the store answers again."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await engine.reload_universal_off_loop(fleet_wide=True)
        except UnavailableError:
            continue
        logger.info("SIGHUP's reload reached the fleet")
        return
