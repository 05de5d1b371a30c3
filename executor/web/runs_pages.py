"""The runs pages: the filterable, live table of runs, and one run with its output and failure.

Everything a callback produced (output, failure, traceback, action messages) and
everything a scheduler sent (job names, triggers, work names) is text to these pages:
``html.esc`` turns it into text, whatever it holds.

A run's page shows each output stream's first and last ``STREAM_EDGE_BYTES``, with a
note of how much lies between and a link to the whole stream as text/plain
(``stream_text``). A stream may be 16 MiB (``output_bytes``' cap): inlined whole, it made
a 34 MB page that Chromium parsed so slowly that the server dropped the stalled
connection and the page ended mid-stream, with nothing to say so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import quote, urlencode

from executor.cli.runs import SINCE_UNITS, parse_since
from executor.web.html import Html, join, local_time, seconds, size, tag, text_block
from executor.web.layout import badge, definitions, filter_notice, live, notice
from executor.web.source import SourceRefused, parse_id
from supervisor_client.client import OUTCOMES, outcome_name

LANGUAGES: Final = ("python", "perl", "qube", "mail")
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 1000
TRIGGER_CHARS: Final = 48
STREAM_EDGE_BYTES: Final = 64 << 10
STREAMS: Final = ("stdout", "stderr")


@dataclass(frozen=True, slots=True)
class RunFilters:
    """The runs table's filters, as the query string gives them."""

    job_id: int = 0
    outcome: str = ""
    language: str = ""
    since_text: str = ""
    since: float = 0.0
    limit: int = DEFAULT_LIMIT
    # An older page's: the ListRuns next_page_token of the page before it ("" for the newest).
    page_token: str = ""
    # The limit asked for, as shown, when it was above MAX_LIMIT and ``limit`` is MAX_LIMIT:
    # the page says so (not a filter of its own: the links carry the limit applied).
    limit_asked: str = field(default="", compare=False)

    @classmethod
    def parse(cls, query: Mapping[str, str], now: float) -> tuple[RunFilters, str]:
        """The filters, and what was wrong with the query ("" when nothing: a bad one is ignored)."""
        filters, problems = cls(), []
        job = query.get("job", "").strip()
        if job:
            try:
                filters = replace(filters, job_id=parse_id(job))
            except ValueError as err:
                problems.append(f"job {err}")
        outcome = query.get("outcome", "").strip().upper()
        if outcome:
            if outcome in OUTCOMES:
                filters = replace(filters, outcome=outcome)
            else:
                problems.append(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        language = query.get("language", "").strip().lower()
        if language:
            if language in LANGUAGES:
                filters = replace(filters, language=language)
            else:
                problems.append(f"language {language!r} is not one of {', '.join(LANGUAGES)}")
        since = query.get("since", "").strip()
        if since:
            try:
                filters = replace(filters, since_text=since, since=parse_since(since, now))
            except ValueError as err:
                problems.append(str(err).replace("--since", "since"))
        limit = query.get("limit", "").strip()
        if limit.isascii() and limit.isdigit() and limit.strip("0"):
            # More digits than MAX_LIMIT has is more (and int() refuses past 4300 digits).
            fits = len(limit.lstrip("0")) <= len(str(MAX_LIMIT))
            filters = replace(filters, limit=min(int(limit), MAX_LIMIT) if fits else MAX_LIMIT)
            if not fits or int(limit) > MAX_LIMIT:  # said, or an operator takes it for all
                filters = replace(filters, limit_asked=limit if fits else f"{limit[:12]}...")
        elif limit:
            problems.append(f"limit {limit!r} is not a whole number from 1 up")
        # Opaque here: the executor checks it (``list_runs`` leaves out one it refuses).
        filters = replace(filters, page_token=query.get("page_token", "").strip())
        return filters, "; ".join(problems)

    def query(self, **extra: str) -> str:
        """The query string that gives these filters back (plus ``extra``)."""
        values = {
            "job": str(self.job_id) if self.job_id else "",
            "outcome": self.outcome,
            "language": self.language,
            "since": self.since_text,
            "limit": str(self.limit) if self.limit != DEFAULT_LIMIT else "",
            "page_token": self.page_token,
            **extra,
        }
        return urlencode({k: v for k, v in values.items() if v})

    def older(self, page_token: str) -> RunFilters:
        """These filters for the page after this one, which ``page_token`` leads to.

        A relative start ("1h") is fixed to the time it meant for this page: read again
        later it would be another filter, which the executor refuses with the token.
        """
        since_text = self.since_text
        if since_text and since_text[-1] in SINCE_UNITS and self.since > 0:
            since_text = repr(self.since)  # Unix seconds, exactly (parse_since reads it back)
        return replace(self, since_text=since_text, page_token=page_token)


def runs_page(source: Any, filters: RunFilters, problem: str) -> Html:
    """The filter form and the live table (its body is ``runs_rows``)."""
    answer, filters, refused = list_runs(source, filters)
    problem = "; ".join(p for p in (problem, refused) if p)
    form = tag(
        "form",
        tag("label", "Job", tag("input", name="job", value=filters.job_id or "", size=8)),
        tag("label", "Outcome", _select("outcome", ("", *OUTCOMES), filters.outcome)),
        tag("label", "Language", _select("language", ("", *LANGUAGES), filters.language)),
        tag(
            "label",
            "Since",
            tag(
                "input", name="since", value=filters.since_text, size=10, placeholder="1h, 2d, ISO"
            ),
        ),
        tag("button", "Filter", type="submit"),
        tag("a", "clear", href="/runs", class_="clear"),
        method="get",
        action="/runs",
        class_="filters",
    )
    head = tag(
        "thead",
        tag(
            "tr",
            *(
                tag("th", name)
                for name in (
                    "Started",
                    "Invocation",
                    "Job",
                    "Callback",
                    "Trigger",
                    "Language",
                    "Outcome",
                    "Wall",
                    "Queue",
                    "CPU",
                    "Peak memory",
                )
            ),
        ),
    )
    body = live(
        f"/runs?{filters.query(part='rows')}",
        _rows(answer, filters),
        element="tbody",
        id="runs-body",
    )
    return join(
        [
            filter_notice(problem),
            # Applied, unlike a value left out: the page says what it applied instead.
            notice(
                f"limit {filters.limit_asked} cut to {MAX_LIMIT}: a page lists {MAX_LIMIT} "
                "runs at most; its Older runs link leads to the next.",
                "warn",
            )
            if filters.limit_asked
            else "",
            form,
            tag("table", head, body, class_="runs", id="runs"),
            tag("p", "Newest first; the table updates by itself.", class_="hint"),
        ]
    )


def runs_rows(source: Any, filters: RunFilters) -> Html:
    """The table's rows (what the live region refreshes)."""
    answer, filters, _ = list_runs(source, filters)
    return _rows(answer, filters)


def list_runs(source: Any, filters: RunFilters) -> tuple[Any, RunFilters, str]:
    """ListRuns for the page: its answer, the filters it answers, why the page token went.

    A page token the executor refuses (mistyped, or kept with other filters) is left out,
    as a bad filter value is: the newest runs, and a notice saying why ("" when kept).
    """

    def ask(filters: RunFilters) -> Any:
        return source.list_runs(
            job_id=filters.job_id,
            outcome=filters.outcome,
            language=filters.language,
            since=filters.since,
            limit=filters.limit,
            page_token=filters.page_token,
        )

    try:
        return ask(filters), filters, ""
    except SourceRefused as err:
        if not filters.page_token:
            raise
        newest = replace(filters, page_token="")
        return ask(newest), newest, f"{err}; the newest runs are shown"


def _rows(answer: Any, filters: RunFilters) -> Html:
    """The runs, then the links to the next page and back to the newest.

    The links are a row of the live region: the newest page's next page moves as new
    runs push its last row down, and its link must move with the rows.
    """
    links = []
    if filters.page_token:
        newest = replace(filters, page_token="")
        links.append(tag("a", "← Newest runs", href=f"/runs?{newest.query()}", id="newest-runs"))
    if answer.next_page_token:
        older = filters.older(answer.next_page_token)
        links.append(tag("a", "Older runs →", href=f"/runs?{older.query()}", id="older-runs"))
    pager = tag("tr", tag("td", join(links, "  "), colspan=11), class_="pager") if links else ""
    if not answer.runs:
        empty = "No older runs match." if filters.page_token else "No runs match."
        return join([tag("tr", tag("td", empty, colspan=11, class_="empty")), pager])
    return join([*(_row(run) for run in answer.runs), pager])


def run_link(invocation_id: str, query: str = "") -> str:
    """The address of a run's page (``query`` without its ``?``, e.g. ``stream=``).

    ``/runs/ID``, except for the ids ``.`` and ``..`` (the proto allows them): a browser
    resolves ``/runs/..`` to ``/runs`` before asking, ``%2e%2e`` too, so those go to
    ``/run?id=..``, the same page.
    """
    if invocation_id in (".", ".."):
        return f"/run?id={quote(invocation_id, safe='')}" + (f"&{query}" if query else "")
    return f"/runs/{quote(invocation_id, safe='')}" + (f"?{query}" if query else "")


def _row(run: Any) -> Html:
    outcome = outcome_name(run.outcome)
    trigger = run.triggers or "-"
    short = trigger if len(trigger) <= TRIGGER_CHARS else trigger[: TRIGGER_CHARS - 1] + "…"
    return tag(
        "tr",
        tag("td", local_time(run.started_at), class_="nowrap"),
        tag(
            "td",
            tag(
                "a",
                run.invocation_id[:8],
                href=run_link(run.invocation_id),
                title=run.invocation_id,
                class_="mono",
            ),
        ),
        tag("td", tag("a", run.job_id, href=f"/jobs?job={run.job_id}")),
        tag("td", run.callback_id or "-"),
        tag("td", short, title=trigger, class_="mono"),
        tag("td", run.language),
        tag("td", badge(outcome)),
        tag("td", seconds(run.usage.wall_seconds), class_="num"),
        tag("td", seconds(run.usage.queue_seconds), class_="num"),
        tag("td", seconds(run.usage.cpu_seconds), class_="num"),
        tag("td", size(run.usage.peak_rss_bytes), class_="num"),
        data_key=run.invocation_id,
        class_=f"outcome-{outcome.lower()}",
    )


def _select(name: str, options: tuple[str, ...], chosen: str) -> Html:
    return tag(
        "select",
        *(
            tag("option", value or "any", value=value, selected=value == chosen)
            for value in options
        ),
        name=name,
    )


def run_page(run: Any) -> Html:
    """One run: what it was, how it ended, what it did and printed."""
    result = run.result
    outcome = outcome_name(run.outcome)
    event = run.event if run.HasField("event") else None
    event_text = (
        "-".join(part for part in (event.name, event.type, event.context, event.extra) if part)
        if event is not None
        else "none (run by hand or by a scheduler's own trigger match)"
    )
    ended = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
    facts = definitions(
        [
            ("Outcome", join([badge(outcome), "  ", ended])),
            ("Invocation", tag("span", run.invocation_id, class_="mono")),
            ("Job", tag("a", run.job_id, href=f"/jobs?job={run.job_id}")),
            ("Callback", run.callback_id or "-"),
            ("Trigger", tag("span", run.triggers or "-", class_="mono")),
            ("Event", tag("span", event_text, class_="mono")),
            ("Work item", run.work_name or "-"),
            ("Language", run.language),
            ("Started", local_time(run.started_at)),
        ]
    )
    usage = definitions(
        [
            ("Wall", seconds(run.usage.wall_seconds)),
            ("CPU", seconds(run.usage.cpu_seconds)),
            ("Peak memory", size(run.usage.peak_rss_bytes)),
            ("Queued", seconds(run.usage.queue_seconds)),
        ]
    )
    parts: list[object] = [tag("div", facts, usage, class_="columns")]
    if run.newer_run_in_progress:  # as `cbexec runs show` says it
        newer = (
            "A newer run of this id is in progress: this record is the previous run's, and"
            " the newer run's replaces it when it ends."
        )
        parts.insert(0, notice(newer, "warn"))
    if result.HasField("failure") and (result.failure.message or result.failure.traceback):
        failure = result.failure
        parts.append(
            tag(
                "section",
                tag("h2", "Failure"),
                tag("p", text_block(failure.message), class_="failure-message", id="failure"),
                tag("p", "Exception: ", tag("code", failure.exception_type))
                if failure.exception_type
                else "",
                tag("pre", text_block(failure.traceback)) if failure.traceback else "",
                class_="failure",
            )
        )
    parts.append(tag("section", tag("h2", "Actions"), _actions(result.actions)))
    link = run_link(run.invocation_id, "stream=")
    parts.append(_stream("Output", result.stdout, result.stdout_truncated, "stdout", link))
    parts.append(_stream("Errors", result.stderr, result.stderr_truncated, "stderr", link))
    return join(parts)


def _actions(actions: Any) -> Html:
    if not actions:
        return tag("p", "No qb calls.", class_="hint")
    rows = [
        tag(
            "tr",
            tag("td", action.verb, class_="mono"),
            tag("td", action.target, class_="mono"),
            tag("td", "ok" if action.ok else "refused", class_="ok" if action.ok else "bad"),
            tag("td", action.message),
        )
        for action in actions
    ]
    head = tag("tr", *(tag("th", name) for name in ("qb call", "Target", "Result", "Message")))
    return tag("table", tag("thead", head), tag("tbody", *rows), class_="actions")


@dataclass(frozen=True, slots=True)
class Excerpt:
    """A stream's start and end as a page shows them, and how many bytes lie between."""

    head: str
    tail: str = ""
    hidden_bytes: int = 0


def excerpt(text: str, edge_bytes: int = STREAM_EDGE_BYTES) -> Excerpt:
    """``text`` whole when it is at most twice ``edge_bytes`` of UTF-8, else its two ends.

    Each end is cut on a character boundary, so it may be a few bytes short of ``edge_bytes``.
    """
    if len(text) <= edge_bytes // 2:  # 4 bytes a character at most: fits without counting
        return Excerpt(text)
    data = text.encode()
    if len(data) <= 2 * edge_bytes:
        return Excerpt(text)
    head = data[:edge_bytes].decode("utf-8", "ignore")
    tail = data[-edge_bytes:].decode("utf-8", "ignore")
    return Excerpt(head, tail, len(data) - len(head.encode()) - len(tail.encode()))


def _stream(title: str, text: str, truncated: bool, element_id: str, link: str) -> Html:
    note = tag("span", " (cut at the output_bytes limit)", class_="hint") if truncated else ""
    if not text:
        return tag("section", tag("h2", title, note), tag("p", "(empty)", class_="hint"))
    whole = tag("a", f"{element_id} as plain text", href=link + element_id, class_="small")
    shown = excerpt(text)
    content = [tag("pre", text_block(shown.head), id=element_id)]
    if shown.hidden_bytes:
        content += [
            tag(
                "p",
                f"… {shown.hidden_bytes:,} bytes not shown … ",
                tag("a", f"the whole {element_id}", href=link + element_id),
                class_="notice warn",
                id=f"{element_id}-cut",
            ),
            tag("pre", text_block(shown.tail), id=f"{element_id}-end"),
        ]
    return tag("section", tag("h2", title, note, " ", whole), *content)


def stream_text(run: Any, stream: str) -> str:
    """The whole of one of ``STREAMS`` of a run, as the run wrote it (after UTF-8 repair)."""
    return str(getattr(run.result, stream))


def now() -> float:
    """The clock the runs filters read (``since``)."""
    return time.time()
