"""scripts/grafana-dashboard.json asks only for metrics a real executor's /metrics has, and for each of them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.service.test_http import fetch, url, web  # noqa: F401 - the fixture
from tests.service.test_runs import FAIL, run_py

pytestmark = pytest.mark.service

DASHBOARD: Final = Path(__file__).resolve().parents[2] / "scripts" / "grafana-dashboard.json"
# PromQL words that are not metric names: aggregation modifiers, set operators, offsets.
KEYWORDS: Final = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    }
)


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(<series selector>, <label name>): only the selector is PromQL.
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            yield found.group(1) if found else query["query"]


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables ($__rate_interval)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word in KEYWORDS:
            continue  # a function, or a keyword
        if match.start() > 0 and text[match.start() - 1].isdigit():
            continue  # an exponent (1e-9)
        names.add(word)
    return names


# A gauge's panel query: one aggregation over the chosen executors' samples of it.
GAUGE_QUERY: Final = re.compile(r'(sum|max|min)\((\w+)\{instance=~"\$instance"\}\)')
AGGREGATIONS: Final[dict[str, Callable[[Iterable[float]], float]]] = {
    "sum": sum,
    "max": max,
    "min": min,
}


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def shown(dashboard: dict[str, Any], gauge: str, values: Iterable[float]) -> float:
    """What the dashboard shows for ``gauge`` when the executors report ``values``."""
    queries = {
        found.group(1)
        for expression in expressions(dashboard)
        if (found := GAUGE_QUERY.fullmatch(expression)) and found.group(2) == gauge
    }
    assert len(queries) == 1, f"{gauge}: panel queries {sorted(queries)}"
    return float(AGGREGATIONS[queries.pop()](values))


async def scrape_after_some_work(web: Any) -> list[Metric]:  # noqa: F811
    """The metric families of a scrape after runs, a failure, a job and an event."""
    await run_py(web, "print('ok')", 1)
    await run_py(web, FAIL, 1)
    await web.client.register_job(
        {"id": 9, "callbacks": [{"triggers": "complete-job-self", "language": "qube", "code": "x"}]}
    )
    await web.client.publish_event(name="complete", type="job", job_id=9, wait=True)
    status, _, scrape = await fetch(url(web, "/metrics"))
    assert status == 200
    return list(text_string_to_metric_families(scrape))


def test_each_replicas_own_gauges_are_added_together() -> None:
    # A replica's mail queue is its own threads', not the shared store's: the panel
    # showed the largest replica's alone (probe 121).
    dashboard = load_dashboard()
    for gauge in (
        "cbexec_slots",
        "cbexec_active_children",
        "cbexec_slots_kept_for_history",
        "cbexec_slots_kept_by_killed_processes",
        "cbexec_queue_depth",
        "cbexec_grpc_connections",
        "cbexec_mail_queued",
        "cbexec_mail_sending",
    ):
        assert shown(dashboard, gauge, [2, 3]) == 5, gauge


def test_the_extractor_finds_metric_names_only() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, language) (rate(x_bucket{a="b(c)"}[$__rate_interval])))'
        " / clamp_min(sum(y), 1e-9) and on (instance) z"
    ) == {"x_bucket", "y", "z"}


async def test_every_dashboard_metric_is_in_a_scrape(web: Any) -> None:  # noqa: F811
    dashboard = load_dashboard()
    families = await scrape_after_some_work(web)
    scraped = {sample.name for family in families for sample in family.samples}

    wanted = {name for expression in expressions(dashboard) for name in metric_names(expression)}

    assert wanted, "the dashboard has queries"
    assert sorted(wanted - scraped) == []
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {
        "${datasource}"
    }


async def test_every_executor_metric_has_a_panel(web: Any) -> None:  # noqa: F811
    dashboard = load_dashboard()
    families = await scrape_after_some_work(web)
    wanted = {name for expression in expressions(dashboard) for name in metric_names(expression)}

    unseen = [
        family.name
        for family in families
        if family.name.startswith("cbexec_")
        and not {sample.name for sample in family.samples} & wanted
    ]

    assert unseen == []
    # No *_created series: the README's table lists every series (probe 121).
    assert not [
        sample.name
        for family in families
        for sample in family.samples
        if sample.name.endswith("_created")
    ]


def the_executor_variable(dashboard: dict[str, Any]) -> dict[str, Any]:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    return dict(variable)


def all_regex(variable: dict[str, Any], values: list[str]) -> str:
    """What ``$instance`` becomes in a query with *All* chosen, as Grafana formats it.

    A custom ``allValue`` is sent as it is; without one, the variable's values, each
    regex-escaped (the Prometheus data source's own escaping), as an alternation.
    """
    if variable.get("allValue"):
        return str(variable["allValue"])
    return "(" + "|".join(re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v) for v in values) + ")"


def test_all_executors_are_the_executors_the_list_shows() -> None:
    # allValue ".*" matched every target Prometheus scrapes, and process_* is exported by
    # most of them: the memory and CPU panel drew Prometheus itself and each exporter (probe 175).
    variable = the_executor_variable(load_dashboard())
    assert variable["includeAll"] and variable["multi"]
    assert variable["query"]["query"] == "label_values(cbexec_build_info, instance)"
    executors = ["render01:9464", "10.0.0.7:9464"]
    chosen = all_regex(variable, executors)
    for executor in executors:
        assert re.fullmatch(chosen, executor), executor
    for other in ("localhost:9090", "render01:9100", "10.0.0.77:9464"):
        assert not re.fullmatch(chosen, other), other


def test_metrics_every_exporter_has_are_the_executors_own() -> None:
    # process_* from another target relabelled to an executor's instance (a node's
    # exporter named by its host) is no executor's: each is joined on cbexec_build_info.
    for expression in expressions(load_dashboard()):
        foreign = {n for n in metric_names(expression) if not n.startswith("cbexec_")}
        if foreign:
            assert re.search(r"\band on \(instance, job\) cbexec_build_info\b", expression), (
                expression
            )


def field_config(panel: dict[str, Any], ref_id: str) -> dict[str, Any]:
    """A target's unit and axis placement: the panel's defaults, then its overrides."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    config = {
        "unit": defaults.get("unit"),
        "custom.axisPlacement": defaults.get("custom", {}).get("axisPlacement", "auto"),
    }
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": ref_id}:
            for prop in override["properties"]:
                if prop["id"] in config:
                    config[prop["id"]] = prop["value"]
    return config


