"""``cbexec farm submit FILE``: a submission script (.py) or job file (.json, .toml) to the farm.

A ``.py`` file runs here, in the CLI process, as the user's own Qube submission script
would on their workstation: it is their code on their machine, not a callback, so it
is not sandboxed; ``import qb`` gives it ``farm_qb``'s submission API, bound to the
farm. A ``.json`` file holds a job dict, a list of them, or ``{"jobs": [...]}``; a
``.toml`` file a job's keys at the top level, or ``[[jobs]]`` tables. The jobs of one
file are one submission: one process group, all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import runpy
import sys
import tomllib
import traceback
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import grpc

from executor.cli.farm_qb import QB_CALL_NOTE, SubmissionApi
from executor.errors import ConfigError
from executor.visible_text import printable, quoted
from supervisor_client import (
    ClientClosedError,
    ExecutorClient,
    ExecutorRpcError,
    FarmClient,
    RetryableError,
)
from supervisor_client.jobdict import job_to_dict

SUFFIXES = (".py", ".json", ".toml")


class ScriptError(Exception):
    """The submission script raised; the message is ``file:line: Type: message``."""


def _jobs_of(data: Any, path: Path) -> list[dict[str, Any]]:
    """The job dicts a parsed file holds: a list, ``{"jobs": [...]}``, or one job."""
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
    jobs = [data] if isinstance(data, dict) else data
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, dict) for j in jobs):
        raise ConfigError(
            f"FILE: {path} holds no jobs; expected a job, a list of jobs, or a 'jobs' list"
        )
    return jobs


def load_job_file(path: Path) -> list[dict[str, Any]]:
    """The jobs of a .json or .toml file; ConfigError naming the file and the problem."""
    try:
        text = path.read_text(encoding="utf-8")  # JSON and TOML are UTF-8 by their specs
    except OSError as err:
        raise ConfigError(f"FILE: cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"FILE: {path} is not UTF-8 text: {err}") from err
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = path.suffix.lower().lstrip(".").upper()
        raise ConfigError(f"FILE: {path} is not valid {kind}: {err}") from err
    return _jobs_of(data, path)


def _where(err: BaseException, path: Path) -> str:
    """``file:line`` of the innermost frame of the script in ``err``'s traceback."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == str(path)]
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def _qb_call(err: BaseException) -> str:
    """``qb.submit: `` for an error a ``qb`` call raised (farm_qb notes it), else ``""``."""
    calls = QB_CALL_NOTE.format(name="")
    notes = [n for n in getattr(err, "__notes__", ()) if isinstance(n, str)]
    return next((f"{note}: " for note in notes if note.startswith(calls)), "")


@contextlib.contextmanager
def _as_qb(module: Any, argv: Sequence[str]) -> Iterator[None]:
    """``import qb`` gives ``module`` and ``sys.argv`` is the script's, while the block runs."""
    previous, old_argv = sys.modules.get("qb"), sys.argv
    sys.modules["qb"], sys.argv = module, list(argv)
    try:
        yield
    finally:
        sys.argv = old_argv
        if previous is None:
            sys.modules.pop("qb", None)
        else:
            sys.modules["qb"] = previous


