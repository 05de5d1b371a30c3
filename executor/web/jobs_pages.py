"""The jobs page: every registered job with its callbacks, their latches, count/maximum, and what they wait for.

Each callback's trigger is shown atom by atom, latched or not, with what it still
waits for in words (``explain.Explainer``, the page's one plug-in point). One callback
per frame is one row with a strip of frames (``frame_strip``), so a job with thousands
of frames stays one screen: a ``{work}`` callback with its work items (each atom
latched in how many of them; its count in all, its maximum per item), and a job's
callbacks that differ only in their work item (the same trigger for work item 1, 2,
3, ...: the seed examples' one callback per frame) grouped into one row, named by their
first and last triggers.

The page is bounded, as the run page is, because an open tab fetches its live part again
every 2 s: a strip draws at most ``frame_strip.MAX_STRIP_CELLS`` cells (a job of 100,000
frames was a 9.9 MB page); a job shows at most ``MAX_CALLBACK_ROWS`` rows, and no more
once its rows take ``JOB_BUDGET_BYTES``; a page lists at most ``JOBS_PER_PAGE`` jobs, and
no more once it takes ``PAGE_BUDGET_BYTES`` (the jobs after go to the next page, which
"Older jobs" leads to). What is left out is said on the page, with the command that
shows it all (``cbexec triggers why``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from executor import triggers
from executor.plurals import counted, counted_are
from executor.triggers.nodes import Atom, EventType, Expr, render
from executor.web.explain import Explainer, Explanation, JobExplanations
from executor.web.frame_strip import Frame, StripDrawn, draw_strip, in_agenda_order, tally
from executor.web.html import Html, esc, join, tag
from executor.web.layout import filter_notice, live, notice
from executor.web.source import parse_id

JOBS_PER_PAGE: Final = 20
# A job's rows: at most this many, and none more once they take this many bytes (a
# trigger may be 64 KiB, and a row shows it, its atoms and what it waits for).
MAX_CALLBACK_ROWS: Final = 50
JOB_BUDGET_BYTES: Final = 256 << 10
# No further job on a page once it takes this many bytes: a page is at most this, one
# job more (JOB_BUDGET_BYTES and a row: up to 600 KB for a 64 KiB trigger of many atoms)
# and the frame around it, under 1.5 MiB.
PAGE_BUDGET_BYTES: Final = 512 << 10
# Callbacks differing only in their work item are drawn as one row from this many on.
GROUP_FROM: Final = 3
# A trigger longer than this is never a frame group's (one frame's trigger is a line).
MAX_FRAME_SHAPE_BYTES: Final = 4 << 10
FRAME: Final = "{frame}"


@dataclass(frozen=True, slots=True)
class JobsQuery:
    """Which jobs: one (``job``), or a page below ``before`` (0: the newest)."""

    job_id: int = 0
    before: int = 0

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> tuple[JobsQuery, str]:
        """The query, and what was wrong with it ("" when nothing: a bad value is left out).

        As the runs page does: the page still answers, and says which value it ignored.
        """
        problems = []

        def number(name: str) -> int:
            value = query.get(name, "").strip()
            if not value:
                return 0
            try:
                return parse_id(value)
            except ValueError as err:
                problems.append(f"{name} {err}")
                return 0

        parsed = cls(number("job"), number("before"))
        return parsed, "; ".join(problems)

    def url(self, part: str = "") -> str:
        params = [f"job={self.job_id}"] if self.job_id else []
        params += [f"before={self.before}"] if self.before else []
        params += [f"part={part}"] if part else []
        return "/jobs" + ("?" + "&".join(params) if params else "")


def jobs_page(source: Any, query: JobsQuery, explain: Explainer, problem: str = "") -> Html:
    """The live list of jobs (its content is ``jobs_body``), under a notice of ``problem``."""
    form = tag(
        "form",
        tag("label", "Job", tag("input", name="job", value=query.job_id or "", size=8)),
        tag("button", "Show", type="submit"),
        tag("a", "all jobs", href="/jobs", class_="clear"),
        method="get",
        action="/jobs",
        class_="filters",
    )
    return join(
        [
            filter_notice(problem),
            form,
            live(query.url("body"), jobs_body(source, query, explain), id="jobs"),
        ]
    )


def jobs_body(source: Any, query: JobsQuery, explain: Explainer) -> Html:
    """The jobs themselves (what the live region refreshes)."""
    answer = source.list_jobs(job_id=query.job_id, limit=JOBS_PER_PAGE, before=query.before)
    if not answer.jobs:
        text = (
            f"Job {query.job_id} is not registered with the trigger engine."
            if query.job_id
            else "No job is registered with the trigger engine (RegisterJob)."
        )
        return notice(text)
    parts = [
        tag("p", f"{_jobs_registered(answer.total)}; newest first.", class_="hint")
        if not query.job_id
        else ""
    ]
    size = 0
    shown = 0
    for job in answer.jobs:
        if size >= PAGE_BUDGET_BYTES:
            break
        rendered = _job(job, explain(job))
        parts.append(rendered)
        size += len(rendered)
        shown += 1
    if query.job_id:
        return join(parts)
    if shown < len(answer.jobs):
        # The jobs past the budget lead the next page, where the budget starts again.
        parts.append(
            tag(
                "p",
                f"{len(answer.jobs) - shown} more jobs of this page are on the next one: "
                f"this page holds jobs up to {PAGE_BUDGET_BYTES >> 10} KiB.",
                class_="hint",
            )
        )
    if shown < len(answer.jobs) or len(answer.jobs) == JOBS_PER_PAGE:
        older = JobsQuery(before=answer.jobs[shown - 1].id).url()
        parts.append(tag("p", tag("a", "Older jobs →", href=older), class_="pager"))
    return join(parts)


def _job(job: Any, explanations: JobExplanations) -> Html:
    facts = [
        f"pgrp {job.pgrp}",
        f"label {job.label}" if job.label else "",
        f"user {job.user}" if job.user else "",
        f"parent {job.pid}" if job.pid else "",
    ]
    title = tag(
        "h2",
        tag("a", f"Job {job.id}", href=f"/jobs?job={job.id}"),
        f" {job.name}" if job.name else "",
        tag("span", " · ".join(f for f in facts if f), class_="hint"),
        " ",
        tag("a", "runs", href=f"/runs?job={job.id}", class_="small"),
    )
    # As `triggers why` says them, under the job's title: universal lines it does not hold.
    notes = [tag("p", note, class_="hint job-note") for note in explanations.notes]
    if not job.callbacks:
        return tag(
            "section",
            title,
            *notes,
            tag("p", "No callbacks.", class_="hint"),
            class_="job",
            id=f"job-{job.id}",
        )
    rows: list[Html] = []
    size = 0
    items = _grouped(list(job.callbacks))
    for item in items:
        if len(rows) == MAX_CALLBACK_ROWS or size >= JOB_BUDGET_BYTES:
            break
        if isinstance(item, _FrameGroup):
            row = _group_row(job.id, item, explanations)
        else:
            row = _callback_row(job.id, item, explanations.get(item.id))
        rows.append(row)
        size += len(row)
    head = tag(
        "tr",
        *(tag("th", name) for name in ("#", "Trigger", "Latches", "Fired", "Waiting for", "Lang")),
    )
    table = tag("table", tag("thead", head), tag("tbody", *rows), class_="callbacks")
    left_out = _callbacks_in(items[len(rows) :])
    more = (
        tag(
            "p",
            f"{counted_are(left_out, 'more callback', 'more callbacks')} not shown "
            "(a job shows at most "
            f"{MAX_CALLBACK_ROWS} rows, up to {JOB_BUDGET_BYTES >> 10} KiB): "
            f"cbexec triggers why {job.id} lists them all.",
            class_="hint more-callbacks",
        )
        if left_out
        else ""
    )
    return tag("section", title, *notes, table, more, class_="job", id=f"job-{job.id}")


def _callbacks_in(items: list[Any]) -> int:
    return sum(len(item.members) if isinstance(item, _FrameGroup) else 1 for item in items)


def _callback_row(job_id: int, callback: Any, explanation: Explanation | None) -> Html:
    origin = (
        tag("span", "universal", class_="tag", title=callback.source) if callback.universal else ""
    )
    latches: object = "-"
    waiting: object = ""
    if explanation is not None:
        if callback.per_work_item:
            latches = _work_latches(explanation, callback.maximum, f"{job_id}:{callback.id}")
        else:
            latches = join(
                _latch(atom.text, atom.words, ALL if atom.latched else NONE)
                for atom in explanation.atoms
            )
        latches = join([latches, _atoms_left_out(explanation, f"{job_id}:{callback.id}")])
        if explanation.spent:
            waiting = tag("span", "nothing: it reached its maximum", class_="hint")
        else:
            waiting = explanation.waiting_for
        if explanation.journal:
            waiting = join([waiting, tag("ul", *(tag("li", line) for line in explanation.journal))])
    return tag(
        "tr",
        tag("td", callback.id, origin),
        tag("td", callback.canonical_triggers or callback.triggers, class_="mono"),
        tag("td", latches, class_="latches"),
        tag("td", _count(callback), class_="num"),
        tag("td", waiting, class_="waiting"),
        tag("td", callback.language),
        data_callback=callback.id,
    )


def _atoms_left_out(explanation: Explanation, why: str) -> Html:
    """What a row cut at MAX_ATOMS_SHOWN atoms left out, and the command that shows it ("" if none)."""
    if not explanation.atoms_left_out:
        return Html("")
    return tag(
        "p",
        f"{counted(explanation.atoms_left_out, 'more atom', 'more atoms')} not shown (a row shows "
        f"{len(explanation.atoms)}): cbexec triggers why {why}",
        class_="hint atoms-left-out",
    )


# How much of a latch has happened: for a {work} callback, in some of its items only.
ALL, SOME, NONE = "all", "some", "none"
_LATCH_MARKS: Final = {ALL: ("✓ ", "latch on"), SOME: ("◐ ", "latch some"), NONE: ("○ ", "latch")}


def _latch(text: str, words: str, held: str, items: str = "") -> Html:
    mark, css = _LATCH_MARKS[held]
    said = "happened" if held == ALL else "happened for some items" if held == SOME else "waiting"
    shown = [mark, text] + ([tag("span", f" {items}", class_="count")] if items else [])
    return tag("span", *shown, class_=css, title=f"{said}: {words}")


def _work_latches(explanation: Explanation, maximum: int, why: str) -> Html:
    """A {work} callback's atoms, each latched in how many of its items, then its strip."""
    if not explanation.items:  # ExplainCallbacks did not say (the latches alone hold no item)
        atoms = [
            tag("span", atom.text, class_="latch", title=atom.words) for atom in explanation.atoms
        ]
        note = tag("span", "each work item latches on its own: cbexec triggers why", class_="hint")
        return join([*atoms, note])
    total = sum(len(items.names) for items in explanation.items)
    latched = [0] * len(explanation.atoms)
    for items in explanation.items:
        for slot, on in enumerate(items.latches[: len(latched)]):
            latched[slot] += len(items.names) if on else 0
    atoms = [
        _latch(
            atom.text,
            atom.words,
            NONE if not held else ALL if held == total else SOME,
            f"{held} of {total}",
        )
        for atom, held in zip(explanation.atoms, latched, strict=True)
    ]
    frames = _work_frames(explanation, maximum)
    drawn = draw_strip(frames)
    return join(
        [
            *atoms,
            drawn.html,
            tag("p", f"{_items(len(frames))}: {tally(frames)}", class_="hint tally"),
            _strip_summary(drawn, f"cbexec triggers why {why} --work NAME"),
        ]
    )


