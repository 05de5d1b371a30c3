"""``cbexec runs`` (history) and ``cbexec run`` (one callback by hand), as clients of an executor.

``cbexec run`` is how an admin tries a callback before installing it: against the site's
running executor (the callback really acts on the job, and its result is reported like
any other), or with ``--embedded`` against a throwaway executor and embedded supervisor
started in this process on 127.0.0.1:0, whose supervisor holds the job file's job as
it is given first (its id, statuses and all).

What a callback chose (its output, failure, traceback, action messages, the trigger
and names it ran for) is printed with its control characters as visible escapes
(``visible_text``), to a terminal or a pipe alike: raw, an escape sequence in a
callback's output would act on the admin's terminal (set its title, write its
clipboard, clear it, overwrite the "outcome:" line). ``--json`` stays exact JSON (whose
own escapes already keep every control character out of the text): ``runs show ID
--json`` is the one that gives a run's output exactly.

Exit codes: 0 success (for ``run``: the callback SUCCEEDED), 1 the callback did not
succeed, 2 bad arguments or configuration, 3 the executor refused or could not be
reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from executor.bounds import cut as cut_text
from executor.cli.connection import (
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    MAX_ID,
    MAX_LIST,
    SUBJOB_IDS,
    connect,
    connection_options,
    rpc_command,
    whole_number,
)
from executor.cli.undecodable_arguments import Parser
from executor.config import Settings
from executor.errors import ConfigError
from executor.sandbox.limits import MOST
from executor.triggers.nodes import EventName, EventType
from executor.visible_text import backslashed_lines, escaped, printable, visible
from supervisor_client import ExecutorClient
from supervisor_client.client import (
    OUTCOMES,
    as_plain,
    build_execute_request,
    outcome_name,
    outcome_value,
)

# How many runs ``cbexec runs`` lists without --limit (ListRuns' own default).
DEFAULT_RUNS: Final = 50
SINCE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# The languages a callback file's extension picks, as in callbacks.conf (plus .pm, .qube).
_EXTENSIONS: Final = {
    ".py": "python",
    ".pl": "perl",
    ".pm": "perl",
    ".qcb": "qube",
    ".qube": "qube",
}


def parse_since(text: str, now: float) -> float:
    """``1h``/``30m``/``2d``/``1w``/``45s`` ago, an ISO 8601 time, or Unix seconds → Unix seconds.

    An ISO time without an offset is local time. Raises ValueError for anything else.
    """
    text = text.strip()
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if relative:
        return _finite(now - float(relative.group(1)) * SINCE_UNITS[relative.group(2)], text)
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _finite(float(text), text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration (30m, 1h, 2d), an ISO time or Unix seconds"
        ) from None


def _finite(seconds: float, text: str) -> float:
    """``seconds``, unless the digits were more than a float holds (310 of them: inf)."""
    if math.isfinite(seconds):
        return seconds
    raise ValueError(
        f"--since {cut_text(text, 40)!r}: out of range; expected a duration (30m, 1h, 2d), "
        "an ISO time or Unix seconds"
    )


def parse_event(text: str) -> dict[str, str]:
    """``complete-job-self`` → name/type/context/extra (extra keeps any further hyphens).

    Raises ValueError naming a part that is not a known event name or type, and the
    valid ones: a typo would otherwise run the callback with an event nothing can raise.
    """
    parts = text.split("-", 3)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"--event {text!r}: expected name-type[-context[-extra]]")
    names, types = [n.value for n in EventName], [t.value for t in EventType]
    if parts[0] not in names:
        raise ValueError(
            f"--event {text!r}: unknown event name {parts[0]!r}; expected one of {', '.join(names)}"
        )
    if parts[1] not in types:
        raise ValueError(
            f"--event {text!r}: unknown event type {parts[1]!r}; expected one of {', '.join(types)}"
        )
    parts += [""] * (4 - len(parts))
    return dict(zip(("name", "type", "context", "extra"), parts, strict=True))


def item_agreed(
    event: dict[str, str] | None, work: str, subjob: int
) -> tuple[dict[str, str] | None, str, int]:
    """``cbexec run``'s event and its ``--work`` / ``--subjob`` made to name one item.

    They describe one firing, so ``qb.event()['extra']`` must agree with ``qb.workid()``
    or ``qb.subid()``: each fills what the other leaves out (``--event
    complete-work-self --work 5`` is ``complete-work-self-5``, and that alone gives
    ``qb.workid()`` ``'5'``). Two different items are a ValueError. A ``*`` extra (a
    trigger's wildcard) and an extra the executor will refuse are left as given.
    """
    if event is None or event["type"] not in ("work", "subjob"):
        return event, work, subjob
    extra = event["extra"]
    if event["type"] == "work":
        if extra in ("*", work):
            return event, work, subjob
        if not extra:
            return {**event, "extra": work}, work, subjob
        if not work:
            return event, extra, subjob
        raise ValueError(f"--work {work!r} names another work item than --event's {extra!r}")
    if not extra and subjob >= 0:
        return {**event, "extra": str(subjob)}, work, subjob
    instance = extra.strip()
    if not (instance.isascii() and instance.isdigit() and int(instance) <= SUBJOB_IDS[1]):
        return event, work, subjob  # "" and no --subjob, "*", or what the executor refuses
    if subjob < 0:
        return event, work, int(instance)
    if subjob != int(instance):
        raise ValueError(f"--subjob {subjob} names another instance than --event's {extra!r}")
    return event, work, subjob


def embedded_mail_dir() -> Path:
    """Where ``run --embedded`` keeps mail: beside the default data dir, one maildir for all runs."""
    return Settings().data_dir.parent / "cbexec-run-mail"


def _local_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="seconds")


# -- cbexec runs ------------------------------------------------------------------------


def format_runs(runs: Sequence[Any]) -> str:
    """The ``cbexec runs`` table."""
    header = (
        "STARTED",
        "INVOCATION",
        "JOB",
        "CB",
        "TRIGGER",
        "LANG",
        "POLICY",
        "OUTCOME",
        "WALL",
        "QUEUE",
        "CPU",
        "RSS",
    )
    rows = [header]
    for run in runs:
        trigger = run.triggers if len(run.triggers) <= 28 else run.triggers[:27] + "…"
        rows.append(
            (
                _local_time(run.started_at),
                run.invocation_id,
                str(run.job_id),
                run.source.rsplit("/", 1)[-1] if run.source else str(run.callback_id),
                trigger or "-",
                run.language,
                (run.policy or "-") + (" (shadow)" if run.shadow else ""),
                outcome_name(run.outcome),
                f"{run.usage.wall_seconds:.3f}s",
                f"{run.usage.queue_seconds:.3f}s",
                f"{run.usage.cpu_seconds:.3f}s",
                f"{run.usage.peak_rss_bytes // 1024}KiB",
            )
        )
    shown = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in shown
    )


def format_result(result: Any) -> str:
    """Outcome, usage and actions of one run, then its failure and output, for a person.

    The callback's texts come after our lines, each in a section (``--- failure:``,
    ``--- stdout``, ``--- stderr``), and a line of theirs that begins as a section line
    does gets a backslash before it, as in the ``.cb`` log: a printed ``--- stderr:
    (empty)`` or a failure's ``outcome: SUCCEEDED`` line never passes for ours.
    """
    lines = [f"outcome: {outcome_name(result.outcome)}"]
    lines.append(
        f"exit: signal {result.signal}" if result.signal else f"exit: code {result.exit_code}"
    )
    usage = result.usage
    lines.append(
        f"usage: wall {usage.wall_seconds:.3f}s, cpu {usage.cpu_seconds:.3f}s, "
        f"peak rss {usage.peak_rss_bytes // 1024} KiB, queued {usage.queue_seconds:.3f}s"
    )
    lines.append(f"actions: {len(result.actions)}")
    for action in result.actions:
        mark = "ok" if action.ok else "REFUSED"
        line = f"  {action.verb} {action.target}: {mark} {action.message}".rstrip()
        lines.append(escaped(line))  # targets are work names a submitter chose
    if result.HasField("failure") and result.failure.message:
        lines.append(f"--- failure: {_callback_text(result.failure.message)}")
        if result.failure.traceback:
            lines.append(_callback_text(result.failure.traceback.rstrip("\n")))
    for name, text, cut in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        suffix = " (truncated)" if cut else ""
        lines.append(f"--- {name}{suffix}" if text else f"--- {name}: (empty)")
        if text:
            lines.append(_callback_text(text.rstrip("\n")))
    return "\n".join(lines)


def _callback_text(text: str) -> str:
    """A text of the callback's as ``visible`` prints it, its lines unable to pass for ours."""
    return backslashed_lines(visible(text))


