"""Generate one Grafana dashboard per service for the compose stack (deploy/compose/grafana/dashboards/).

Every dashboard has the kit's panels (consumer lag, batch latency, throughput, dead letters, outbox and
timers) plus the service's own business panels. Result-event rates come from the topics' end offsets
(kafka-exporter), so they work with no service-specific metric; the panels on service metrics
(deliveries by channel, tier changes by tier, NPS) read the names in SERVICE_METRICS.

Run: ``uv run python deploy/gen_dashboards.py`` (``--check`` exits 1 when a file is stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loyalty_contracts import catalogue

DASHBOARD_DIR = Path(__file__).resolve().parent / "compose" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
CONSUMER_GROUP_PREFIX = "loyalty-"

# Service metrics the business panels query (Prometheus names as exposed on /metrics).
SERVICE_METRICS: dict[str, str] = {
    "tier_changes": "loyalty_tier_changes_total",  # labels: tenant, to_tier
    "deliveries": "loyalty_notifier_deliveries_total",  # labels: channel, outcome
    "nps": "loyalty_surveys_nps",  # gauge, labels: tenant
    # gauge, labels: tenant; promoter share minus the share of promoters who referred (0..1), last 30 days
    "referral_gap": "loyalty_referrals_recommendation_gap",
}


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""


def kit_panels(service: str) -> list[Panel]:
    job = f'job="{service}"'
    group = f'consumergroup="{CONSUMER_GROUP_PREFIX}{service}"'
    return [
        Panel("Consumer lag by topic", ((f"sum by (topic) (kafka_consumergroup_lag{{{group}}})", "{{topic}}"),),
              description="Records the consumer group is behind, from the broker (kafka-exporter)."),
        Panel("Batch latency", tuple(
            (f"histogram_quantile({q}, sum by (le) (rate(loyalty_batch_seconds_bucket{{{job}}}[5m])))", f"p{p}")
            for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
        ), unit="s", description="Time to handle one consumed batch (one transaction)."),
        Panel("Events handled per second", (
            (f"sum by (event_type) (rate(loyalty_events_handled_total{{{job}}}[5m]))", "{{event_type}}"),
        ), unit="ops"),
        Panel("Dead letters (15 min)", (
            (f"sum by (reason) (increase(loyalty_dead_letters_total{{{job}}}[15m]))", "{{reason}}"),
        ), description=f"Records sent to {catalogue.dead_letter_topic(service)}, by reason."),
        Panel("Outbox backlog and timers due", (
            (f"sum(loyalty_outbox_backlog{{{job}}})", "outbox rows"),
            (f"sum(loyalty_timers_due{{{job}}})", "timers due"),
        )),
    ]


def topic_rate(topic: str) -> str:
    return f'sum(rate(kafka_topic_partition_current_offset{{topic="{topic}"}}[5m])) * 60'


def produced_rate_panel(service: str) -> Panel:
    topics = catalogue.topics_produced_by(service)
    return Panel("Published result events per minute", tuple(
        (topic_rate(t), t.removeprefix("loyalty.")) for t in topics
    ), unit="short", description="From the end offsets of the topics this service publishes.")


def business_panels(service: str) -> list[Panel]:
    m = SERVICE_METRICS
    panels = [produced_rate_panel(service)]
    if service == "tiers":
        panels.append(Panel("Tier changes by new tier (1 h)", (
            (f"sum by (to_tier) (increase({m['tier_changes']}[1h]))", "{{to_tier}}"),
        )))
    elif service == "notifier":
        panels.append(Panel("Deliveries by channel and outcome", (
            (f"sum by (channel, outcome) (rate({m['deliveries']}[5m])) * 60", "{{channel}} {{outcome}}"),
        ), description="Per minute."))
    elif service == "surveys":
        panels.append(Panel("NPS by retailer", ((f"max by (tenant) ({m['nps']})", "{{tenant}}"),),
                            kind="stat", description="Promoters % minus detractors %, per tenant."))
    elif service == "referrals":
        panels.append(Panel("Said they'd recommend vs did (gap)", (
            (f"max by (tenant) ({m['referral_gap']})", "{{tenant}}"),
        ), unit="percentunit", description=(
            "Share of NPS respondents who would recommend (9-10) minus share of those promoters whose "
            "referred friend converted, last 30 days, per tenant."
        )))
    return panels


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }


def dashboard(service: str) -> dict[str, Any]:
    panels = [*kit_panels(service), *business_panels(service)]
    return {
        "uid": f"loyalty-{service}",
        "title": f"Loyalty / {service}",
        "tags": ["loyalty", service],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": [panel_json(p, i + 1, (i % 2) * 12, (i // 2) * 8) for i, p in enumerate(panels)],
    }


def outputs() -> dict[Path, str]:
    return {
        DASHBOARD_DIR / f"loyalty-{service}.json": json.dumps(dashboard(service), indent=2) + "\n"
        for service in catalogue.SERVICES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a dashboard file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.name}")
    if stale:
        print(f"stale dashboards: {', '.join(stale)}; run: uv run python deploy/gen_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