async def run_script(
    farm: FarmClient, path: Path, args: Sequence[str], user: str
) -> tuple[list[dict[str, Any]], ScriptError | None]:
    """Run a submission script; the jobs it submitted, and its error if it raised.

    A call the farm refused, uncaught, is the script's error like any other, naming its
    line and the ``qb`` call. An executor that cannot be reached (or a closed client)
    propagates as it is: the command's connection error, as for any other command.
    """
    if not path.is_file():  # noqa: ASYNC240 - one stat before the script runs
        raise ConfigError(f"FILE: {path} does not exist")
    loop = asyncio.get_running_loop()

    def call(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    api = SubmissionApi(farm, call, user)

    def run() -> ScriptError | None:
        with _as_qb(api.module(), [str(path), *args]):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as stop:
                if stop.code in (None, 0):
                    return None
                return ScriptError(f"{path}: exited with {stop.code}")
            except (RetryableError, ClientClosedError):
                raise
            except Exception as err:
                if type(err).__module__.startswith("grpc"):
                    raise
                return ScriptError(
                    f"{_where(err, path)}: {type(err).__name__}: {_qb_call(err)}{err}"
                )
        return None

    problem = await asyncio.to_thread(run)
    return api.submitted, problem


# How long a submission waits for the farm to register its jobs, to print the checks.
REGISTERED_WITHIN_S: Final = 5.0


async def submit_file(
    farm: FarmClient, path: Path, args: Sequence[str], user: str = ""
) -> tuple[list[dict[str, Any]], ScriptError | None]:
    """Submit a script's or a job file's jobs; the stored jobs and a script's error."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"FILE: {path} is not a submission: expected a .py script, a .json or a .toml job file"
        )
    user = user or getpass.getuser()
    if suffix == ".py":
        return await run_script(farm, path, args, user)
    if args:
        raise ConfigError(f"ARGS are passed to a .py script only, not to {path.name}")
    jobs = [{"user": user, **job} for job in load_job_file(path)]
    try:
        response = await farm.submit_jobs(jobs)
    except (TypeError, ValueError) as err:  # a value no Struct holds (a TOML date), named
        raise ConfigError(f"FILE: {path}: {err}") from err
    return [job_to_dict(job, include_callbacks=True) for job in response.jobs], None


def describe_submitted(job: dict[str, Any]) -> str:
    """One line per submitted job, for the person who submitted it."""
    agenda = job.get("agenda") or []
    parts = [str(job["status"])]
    if agenda:
        held = sum(1 for work in agenda if work["status"] == "blocked")
        frames = f"{len(agenda)} frame{'s' if len(agenda) != 1 else ''}"
        parts.append(frames + (f" ({held} blocked)" if held else ""))
    callbacks = job.get("callbacks") or []
    if callbacks:
        parts.append(f"{len(callbacks)} callback{'s' if len(callbacks) != 1 else ''}")
    return (
        f"submitted job {job['id']} {quoted(job['name'])} (label {printable(job['label'])}, "
        f"pgrp {job['pgrp']}): " + ", ".join(parts)
    )


async def registration_warnings(
    client: ExecutorClient, job_ids: Sequence[int], *, wait_s: float = REGISTERED_WITHIN_S
) -> list[str]:
    """What the trigger engine's checks found in the submitted jobs' own callbacks.

    The farm answers once the engine has its jobs; one the engine could not take at once
    is registered again later, so this waits (up to ``wait_s``) until every one is, and
    reads them again after, so a check that a later job of the submission resolved (a
    label it carries) is not reported. Universal callbacks'
    checks are the site admin's business, not the submitter's.
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    explained: dict[int, Any] = {}
    for job_id in job_ids:
        while job_id not in explained:
            try:
                explained[job_id] = await client.explain_callbacks(job_id, journal_limit=1)
            except ExecutorRpcError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    raise
                if asyncio.get_running_loop().time() > deadline:
                    return []  # not registered yet: `cbexec triggers why` tells later
                await asyncio.sleep(0.05)
    lines = []
    for job_id in job_ids:  # read again: a later registration may have resolved a check
        answer = await client.explain_callbacks(job_id, journal_limit=1)
        checks = [(0, check) for check in answer.checks]
        checks += [(cb.callback.id, check) for cb in answer.callbacks for check in cb.checks]
        for callback_id, check in checks:
            if check.resolved or check.universal:
                continue
            where = f"job {job_id}" + (f" callback {callback_id}" if callback_id else "")
            lines.append(
                f"warning: {where}: {check.atom + ': ' if check.atom else ''}{check.message}"
            )
    return lines