def format_run(run: Any) -> str:
    """``cbexec runs show``: the run's record, then its result."""
    event = "-"
    if run.HasField("event") and run.event.name:
        event = "-".join(
            p for p in (run.event.name, run.event.type, run.event.context, run.event.extra) if p
        )
    head = [
        f"invocation: {run.invocation_id}",
        f"job: {run.job_id}  callback: {run.callback_id}"
        + (f" ({run.source})" if run.source else "")
        + f"  language: {run.language}",
        f"trigger: {run.triggers or '-'}",
        f"event: {event}" + (f"  work: {run.work_name}" if run.work_name else ""),
        f"started: {_local_time(run.started_at)}",
        f"policy: {run.policy or '-'}"
        + ("  (shadow run: qb actions recorded, not applied)" if run.shadow else ""),
    ]
    if run.newer_run_in_progress:
        head.append(
            "newer run: in progress (this record is the previous run's; the newer run's"
            " replaces it when it ends)"
        )
    # The event's extra and the work name are a submitter's: one line each, whatever they hold.
    return "\n".join(escaped(line) for line in head) + "\n" + format_result(run.result)


async def _runs(args: argparse.Namespace, out: TextIO) -> int:
    async with connect(args) as client:
        if args.runs_command == "show":
            run = await client.get_run(args.invocation_id, timeout=args.timeout)
            if args.json:
                print(json.dumps(as_plain(run)), file=out)
            else:
                print(visible(format_run(run)), file=out)
            return EXIT_OK
        listed: list[Any] = []
        page_token = args.page_token or ""
        while True:
            response = await client.list_runs(
                job_id=args.job or 0,
                outcome=args.outcome or "",
                since=args.since or 0.0,
                limit=MAX_LIST if args.all else args.limit or DEFAULT_RUNS,
                language=args.language or "",
                shadow_only=args.shadow,
                page_token=page_token,
                timeout=args.timeout,
            )
            page_token = response.next_page_token
            if args.json:  # a line per run as each page comes: a pipe reads them at once
                for run in response.runs:
                    print(json.dumps(as_plain(run)), file=out)
            else:  # one table, its columns as wide as all the pages need
                listed.extend(response.runs)
            if not (args.all and page_token):
                break
    if not args.json:
        print(visible(format_runs(listed)), file=out)
        if args.shadow:
            print(visible(format_would_be(listed)), file=out, end="")
    if page_token:
        print(next_page_hint(page_token, args.since), file=sys.stderr)
    return EXIT_OK