def _strip_summary(drawn: StripDrawn, command: str) -> Html:
    """How a long strip was drawn, and the command for each frame's own state ("" for a short one)."""
    if not drawn.summary:
        return Html("")
    return tag("p", f"{drawn.summary}; each frame in full: {command}", class_="hint strip-summary")


def _work_frames(explanation: Explanation, maximum: int) -> list[Frame]:
    by_name = {
        name: Frame(name, items.count, maximum, any(items.latches), items.waiting)
        for items in explanation.items
        for name in items.names
    }
    return [by_name[name] for name in in_agenda_order(by_name)]


def _items(count: int) -> str:
    return "1 work item" if count == 1 else f"{count} work items"


def _count(callback: Any) -> Html:
    if callback.per_work_item:
        # Its count is of all its items; its maximum is each item's: "3 / 1" read as overrun.
        limit = f"at most {callback.maximum} per item" if callback.maximum else "no maximum"
        return join([f"{callback.count} in all", tag("br"), tag("span", limit, class_="hint")])
    return esc(f"{callback.count} / {callback.maximum or '∞'}")


# -- one callback per frame, drawn as one row -------------------------------------------


@dataclass(frozen=True, slots=True)
class _FrameGroup:
    shape: str
    language: str
    # (frame name, callback), in the job's callback order.
    members: tuple[tuple[str, Any], ...]


