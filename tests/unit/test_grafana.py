"""The Grafana dashboard queries only metrics the service exports, by their Prometheus names, and shows them all."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "svdpipe-dashboard.json"
# A Prometheus metric name that mentions svdpipe (PromQL functions and labels never do).
_METRIC = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*svdpipe[A-Za-z0-9_:]*")


def exported_names(monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], set[str]]:
    """(Prometheus series names, base names) of every metric ServiceMetrics defines.

    Ray exports a custom metric `x` as `ray_x` (a Counter keeps its name: no `_total` is added), and a Histogram
    as `ray_x_bucket`, `ray_x_sum` and `ray_x_count`: as seen on Ray 2.60's /metrics endpoint.
    """
    import ray.util

    from svdpipe.service.metrics import ServiceMetrics

    defined: list[tuple[str, str]] = []

    def kind(name: str) -> Any:
        def make(metric: str, *args: Any, **kwargs: Any) -> Any:
            defined.append((name, metric))
            return object()

        return make

    fake = type("FakeMetrics", (), {k: staticmethod(kind(k)) for k in ("Counter", "Gauge", "Histogram")})
    monkeypatch.setattr(ray.util, "metrics", fake, raising=False)
    ServiceMetrics()
    series, bases = set(), set()
    for kind_name, metric in defined:
        bases.add(f"ray_{metric}")
        suffixes = ("_bucket", "_sum", "_count") if kind_name == "Histogram" else ("",)
        series |= {f"ray_{metric}{s}" for s in suffixes}
    return series, bases


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_every_queried_metric_is_exported_and_every_exported_metric_is_shown(monkeypatch):
    series, bases = exported_names(monkeypatch)
    assert len(bases) >= 9  # what metrics.py defines today; more is fine
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for expr in queries(dashboard):
        names = set(_METRIC.findall(expr))
        assert names, f"query on no svdpipe metric: {expr}"
        assert names <= series, f"not exported (Prometheus names are {sorted(series)}): {sorted(names - series)}"
        used |= names
    shown = {b for b in bases if any(u == b or u.startswith(b + "_") for u in used)}
    assert shown == bases, f"exported but on no panel: {sorted(bases - shown)}"


def test_panels_are_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "svdpipe" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]
        assert panel["datasource"]["uid"] == "${datasource}"  # picked at import, like Ray's own dashboards