def next_page_hint(page_token: str, since: float | None) -> str:
    """What ``cbexec runs`` says on stderr when older runs match: how to list the next page.

    A token holds the filters it was made for, the start time as Unix seconds: ``--since
    1h`` given again later means another time, so the hint gives that time as it was.
    """
    same = "the same options"
    if since is not None and since > 0:
        same += f" but --since {since!r}"
    return f"more runs: for the next page, {same} and --page-token {page_token} (or --all)"


def format_would_be(runs: Sequence[Any]) -> str:
    """``cbexec runs --shadow``: under the table, what each shadow run would have done."""
    lines = []
    for run in runs:
        actions = [a for a in run.result.actions if a.message.startswith("shadow:")]
        lines.append(f"\n{run.invocation_id} ({run.source or run.callback_id}) would have:")
        lines.extend(f"  {a.verb} {a.target}: {a.message}" for a in actions)
        if not actions:
            lines.append("  (taken no action)")
    return "\n".join(lines) + ("\n" if lines else "")


def _since(text: str) -> float:
    try:
        return parse_since(text, time.time())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _wall_seconds(text: str) -> float:
    """``--wall-seconds``: more than 0 and at most any cap can be (1e9), else exit 2.

    Sent on, a bad value came back INVALID_ARGUMENT (exit 3), and 0 (the wire's "unset")
    silently ran with the default: leaving the option out is how to ask for that.
    """
    most = MOST["wall_seconds"]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= most:  # NaN too
        raise argparse.ArgumentTypeError(
            f"expected seconds, more than 0 and at most {most:g}, got {text!r}; "
            "leave it out for the policy's default"
        )
    return value