@lru_cache(maxsize=4096)
def frame_shape(text: str) -> tuple[str, str] | None:
    """(the trigger with its one work item as ``{frame}``, that item), or None.

    Only a trigger whose ``work`` atoms all name the same item (not ``*``) has a shape,
    and none longer than ``MAX_FRAME_SHAPE_BYTES``, which is not parsed: the page groups
    every callback of a job, and 150 triggers of 64 KiB took 6 s to parse.
    """
    if len(text) > MAX_FRAME_SHAPE_BYTES:
        return None
    try:
        expr = triggers.parse(text)
    except triggers.TriggerSyntaxError:
        return None
    items = {atom.extra for atom in triggers.atoms(expr) if atom.type is EventType.WORK}
    if len(items) != 1 or "*" in items:
        return None
    (item,) = items
    return render(_with_frame(expr)), item


def _with_frame(expr: Expr) -> Expr:
    """``expr`` with every work atom's item replaced by ``{frame}``."""
    if isinstance(expr, Atom):
        return dataclasses.replace(expr, extra=FRAME) if expr.type is EventType.WORK else expr
    return type(expr)(tuple(_with_frame(term) for term in expr.terms))


def _grouped(callbacks: list[Any]) -> list[Any]:
    """The callbacks, with each run of per-frame ones (GROUP_FROM or more) as one group."""
    shapes: dict[tuple[str, str, bool], list[tuple[str, Any]]] = {}
    for callback in callbacks:
        shape = frame_shape(callback.canonical_triggers or callback.triggers)
        if shape is not None:
            key = (shape[0], callback.language, callback.universal)
            shapes.setdefault(key, []).append((shape[1], callback))
    grouped = {k: v for k, v in shapes.items() if len(v) >= GROUP_FROM}
    members = {id(cb) for entries in grouped.values() for _, cb in entries}
    items: list[Any] = []
    placed: set[tuple[str, str, bool]] = set()
    for callback in callbacks:
        if id(callback) not in members:
            items.append(callback)
            continue
        shape = frame_shape(callback.canonical_triggers or callback.triggers)
        if shape is None:  # members all have a shape: grouped above by it
            items.append(callback)
            continue
        key = (shape[0], callback.language, callback.universal)
        if key not in placed:
            placed.add(key)
            items.append(_FrameGroup(key[0], key[1], tuple(grouped[key])))
    return items