def test_each_line_has_its_own_unit_and_axis() -> None:
    # Resident memory (bytes) and CPU (cores) shared one axis, unit short: memory read
    # "65 Mil" and CPU sat at 0 (probe 175).
    for panel in load_dashboard()["panels"]:
        placed: dict[str, set[str]] = {}
        for target in panel.get("targets", []):
            config = field_config(panel, target["refId"])
            names = metric_names(target["expr"])
            if names and all(name.endswith("_bytes") for name in names):
                assert config["unit"] == "bytes", (panel["title"], target["expr"])
            if re.fullmatch(r"rate\(\w+_cpu_seconds_total\{[^}]*\}\[[^]]*\]\).*", target["expr"]):
                assert config["unit"] == "percentunit", (panel["title"], target["expr"])
            placed.setdefault(config["custom.axisPlacement"], set()).add(config["unit"])
        units = set().union(*placed.values())
        if panel["type"] == "timeseries" and len(units) > 1:
            assert all(len(u) == 1 for u in placed.values()), (panel["title"], placed)
            assert "auto" not in placed, (panel["title"], placed)


def test_panel_ids_are_unique() -> None:
    # Grafana links a panel by its id (viewPanel=24): two of one id open the wrong one.
    ids = [panel["id"] for panel in load_dashboard()["panels"]]
    assert len(ids) == len(set(ids)), sorted(ids)