def _outcome(text: str) -> str:
    try:
        return outcome_name(outcome_value(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_runs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parent = connection_options()
    runs = commands.add_parser("runs", parents=[parent], help="list recent runs (run history)")
    # Job ids start at 1: a 0 (an unset id in a script) would list every job's runs.
    runs.add_argument("--job", type=whole_number(1, MAX_ID), help="only runs of this job id")
    runs.add_argument(
        "--outcome", type=_outcome, help=f"only runs with this outcome: {', '.join(OUTCOMES)}"
    )
    runs.add_argument("--since", type=_since, help="only runs started since: 1h, 2d, ISO, Unix")
    runs.add_argument(
        "--language",
        choices=("python", "perl", "qube", "mail"),
        help="only runs in this language",
    )
    runs.add_argument(
        "--shadow",
        action="store_true",
        help="only shadow runs, each with the qb actions it would have taken",
    )
    how_many = runs.add_mutually_exclusive_group()
    how_many.add_argument(
        "--limit",
        type=whole_number(1, MAX_LIST),
        help=f"at most this many (default {DEFAULT_RUNS}, max {MAX_LIST}); when older runs "
        "match, stderr says how to list the next page",
    )
    how_many.add_argument(
        "--all", action="store_true", help=f"every run that matches, {MAX_LIST} per call"
    )
    runs.add_argument(
        "--page-token",
        metavar="TOKEN",
        help="list the page after an earlier listing (the token it printed; same filters)",
    )
    runs.add_argument("--json", action="store_true", help="one JSON object per run")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = runs.add_subparsers(
        dest="runs_command", parser_class=_ShowParser
    )
    show = sub.add_parser(
        "show",
        parents=[connection_options(suppress=True)],
        help="one run with its captured output",
    )
    show.add_argument(
        "invocation_id",
        metavar="ID",
        nargs="?",  # required: _ShowParser says so, once it has looked for one with a '-'
        help="the invocation id, or a unique prefix (4+ chars); one that is also an option's"
        " name goes after '--'",
    )
    show.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,  # `runs --json show ID` keeps the one given before
        help="the whole run as one JSON object, its output exactly as the callback wrote it",
    )
    runs.set_defaults(handler=rpc_command(_runs), runs_command=None)


class _ShowParser(Parser):
    """``runs show``'s parser: an ID that starts with '-' is the ID, not an unknown option.

    Execute takes any printable ASCII id, ``-x1`` too, which argparse alone takes for an
    option it does not know and then reports the ID missing (probe 129). The one argument
    argparse left unknown is the ID; one that names an option (``--timeout``) must
    follow ``--``.
    """

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; called as below
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, unknown = super().parse_known_args(args, namespace)
        if parsed.invocation_id is None:
            dashed = [arg for arg in unknown if arg.startswith("-")]
            if len(dashed) != 1:
                self.error("the following arguments are required: ID")
            unknown.remove(dashed[0])
            (action,) = [a for a in self._actions if a.dest == "invocation_id"]
            parsed.invocation_id = self._get_value(action, dashed[0])  # its UTF-8 check too
        return parsed, unknown


# -- cbexec run -------------------------------------------------------------------------


def _load_job(path: Path) -> dict[str, Any]:
    try:
        job = json.loads(path.read_text(encoding="utf-8"))  # JSON is UTF-8 (RFC 8259)
    except OSError as err:
        raise ConfigError(f"--job: cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"--job: {path} is not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"--job: {path} is not JSON: {err}") from err
    if not isinstance(job, dict):
        raise ConfigError(f"--job: {path} must hold one job dict (a JSON object)")
    return job


def _callback_source(args: argparse.Namespace) -> tuple[str, str]:
    """(language, code) from FILE or --code, the language from --lang or the file's extension."""
    if (args.file is None) == (args.code is None):
        raise ConfigError("give the callback as FILE or with --code (exactly one)")
    language = args.lang
    if args.file is not None:
        language = language or _EXTENSIONS.get(args.file.suffix.lower())
        # A callback's code is sent as UTF-8; a byte order mark at its start (a Windows
        # editor's) is dropped, in every language, as callbacks.conf's loader drops it:
        # Python's compile() of a str refuses it and perl takes it for code.
        try:
            code = args.file.read_text(encoding="utf-8-sig")
        except OSError as err:
            raise ConfigError(f"FILE: cannot read {args.file}: {err.strerror or err}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"FILE: {args.file} is not UTF-8 text: {err}") from err
    else:
        code = args.code
    if not language:
        raise ConfigError("--lang is required (python, perl or qube)")
    return language, code


def _throwaway_settings(data_dir: Path) -> Settings:
    """The ``--embedded`` executor's settings: loopback, any port, cold children.

    As root its sandbox uids are the first range no running executor holds, from
    ``$CBEXEC_SANDBOX_UID_BASE`` (or the default) on: a service on this host keeps its own.
    """
    from executor import config_sources
    from executor.sandbox.identity import UidClaim
    from executor.sandbox.process import SandboxRunner

    settings = Settings(bind="127.0.0.1:0", data_dir=data_dir, launcher="cold")
    if os.geteuid() != 0:
        return settings
    first = config_sources.from_env(settings, os.environ).sandbox_uid_base
    cells = SandboxRunner.cells(settings.max_concurrent)
    return settings.replace(sandbox_uid_base=UidClaim.free_first(first, cells))


async def _run_one(args: argparse.Namespace, out: TextIO) -> int:
    try:
        event = parse_event(args.event) if args.event else None
        event, args.work, args.subjob = item_agreed(event, args.work or "", args.subjob)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    language, code = _callback_source(args)
    job = _load_job(args.job)
    if not args.embedded:
        async with connect(args) as client:
            return await _execute(client, args, language, code, job, event, out)
    from executor import server  # the server's imports are heavy; only --embedded needs them

    with tempfile.TemporaryDirectory(prefix="cbexec-run-") as scratch:
        data_dir = args.data_dir or Path(scratch) / "data"
        settings = _throwaway_settings(data_dir)
        if args.data_dir is None:
            # The throwaway data dir goes with the run; mail (whose path the run prints)
            # must outlive it to be read.
            mail = dataclasses.replace(settings.mail, directory=embedded_mail_dir())
            settings = settings.replace(mail=mail)
        running = await server.start(settings)
        try:
            if running.reference is None:  # never: the settings above embed the supervisor
                raise ConfigError("--embedded: the executor started without its supervisor")
            from executor.triggers.parsed import check_trigger
            from executor.triggers.registration import check_language
            from supervisor_client.reference.errors import SubmitError

            try:
                # As jobinfo gave it (an ended job's frames, its status and id), not as a
                # submission: that would refuse ended frames and give a new id and status.
                # Malformed input is refused as the farm's SubmitJobs refuses it: a trigger
                # RegisterJob would refuse is an error here, not a callback silently dropped.
                job = running.reference.hold_as_given(
                    job, check_trigger=check_trigger, check_language=check_language
                )
            except SubmitError as err:
                raise ConfigError(f"--job: {err}") from err
            print(
                f"embedded executor on port {running.port}; job {job['id']} held as given "
                f"({job['status']})",
                file=out,
            )
            async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
                return await _execute(client, args, language, code, job, event, out)
        finally:
            await running.stop()


async def _execute(
    client: ExecutorClient,
    args: argparse.Namespace,
    language: str,
    code: str,
    job: Mapping[str, Any],
    event: Mapping[str, str] | None,
    out: TextIO,
) -> int:
    limits = {"wall_seconds": args.wall_seconds} if args.wall_seconds else None
    try:
        request = build_execute_request(
            language=language,
            code=code,
            job=job,
            event=event,
            work_name=args.work or "",
            subjob_id=args.subjob,
            owner=args.owner or "",
            limits=limits,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--job: {err}") from err
    request.policy = args.policy or ""
    response = await client.execute(request, timeout=args.timeout)
    print(f"invocation: {response.invocation_id}", file=out)
    print(visible(format_result(response)), file=out)
    if not args.embedded and unknown_job(response, job.get("id")):
        print(
            f"hint: the supervisor behind {args.address} does not know job {job.get('id')}: "
            "try the callback with --embedded (a throwaway executor and supervisor that "
            "get the job file first), or submit the job to the farm with "
            "`cbexec farm submit JOB.json` and run it against its new id",
            file=sys.stderr,
        )
    return EXIT_OK if outcome_name(response.outcome) == "SUCCEEDED" else EXIT_NOT_SUCCEEDED


def unknown_job(response: Any, job_id: Any) -> bool:
    """Whether a qb call of the run found no job ``job_id`` at the supervisor.

    A call refused with NoSuchJob, or a jobinfo that read no job (Qube's client answers
    an unknown id with ``[]``). Not any unknown job: a callback asking about another job
    that does not exist is the callback's business, not a sign that the run's own job
    is unknown there.
    """
    own = re.compile(rf"\bno job {re.escape(str(job_id))}\b")
    refused = [
        a.message
        for a in response.actions
        if (not a.ok and a.message.startswith("NoSuchJob")) or (a.ok and a.verb == "jobinfo")
    ]
    failure = response.failure if response.HasField("failure") else None
    if failure is not None and failure.exception_type == "NoSuchJob":
        refused.append(failure.message)
    return any(own.search(message) for message in refused)


def add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        parents=[connection_options()],
        help="run one callback now and print its outcome, actions and output",
    )
    run.add_argument("file", nargs="?", type=Path, metavar="FILE", help="the callback's code")
    run.add_argument("--code", help="the code inline (a qube code string, a Python one-liner)")
    run.add_argument("--lang", choices=("python", "perl", "qube"), help="default: from FILE")
    run.add_argument(
        "--job",
        type=Path,
        required=True,
        metavar="JOB.json",
        help="the job dict the callback runs in (jobinfo output)",
    )
    run.add_argument("--event", help="the triggering event, e.g. complete-job-self")
    run.add_argument("--work", help="the triggering work item's name")
    run.add_argument(
        "--subjob",
        type=whole_number(*SUBJOB_IDS),
        default=-1,
        help="the triggering instance (default -1: none)",
    )
    run.add_argument(
        "--policy",
        help="the sandbox policy to ask for (one whose users list the owner; default: "
        "the owner's, else job)",
    )
    run.add_argument("--owner", help="the Qube user the callback acts as (default: job owner)")
    run.add_argument(
        "--wall-seconds",
        type=_wall_seconds,
        help="wall-time limit for this run, more than 0 (default: the policy's, 30 s unless "
        "configured; above the executor's cap is refused)",
    )
    run.add_argument(
        "--embedded",
        action="store_true",
        help="start a throwaway executor + supervisor in this process",
    )
    run.add_argument("--data-dir", type=Path, help="with --embedded: keep its data here")
    run.set_defaults(handler=rpc_command(_run_one))


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``runs`` and ``run`` on the cbexec command."""
    add_runs_parser(commands)
    add_run_parser(commands)