def _group_row(job_id: int, group: _FrameGroup, explanations: Mapping[int, Explanation]) -> Html:
    frames = []
    for frame, callback in group.members:
        explanation = explanations.get(callback.id)
        frames.append(
            Frame(
                frame,
                callback.count,
                callback.maximum,
                any(callback.latches),
                explanation.waiting_for if explanation is not None else "",
                callback_id=callback.id,
            )
        )
    first, last = group.members[0][1], group.members[-1][1]
    # Named by its first and last triggers, as written: "{frame}" is no trigger's word.
    trigger = join(
        [
            tag("span", first.canonical_triggers or first.triggers, class_="mono"),
            " … ",
            tag("span", last.canonical_triggers or last.triggers, class_="mono"),
            tag("br"),
            tag("span", "the same trigger for each frame", class_="hint"),
        ]
    )
    drawn = draw_strip(frames)
    return tag(
        "tr",
        tag("td", f"{first.id}-{last.id}"),
        tag("td", trigger),
        tag(
            "td",
            drawn.html,
            _strip_summary(drawn, f"cbexec triggers why {job_id}:CALLBACK"),
            colspan=2,
        ),
        tag(
            "td",
            f"{len(frames)} callbacks, one per frame ({frames[0].name} … {frames[-1].name}): "
            + tally(frames),
        ),
        tag("td", group.language),
        class_="frame-group",
    )


def _jobs_registered(total: int) -> str:
    return "1 job registered" if total == 1 else f"{total} jobs registered"
