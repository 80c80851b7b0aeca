"""The referrals dashboard queries the gauge the service exports, by the label it sets."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from loyalty_referrals.gap import GAP_METRIC

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _gen_dashboards() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_dashboards", DEPLOY / "gen_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dashboard_panel_queries_the_exported_gap_by_tenant() -> None:
    assert _gen_dashboards().SERVICE_METRICS["referral_gap"] == GAP_METRIC
    committed = json.loads((DEPLOY / "compose/grafana/dashboards/loyalty-referrals.json").read_text())
    exprs = [t["expr"] for panel in committed["panels"] for t in panel["targets"]]
    assert f"max by (tenant) ({GAP_METRIC})" in exprs
    gap_panel = next(p for p in committed["panels"] if GAP_METRIC in p["targets"][0]["expr"])
    assert gap_panel["fieldConfig"]["defaults"]["unit"] == "percentunit"  # the gauge is a share, 0..1
