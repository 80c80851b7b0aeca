"""The run report: what reached Kafka and the sinks, as one self-contained HTML file and a terminal summary.

`collect()` reads every catalogue topic and dead-letter topic from the beginning (or from a wall-clock start)
with a throwaway consumer (no group, nothing committed) and loads the sinks' JSON-lines files.
`build_report()` is pure: it turns those records into the numbers of each section; a section whose producing
service left no data says so instead of showing zeros. `write_report()` renders the HTML (inline SVG, inline
CSS) plus a sample of the captured messages as files next to it (``messages/``).

Latency uses wall-clock stamps only: the Kafka record timestamp of the retailer's event (when it happened in
the simulation), of the result event, and the sink's arrival time. Events are linked by trace id (every
result carries its cause's trace) and messages by notification id (e-mail header, SMS idempotency key),
webhook type + event time, or, for Telegram, by order per chat.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import yaml
from loyalty_contracts.base import Event
from loyalty_contracts.catalogue import SERVICES, TOPICS, dead_letter_topic
from loyalty_contracts.envelope import DecodeError, Envelope, decode
from loyalty_contracts.events.notifier import NotificationDelivered, NotificationFailed, NotificationSuppressed
from loyalty_contracts.events.referrals import (
    ReferralCodeIssued,
    ReferralConverted,
    ReferralRejected,
    ReferralRewardGranted,
    ReferralRewardRevoked,
)
from loyalty_contracts.events.retail import CustomerRegistered, FriendInvited, ImprovementShipped, PurchaseMade
from loyalty_contracts.events.surveys import (
    CaseDeadlineBreached,
    DetractorCaseOpened,
    FeedbackReceived,
    FollowUpRequested,
    LoopClosed,
    SurveyRequested,
    YouSaidWeDid,
)
from loyalty_contracts.events.tiers import TierChanged, TierDowngradeScheduled, TierProgressMilestone
from loyalty_referrals.domain import Feedback, says_vs_does

from . import charts
from .retailer import topic_partitions
from .sinks import REJECTED_WEBHOOKS, SINKS, read_sink

RESULT_PRODUCERS = {"tiers": "tiers", "referrals": "referrals", "surveys": "surveys", "notifier": "notifier"}
_PRODUCER_OF = {ce: spec.producers[0] for spec in TOPICS for ce in spec.event_types}
TIER_COLORS = ("#9ca3af", "#60a5fa", "#2563eb", "#7c3aed", "#f59e0b", "#16a34a")
SENTIMENT_COLORS = {"positive": "#16a34a", "neutral": "#f59e0b", "negative": "#dc2626"}

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Rec(Generic[E]):
    """One decoded Kafka record: the envelope and the record's own timestamp (ms, wall clock).

    `Rec[TierChanged]` (from `RunData.of(TierChanged)`) is a record whose event is known to be a TierChanged.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    env: Envelope

    @property
    def name(self) -> str:
        return self.event.event_type

    @property
    def event(self) -> E:
        # Only `RunData.of` narrows E, after checking the event's class; a bare `Rec` is `Rec[Any]`.
        return cast(E, self.env.data)

    @property
    def producer(self) -> str:
        return _PRODUCER_OF.get(self.env.type, "?")

    @property
    def trace_id(self) -> str | None:
        tp = self.env.traceparent
        return tp.split("-")[1] if tp and tp.count("-") == 3 else None


@dataclass
class RunData:
    """Everything the report reads: decoded records, dead letters, captured messages."""

    tenant: str
    records: list[Rec] = field(default_factory=list)
    undecodable: Counter[str] = field(default_factory=Counter)  # topic -> records that did not decode
    dead_letters: Counter[str] = field(default_factory=Counter)  # service -> dead letters
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    dead_letter_examples: dict[str, str] = field(default_factory=dict)  # reason -> one error text
    sinks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tier_order: list[str] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)  # what the retailer (+ simulator) says it sent

    def of(self, model: type[E]) -> list[Rec[E]]:
        """The records whose event is a `model` (one model per event type, so this is the type's records)."""
        return [r for r in self.records if isinstance(r.env.data, model)]


# ---------------------------------------------------------------------------------------------- collect


async def collect(
    bootstrap: str,
    *,
    tenant: str = "acme-diy",
    run_dir: Path | None = None,
    since_ms: int | None = None,
    programs_dir: Path | None = None,
    topic_prefix: str = "",
) -> RunData:
    """Read the topics up to their current end (from `since_ms` wall time if given) and the sinks of `run_dir`."""
    from aiokafka import AIOKafkaConsumer

    names = [topic_prefix + t.name for t in TOPICS] + [topic_prefix + dead_letter_topic(s) for s in SERVICES]
    data = RunData(tenant=tenant)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, names)
        if not partitions:
            return _with_sinks(data, run_dir, programs_dir)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        if since_ms is not None:
            starts = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            for tp in partitions:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        else:
            await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        idle = 0
        while remaining and idle < 50:
            batches = await consumer.getmany(timeout_ms=300, max_records=5000)
            idle = 0 if batches else idle + 1
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        _add_record(data, record)
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return _with_sinks(data, run_dir, programs_dir)


def _add_record(data: RunData, record: Any) -> None:
    if ".dlq." in record.topic:
        service = record.topic.split(".dlq.", 1)[1].split(".")[0]
        headers = {k: v for k, v in (record.headers or [])}
        tenant = (headers.get("ce_tenantid") or b"").decode(errors="replace")
        if tenant and tenant != data.tenant:
            return
        data.dead_letters[service] += 1
        reason = (headers.get("dlq_reason") or b"?").decode(errors="replace")
        error = (headers.get("dlq_error") or b"").decode(errors="replace")
        kind = error.split(":", 1)[0] if error else ""
        key = f"{service}: {reason}" + (f" ({kind})" if kind else "")
        data.dead_letter_reasons[key] += 1
        data.dead_letter_examples.setdefault(key, error[:300])
        return
    try:
        env = decode(record.key, record.value, record.headers)
    except DecodeError:
        data.undecodable[record.topic] += 1
        return
    if env.tenant != data.tenant:
        return
    data.records.append(Rec(record.topic, record.partition, record.offset, record.timestamp, env))


def _with_sinks(data: RunData, run_dir: Path | None, programs_dir: Path | None) -> RunData:
    if run_dir is not None:
        sink_dir = Path(run_dir) / "sinks"
        data.sinks = {sink: read_sink(sink_dir, sink) for sink in (*SINKS, REJECTED_WEBHOOKS)}
    if programs_dir is not None:
        data.tier_order = tier_ladder(Path(programs_dir), data.tenant)
    data.records.sort(key=lambda r: (r.timestamp_ms, r.env.time))
    return data


def tier_ladder(programs_dir: Path, tenant: str) -> list[str]:
    """Tier ids in ladder order from the tenant's program file ([] when it cannot be read)."""
    for path in sorted(programs_dir.glob("*.yaml")):
        try:
            program = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if program.get("tenant") == tenant:
            return [t["id"] for t in (program.get("tiers") or {}).get("ladder") or [] if "id" in t]
    return []


# ---------------------------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def week_start(moment: datetime) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def nps_of(scores: Iterable[int]) -> float | None:
    scores = list(scores)
    if not scores:
        return None
    promoters = sum(s >= 9 for s in scores)
    detractors = sum(s <= 6 for s in scores)
    return round(100 * (promoters - detractors) / len(scores), 1)


def sentiment(kind: str, score: int) -> str:
    if kind == "nps":
        return "positive" if score >= 9 else ("neutral" if score >= 7 else "negative")
    return "positive" if score >= 5 else ("neutral" if score >= 3 else "negative")


@dataclass
class Section:
    key: str
    title: str
    html: str
    summary: list[str]  # lines for the terminal
    has_data: bool = True


@dataclass
class Report:
    tenant: str
    generated_at: datetime
    kpis: list[tuple[str, str]]
    sections: list[Section]
    samples: list[dict[str, Any]] = field(default_factory=list)  # captured messages to write as files

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)


def _no_data(service: str, what: str) -> str:
    return f'<p class="nodata">No data from {escape(service)}: {escape(what)}.</p>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f'<th class="{"num" if i >= numeric_from else ""}">{escape(h)}</th>'
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i >= numeric_from else ""}">{escape(str(c))}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "–"


def _stat(label: str, value: str, note: str = "") -> str:
    note_html = f'<div class="note">{escape(note)}</div>' if note else ""
    return f'<div class="stat"><div class="value">{escape(value)}</div><div class="label">{escape(label)}</div>' \
           f"{note_html}</div>"


def _weeks(records: Sequence[Rec], *, when: Any = None) -> list[datetime]:
    times = [when(r) if when else r.env.time for r in records]
    if not times:
        return []
    first, last = week_start(min(times)), week_start(max(times))
    weeks = []
    while first <= last:
        weeks.append(first)
        first += timedelta(days=7)
    return weeks


def _label(week: datetime) -> str:
    return week.strftime("%d %b")


# -- sections


def tiers_section(data: RunData) -> Section:
    changes = data.of(TierChanged)
    if not changes:
        return Section("tiers", "Tier distribution over time", _no_data("tiers", "no TierChanged events"),
                       ["tiers: no data"], has_data=False)
    registrations = data.of(CustomerRegistered)
    order = list(data.tier_order) or []
    for r in changes:
        if r.event.to_tier not in order:
            order.append(r.event.to_tier)
    timeline = sorted(changes, key=lambda r: r.event.effective_at)
    all_times = [r.event.effective_at for r in timeline] + [r.env.time for r in registrations]
    weeks: list[datetime] = []
    if all_times:
        first, last = week_start(min(all_times)), week_start(max(all_times))
        while first <= last:
            weeks.append(first)
            first += timedelta(days=7)
    current: dict[str, str] = {}
    reg_times = sorted(r.env.time for r in registrations)
    # A customer without any TierChanged sits in the ladder's entry tier when the program says which it is.
    entry = data.tier_order[0] if data.tier_order else None
    unchanged = f"{entry} (no change yet)" if entry else "no tier yet"
    series: dict[str, list[float]] = {unchanged: [], **{t: [] for t in order}}
    i = 0
    for week in weeks:
        end = week + timedelta(days=7)
        while i < len(timeline) and timeline[i].event.effective_at < end:
            current[timeline[i].event.customer_id] = timeline[i].event.to_tier
            i += 1
        registered = sum(1 for t in reg_times if t < end)
        counts = Counter(current.values())
        series[unchanged].append(max(0, registered - len(current)))
        for tier in order:
            series[tier].append(counts.get(tier, 0))
    ups = sum(r.event.direction == "up" and r.event.from_tier is not None for r in changes)
    downs = sum(r.event.direction == "down" for r in changes)
    milestones = len(data.of(TierProgressMilestone))
    scheduled = len(data.of(TierDowngradeScheduled))
    final = Counter(current.values())
    if entry:
        final[entry] += int(series[unchanged][-1]) if series[unchanged] else 0
    chart = charts.stacked_columns([_label(w) for w in weeks], series, colors=TIER_COLORS)
    stats = "".join([
        _stat("promotions", str(ups)), _stat("downgrades", str(downs)),
        _stat("milestones passed", str(milestones)), _stat("downgrade notices", str(scheduled)),
    ])
    html = (f'<div class="stats">{stats}</div><h3>Customers per tier at the end of each week (event time)</h3>'
            f"{chart}")
    summary = ["tiers: " + ", ".join(f"{t} {final.get(t, 0)}" for t in order)
               + f"; {ups} promotions, {downs} downgrades"]
    return Section("tiers", "Tier distribution over time", html, summary)


def referrals_section(data: RunData) -> Section:
    converted = data.of(ReferralConverted)
    rejected = data.of(ReferralRejected)
    granted = data.of(ReferralRewardGranted)
    revoked = data.of(ReferralRewardRevoked)
    issued = data.of(ReferralCodeIssued)
    if not (converted or rejected or granted or issued):
        return Section("referrals", "Referral funnel and the says-vs-does gap",
                       _no_data("referrals", "no referral results"), ["referrals: no data"], has_data=False)
    invitations = data.of(FriendInvited)
    registrations = data.of(CustomerRegistered)
    invited_hashes = {r.event.invitee_contact_hash for r in invitations}
    with_code = [r for r in registrations if r.event.referral_code]
    via_invite = [r for r in registrations if not r.event.referral_code and r.event.contact_hashes
                  and r.event.contact_hashes.email in invited_hashes]
    decided = {r.event.referral_id for r in converted} | {r.event.referral_id for r in rejected
                                                             if r.event.reason != "unknown_code"}
    rewarded = {r.event.referral_id for r in granted}
    revoked_ids = {r.event.referral_id for r in revoked}
    funnel = [
        ("invited or shared a code", len(invitations) + len(with_code)),
        ("friend registered", len(with_code) + len(via_invite)),
        ("first purchase decided", len(decided)),
        ("qualified (converted)", len(converted)),
        ("rewarded after hold", len(rewarded)),
        ("reward clawed back", len(revoked_ids)),
    ]
    reasons = Counter(r.event.reason for r in rejected)
    feedback = [Feedback(r.event.customer_id, r.event.occurred_at, r.event.survey_kind, r.event.score)
                for r in data.of(FeedbackReceived)]
    times = [r.env.time for r in data.records]
    svd_html = _no_data("surveys", "no NPS answers, so no says-vs-does") if not any(
        f.kind == "nps" for f in feedback) else ""
    svd = None
    if not svd_html and times:
        svd = says_vs_does(feedback, [(r.event.referrer_id, r.event.occurred_at) for r in converted],
                           len(registrations), min(times), max(times) + timedelta(seconds=1), 90)
        svd_html = (
            charts.hbars([("say they would recommend (NPS 9–10)", round(100 * svd.promoter_share, 1)),
                          ("promoters whose friend converted", round(100 * svd.promoter_referral_rate, 1)),
                          ("all customers whose friend converted", round(100 * svd.customer_referral_rate, 1))],
                         colors=("#16a34a", "#2563eb", "#9ca3af"), unit=" %", label_width=260, width=640)
            + f'<p class="caption">Gap: <b>{100 * svd.gap:.1f} points</b> between saying and doing '
              f"({svd.promoters} promoters of {svd.respondents} NPS respondents; {svd.promoters_who_referred} "
              f"of them brought a friend who bought within 90 days).</p>"
        )
    days_to_convert = []
    reg_at = {r.event.customer_id: r.env.time for r in registrations}
    for r in converted:
        if r.event.referee_id in reg_at:
            days_to_convert.append((r.event.occurred_at - reg_at[r.event.referee_id]).total_seconds() / 86400)
    median = f"{statistics.median(days_to_convert):.1f} d" if days_to_convert else "–"
    html = (
        f'<div class="stats">{_stat("codes issued", str(len(issued)))}{_stat("converted", str(len(converted)))}'
        f'{_stat("rejected", str(len(rejected)))}{_stat("median days to convert", median)}</div>'
        f'<div class="grid2"><div><h3>Funnel</h3>{charts.hbars(funnel, label_width=190, width=560)}</div>'
        f"<div><h3>Rejections by reason (fraud checks included)</h3>"
        f"{charts.hbars(reasons.most_common(), colors=('#dc2626',), label_width=200, width=560) or '<p>none</p>'}"
        f"</div></div><h3>Says vs does</h3>{svd_html}"
    )
    summary = [f"referrals: {len(converted)} converted, {len(rejected)} rejected "
               f"({', '.join(f'{k} {v}' for k, v in reasons.most_common(4))}), {len(rewarded)} rewarded"]
    if svd is not None:
        summary.append(f"  says-vs-does gap {100 * svd.gap:.1f} points")
    return Section("referrals", "Referral funnel and the says-vs-does gap", html, summary)


def nps_section(data: RunData) -> Section:
    feedback = data.of(FeedbackReceived)
    nps = [r for r in feedback if r.event.survey_kind == "nps"]
    requests = data.of(SurveyRequested)
    if not feedback:
        what = "no answers yet" if requests else "no survey requests or answers"
        return Section("nps", "NPS trend by segment", _no_data("surveys", what) +
                       (f"<p>{len(requests)} survey requests were sent.</p>" if requests else ""),
                       ["nps: no data"], has_data=False)
    weeks = _weeks(nps or feedback)
    # Buckets of whole weeks, wide enough for ~15 answers each on average, so one answer does not swing a point.
    span = max(1, math.ceil(15 * len(weeks) / max(1, len(nps))))
    buckets = weeks[::span]
    segments = sorted({r.event.sales_channel or "unknown" for r in nps})
    series: dict[str, list[float | None]] = {seg: [] for seg in segments}
    series["all channels"] = []  # last, so it is drawn on top
    for start in buckets:
        end = start + timedelta(days=7 * span)
        in_bucket = [r for r in nps if start <= r.env.time < end]
        series["all channels"].append(nps_of(r.event.score for r in in_bucket) if len(in_bucket) >= 5 else None)
        for seg in segments:
            scores = [r.event.score for r in in_bucket if (r.event.sales_channel or "unknown") == seg]
            series[seg].append(nps_of(scores) if len(scores) >= 5 else None)
    histogram = Counter(r.event.score for r in nps)
    hist_colors = ["#dc2626"] * 7 + ["#f59e0b"] * 2 + ["#16a34a"] * 2
    csat = [r.event.score for r in feedback if r.event.survey_kind == "csat"]
    overall = nps_of(r.event.score for r in nps)
    by_tier = _nps_by_tier(data, nps)
    stats = "".join([
        _stat("NPS", f"{overall:+.0f}" if overall is not None else "–", f"{len(nps)} answers"),
        _stat("promoters", _pct(sum(r.event.score >= 9 for r in nps), len(nps))),
        _stat("detractors", _pct(sum(r.event.score <= 6 for r in nps), len(nps))),
        _stat("CSAT (1–5)", f"{statistics.mean(csat):.2f}" if csat else "–", f"{len(csat)} answers"),
        _stat("survey requests", str(len(requests))),
        _stat("follow-ups asked", str(len(data.of(FollowUpRequested)))),
    ])
    bucket_name = "weekly" if span == 1 else f"every {span} weeks"
    points = sum(v is not None for v in series["all channels"])
    colors = [charts.PALETTE[1 + i] for i in range(len(segments))] + ["#1e3a8a"]
    trend = charts.lines([_label(w) for w in buckets], series, y_min=-100, y_max=100, zero_line=True, colors=colors) \
        if points >= 2 else f"<p>Too few NPS answers for a trend ({len(nps)}); a longer or larger run fills it.</p>"
    html = (
        f'<div class="stats">{stats}</div><h3>NPS by sales channel, {bucket_name} (points need ≥ 5 answers)</h3>'
        f"{trend}"
        f'<div class="grid2"><div><h3>Score distribution</h3>'
        f"{charts.columns([(str(s), histogram.get(s, 0)) for s in range(11)], colors=hist_colors)}</div>"
        f"<div><h3>NPS by tier at answer time</h3>{by_tier}</div></div>"
    )
    line = f"nps: {overall:+.0f} over {len(nps)} answers" if overall is not None else "nps: no NPS answers"
    line += f"; CSAT {statistics.mean(csat):.2f} over {len(csat)}" if csat else "; no CSAT answers"
    summary = [line]
    return Section("nps", "NPS trend by segment", html, summary)


def _nps_by_tier(data: RunData, nps: Sequence[Rec[FeedbackReceived]]) -> str:
    changes = sorted(data.of(TierChanged), key=lambda r: r.event.effective_at)
    if not changes:
        return _no_data("tiers", "no tiers to segment by")
    history: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for change in changes:
        history[change.event.customer_id].append((change.event.effective_at, change.event.to_tier))
    by_tier: dict[str, list[int]] = defaultdict(list)
    unchanged = f"{data.tier_order[0]} (no change yet)" if data.tier_order else "no tier"
    for r in nps:
        tier = unchanged
        for at, to_tier in history.get(r.event.customer_id, []):
            if at <= r.env.time:
                tier = to_tier
        by_tier[tier].append(r.event.score)
    order = [t for t in [unchanged, *data.tier_order] if t in by_tier] + sorted(
        t for t in by_tier if t not in data.tier_order and t != unchanged)
    rows = [(t, len(by_tier[t]), f"{nps_of(by_tier[t]):+.0f}") for t in order]
    return _table(("tier", "answers", "NPS"), rows)


def cases_section(data: RunData) -> Section:
    opened = data.of(DetractorCaseOpened)
    if not opened:
        return Section("cases", "Detractor cases and deadline compliance",
                       _no_data("surveys", "no detractor cases opened"), ["cases: none"], has_data=False)
    closed = {r.event.case_id: r for r in data.of(LoopClosed)}
    breached = {r.event.case_id for r in data.of(CaseDeadlineBreached)}
    on_time = late = still_open = raced = 0
    for r in opened:
        loop = closed.get(r.event.case_id)
        if loop is None:
            still_open += 1
        elif loop.event.occurred_at <= r.event.deadline_at:
            on_time += 1
            raced += r.event.case_id in breached
        else:
            late += 1
    hours = [r.event.seconds_to_resolve / 3600 for r in closed.values()]
    bins = [(0, 2), (2, 4), (4, 8), (8, 24), (24, 48), (48, 10**6)]
    hist = [(f"{lo}–{hi}h" if hi < 10**6 else f">{lo}h", sum(lo <= h < hi for h in hours)) for lo, hi in bins]
    compliance = _pct(on_time, len(opened))
    html = (
        f'<div class="stats">{_stat("cases opened", str(len(opened)))}{_stat("answered in time", compliance)}'
        f'{_stat("answered late", str(late))}{_stat("still open", str(still_open))}'
        f'{_stat("deadline breaches", str(len(breached)))}</div>'
        f'<div class="grid2"><div><h3>Outcome</h3>'
        f"{charts.hbars([('answered before the deadline', on_time), ('answered after it', late), ('open', still_open)], colors=('#16a34a', '#f59e0b', '#dc2626'), label_width=200, width=540)}"  # noqa: E501
        f"</div><div><h3>Time to resolve (event time)</h3>{charts.columns(hist)}</div></div>"
    )
    if raced:
        html += (f'<p class="caption">{raced} breach(es) concern cases answered before their deadline in event time: '
                 "the service's event-time clock passed the deadline before the answer reached it, because the "
                 "simulation ran faster than the service processed (a lower rate narrows this).</p>")
    return Section("cases", "Detractor cases and deadline compliance", html,
                   [f"cases: {len(opened)} opened, {compliance} answered in time, {len(breached)} breaches"
                    + (f" ({raced} raced an on-time answer)" if raced else "") + f", {still_open} open"])


def themes_section(data: RunData) -> Section:
    feedback = data.of(FeedbackReceived)
    if not feedback:
        return Section("themes", "Themes in what customers say", _no_data("surveys", "no feedback"),
                       ["themes: no data"], has_data=False)
    per_theme: dict[str, Counter[str]] = defaultdict(Counter)
    for r in feedback:
        for theme in r.event.themes:
            per_theme[theme][sentiment(r.event.survey_kind, r.event.score)] += 1
    with_comment = sum(bool(r.event.comment) for r in feedback)
    themes = sorted(per_theme, key=lambda t: -sum(per_theme[t].values()))
    said_we_did = Counter(r.event.theme for r in data.of(YouSaidWeDid))
    shipped = data.of(ImprovementShipped)
    chart = charts.stacked_columns(themes, {s: [per_theme[t][s] for t in themes] for s in SENTIMENT_COLORS},
                                   colors=list(SENTIMENT_COLORS.values()), width=640, height=260) if themes else ""
    shipped_rows = [(r.event.theme, r.event.improvement_id, r.env.time.date().isoformat(),
                     said_we_did.get(r.event.theme, 0)) for r in shipped]
    html = (
        f'<div class="stats">{_stat("answers with a comment", f"{with_comment} / {len(feedback)}")}'
        f'{_stat("themes found", str(sum(sum(c.values()) for c in per_theme.values())))}</div>'
        f'<div class="grid2"><div><h3>Mentions per theme by sentiment</h3>{chart or "<p>No themes tagged.</p>"}</div>'
        f"<div><h3>You said, we did</h3>"
        + (_table(("theme", "improvement", "shipped", "customers told"), shipped_rows, numeric_from=3)
           if shipped_rows else "<p>No improvement shipped in this run.</p>")
        + "</div></div>"
    )
    top = ", ".join(f"{t} {sum(per_theme[t].values())}" for t in themes[:4])
    return Section("themes", "Themes in what customers say", html,
                   [f"themes: {top or 'none'}; you-said-we-did messages {sum(said_we_did.values())}"])


def messages_section(data: RunData) -> Section:
    delivered = data.of(NotificationDelivered)
    failed = data.of(NotificationFailed)
    suppressed = data.of(NotificationSuppressed)
    captured = {sink: len(data.sinks.get(sink, [])) for sink in SINKS}
    if not (delivered or failed or suppressed or any(captured.values())):
        return Section("messages", "Messages per channel and suppressions",
                       _no_data("notifier", "no delivery outcomes and nothing reached the sinks"),
                       ["messages: no data"], has_data=False)
    by_channel: Counter[str] = Counter(r.event.channel for r in delivered)
    duplicates = _duplicates(data)
    rows = [(ch, by_channel.get(ch, 0), captured.get(ch, 0)) for ch in SINKS]
    templates = Counter(r.event.template for r in delivered)
    rejected = len(data.sinks.get(REJECTED_WEBHOOKS, []))
    html = (
        f'<div class="stats">{_stat("delivered", str(len(delivered)))}{_stat("captured at sinks", str(sum(captured.values())))}'  # noqa: E501
        f'{_stat("failed", str(len(failed)))}{_stat("suppressed", str(len(suppressed)))}'
        f'{_stat("sent twice", str(duplicates), "same notification id captured again")}'
        f'{_stat("webhooks rejected", str(rejected), "bad signature")}</div>'
        f'<div class="grid2"><div><h3>Per channel</h3>'
        f"{_table(('channel', 'delivered (notifier)', 'captured (sink)'), rows)}"
        f"<h3>Per template</h3>{_table(('template', 'delivered'), templates.most_common(12))}</div>"
        f"<div><h3>Suppressed, by reason</h3>"
        f"{charts.hbars(Counter(r.event.reason for r in suppressed).most_common(), colors=('#f59e0b',), width=520) or '<p>none</p>'}"  # noqa: E501
        f"<h3>Failed, by reason</h3>"
        f"{charts.hbars(Counter(r.event.reason for r in failed).most_common(), colors=('#dc2626',), width=520) or '<p>none</p>'}"  # noqa: E501
        f"</div></div>"
    )
    return Section("messages", "Messages per channel and suppressions", html, [
        "messages: " + ", ".join(f"{ch} {captured.get(ch, 0)}" for ch in SINKS)
        + f"; suppressed {len(suppressed)}, failed {len(failed)}, duplicates {duplicates}"
    ])


def _duplicates(data: RunData) -> int:
    ids = Counter(m.get("notification_id") for sink in ("email", "sms") for m in data.sinks.get(sink, [])
                  if m.get("notification_id"))
    hooks = Counter(m.get("webhook_id") for m in data.sinks.get("webhook", []))
    return sum(n - 1 for n in ids.values() if n > 1) + sum(n - 1 for n in hooks.values() if n > 1)


# -- latency


@dataclass(frozen=True)
class Hop:
    flow: str
    seconds: float
    scheduled: bool  # the result waited for the event-time clock (a timer), so this is not processing time


def latency_hops(data: RunData) -> tuple[list[Hop], list[Hop]]:
    """(event → result hops, event → message-at-sink hops), linked by trace id and notification id."""
    inputs: dict[str, Rec] = {}
    for r in data.records:
        if r.producer == "retailer" and r.trace_id and r.trace_id not in inputs:
            inputs[r.trace_id] = r
    by_id = {r.env.id: r for r in data.records}
    to_result: list[Hop] = []
    for r in data.records:
        if r.producer in ("retailer", "notifier", "?") or r.trace_id is None:
            continue
        cause = inputs.get(r.trace_id)
        if cause is None:
            continue
        scheduled = (r.env.time - cause.env.time) > timedelta(minutes=1)
        to_result.append(Hop(f"{cause.name} → {r.name}", (r.timestamp_ms - cause.timestamp_ms) / 1000, scheduled))
    arrivals = _arrivals(data, by_id)
    to_sink: list[Hop] = []
    for delivered, arrived_at in arrivals:
        source = by_id.get(delivered.event.source_event_id)
        if source is None:
            continue
        cause = inputs.get(source.trace_id or "") if source.producer != "retailer" else source
        if cause is None:
            continue
        scheduled = (source.env.time - cause.env.time) > timedelta(minutes=1)
        via = f" → {source.name}" if source is not cause else ""
        to_sink.append(Hop(f"{cause.name}{via} → {delivered.event.channel}",
                           arrived_at - cause.timestamp_ms / 1000, scheduled))
    return to_result, to_sink


def _arrivals(data: RunData, by_id: dict[str, Rec]) -> list[tuple[Rec, float]]:
    """Each NotificationDelivered with its message's arrival time at the sink (when it can be matched)."""
    by_notification: dict[str, float] = {}
    for sink in ("email", "sms"):
        for m in data.sinks.get(sink, []):
            if m.get("notification_id"):
                by_notification.setdefault(m["notification_id"], m["arrived_at"])
    hooks: dict[tuple[str, str], float] = {}
    for m in data.sinks.get("webhook", []):
        payload = m.get("payload") or {}
        data_part = payload.get("data") or {}
        hooks.setdefault((str(payload.get("type")), str(data_part.get("customer_id"))), m["arrived_at"])
    chats: dict[str, list[float]] = defaultdict(list)
    for m in data.sinks.get("telegram", []):
        chats[m["chat_id"]].append(m["arrived_at"])
    chat_of = {r.event.customer_id: r.event.contacts.telegram_chat_id for r in data.of(CustomerRegistered)
               if r.event.contacts.telegram_chat_id}
    used: Counter[str] = Counter()
    found: list[tuple[Rec, float]] = []
    for r in sorted(data.of(NotificationDelivered), key=lambda x: x.timestamp_ms):
        d = r.event
        arrived: float | None = None
        if d.channel in ("email", "sms"):
            arrived = by_notification.get(d.notification_id)
        elif d.channel == "webhook":
            source = by_id.get(d.source_event_id)
            if source is not None:
                arrived = hooks.get((source.env.type, source.event.customer_id))
        elif d.channel == "telegram":
            chat = chat_of.get(d.customer_id)
            if chat is not None and used[chat] < len(chats[chat]):
                arrived = sorted(chats[chat])[used[chat]]
                used[chat] += 1
        if arrived is not None:
            found.append((r, arrived))
    return found


def _latency_rows(hops: Sequence[Hop]) -> list[tuple[str, int, str, str, str, str]]:
    flows: dict[str, list[float]] = defaultdict(list)
    for hop in hops:
        flows[hop.flow].append(hop.seconds)
    rows = []
    for flow, values in sorted(flows.items(), key=lambda kv: -len(kv[1])):
        rows.append((flow, len(values), _secs(percentile(values, 0.5)), _secs(percentile(values, 0.9)),
                     _secs(percentile(values, 0.99)), _secs(max(values))))
    return rows


def _secs(value: float) -> str:
    if value != value:  # NaN
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def latency_section(data: RunData) -> Section:
    to_result, to_sink = latency_hops(data)
    delivered = len(data.of(NotificationDelivered))
    unlinked = delivered - len(to_sink)
    if not to_result and not to_sink:
        return Section("latency", "End-to-end latency per flow",
                       _no_data("the services", "no result event could be linked to a retailer event by trace id"),
                       ["latency: no data"], has_data=False)
    heads = ("flow", "n", "p50", "p90", "p99", "max")
    direct = [h for h in to_result if not h.scheduled]
    timed = [h for h in to_result if h.scheduled]
    sink_direct = [h for h in to_sink if not h.scheduled]
    sink_timed = [h for h in to_sink if h.scheduled]
    html = (
        '<p class="caption">Wall clock only: Kafka record timestamp of the retailer event → Kafka timestamp of '
        "the result → arrival at the sink. Flows marked <i>scheduled</i> waited for a timer on the event-time "
        "clock (e.g. a survey 30 simulated days later), so their latency measures the simulation speed, "
        "not processing."
        + (f" {unlinked} of {delivered} delivered messages are not in these tables: their chain starts at a timer or "
           "a journey step (a new trace) or they were not matched at a sink." if unlinked > 0 else "")
        + "</p>"
        f"<h3>Event → message at the sink</h3>{_table(heads, _latency_rows(sink_direct)) if sink_direct else _no_data('notifier', 'no message matched to its cause')}"  # noqa: E501
        f"<h3>Event → result event</h3>{_table(heads, _latency_rows(direct)) if direct else '<p>none</p>'}"
        + (f"<h3>Scheduled flows (timer on the event-time clock)</h3>{_table(heads, _latency_rows(timed + sink_timed))}"
           if timed or sink_timed else "")
    )
    summary = []
    for label, hops in (("event→result", direct), ("event→sink", sink_direct)):
        if hops:
            values = [h.seconds for h in hops]
            summary.append(f"latency {label}: p50 {_secs(percentile(values, 0.5))}, "
                           f"p99 {_secs(percentile(values, 0.99))} over {len(values)}")
    return Section("latency", "End-to-end latency per flow", html, summary or ["latency: only scheduled flows"])


def health_section(data: RunData) -> Section:
    counts = Counter(r.name for r in data.records)
    inputs = sorted((n, c) for n, c in counts.items() if _producer_name(n) == "retailer")
    results = sorted(((n, c) for n, c in counts.items() if _producer_name(n) != "retailer"),
                     key=lambda kv: (_producer_name(kv[0]), kv[0]))
    silent = [s for s in SERVICES if not any(_producer_name(n) == s for n, _ in results)]
    dead = _table(("service: reason", "example error", "dead letters"),
                  [(k, data.dead_letter_examples.get(k, ""), n) for k, n in data.dead_letter_reasons.most_common()],
                  numeric_from=2) if data.dead_letter_reasons else "<p>No dead letters.</p>"
    silent_html = "".join(_no_data(s, "it published no result events") for s in silent)
    if data.published:
        names = sorted(set(data.published) | {n for n, _ in inputs})
        rows = [(n, data.published.get(n, 0), counts.get(n, 0)) for n in names]
        missing = sum(max(0, sent - found) for _, sent, found in rows)
        extra = sum(max(0, found - sent) for _, sent, found in rows)
        verdict = ("<p>Every published event is on Kafka, once.</p>" if not missing and not extra else
                   f'<p class="nodata">{missing} published event(s) missing and {extra} unexpected on Kafka.</p>')
        retailer_html = verdict + _table(("event", "published", "on Kafka"), rows)
    else:
        missing = extra = 0
        retailer_html = _table(("event", "count"), inputs)
    html = (
        f'<div class="grid2"><div><h3>Retailer events</h3>{retailer_html}</div>'
        f'<div><h3>Results</h3>{_table(("event (producer)", "count"), [(f"{n} ({_producer_name(n)})", c) for n, c in results]) if results else "<p>none</p>"}'  # noqa: E501
        f"{silent_html}</div></div><h3>Dead letters</h3>{dead}"
    )
    undecodable = sum(data.undecodable.values())
    return Section("health", "What went through Kafka", html, [
        f"kafka: {sum(c for _, c in inputs)} retailer events, {sum(c for _, c in results)} results, "
        f"{sum(data.dead_letters.values())} dead letters, {undecodable} undecodable"
        + (f"; silent: {', '.join(silent)}" if silent else "")
        + (f"; MISSING {missing}, UNEXPECTED {extra} of the published events" if missing or extra else "")
    ])


def _producer_name(event_name: str) -> str:
    for ce, producer in _PRODUCER_OF.items():
        if ce.split(".")[1] == event_name:
            return producer
    return "?"


def build_report(data: RunData) -> Report:
    """Every section's numbers and HTML from the collected data (pure)."""
    sections = [tiers_section(data), referrals_section(data), nps_section(data), cases_section(data),
                themes_section(data), messages_section(data), latency_section(data), health_section(data)]
    customers = len(data.of(CustomerRegistered))
    orders = len(data.of(PurchaseMade))
    nps = nps_of(r.event.score for r in data.of(FeedbackReceived) if r.event.survey_kind == "nps")
    kpis = [
        ("customers", str(customers)),
        ("orders", str(orders)),
        ("tier changes", str(len(data.of(TierChanged)))),
        ("referrals converted", str(len(data.of(ReferralConverted)))),
        ("NPS", f"{nps:+.0f}" if nps is not None else "–"),
        ("messages captured", str(sum(len(data.sinks.get(s, [])) for s in SINKS))),
    ]
    return Report(data.tenant, datetime.now(UTC), kpis, sections, samples=_samples(data))


def _samples(data: RunData, per_sink: int = 4) -> list[dict[str, Any]]:
    """A few captured messages per sink, one per template where the notification id tells the template."""
    template_of = {r.event.notification_id: r.event.template for r in data.of(NotificationDelivered)}
    picked: list[dict[str, Any]] = []
    for sink in SINKS:
        seen: set[str] = set()
        for m in data.sinks.get(sink, []):
            key = str(template_of.get(m.get("notification_id") or "") or m.get("type")
                      or m.get("subject") or m.get("text", "")[:40])
            if key in seen:
                continue
            seen.add(key)
            picked.append({**m, "template": template_of.get(m.get("notification_id") or "")})
            if len(seen) >= per_sink:
                break
    return picked


# ---------------------------------------------------------------------------------------------- render

CSS = """
*{box-sizing:border-box}body{margin:0;background:#f3f4f6;color:#111827;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{background:linear-gradient(120deg,#1e3a8a,#2563eb);color:#fff;padding:28px 40px}
header h1{margin:0 0 4px;font-size:26px}header p{margin:0;opacity:.85}
main{max-width:1180px;margin:0 auto;padding:24px}
.kpis{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin:-10px 0 20px}
.kpi{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.kpi .v{font-size:26px;font-weight:700}.kpi .l{color:#6b7280;font-size:13px}
section{background:#fff;border-radius:12px;padding:20px 24px;margin:0 0 20px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
section h2{margin:0 0 12px;font-size:20px}section h3{font-size:14px;color:#374151;margin:16px 0 6px;
text-transform:uppercase;letter-spacing:.04em}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:6px}
.stat{background:#f9fafb;border:1px solid #e5e7eb;border-radius:8px;padding:8px 14px;min-width:130px}
.stat .value{font-size:20px;font-weight:650}.stat .label{font-size:12px;color:#6b7280}
.stat .note{font-size:11px;color:#9ca3af}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:24px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:5px 8px;border-bottom:1px solid #e5e7eb;
text-align:left}th{color:#6b7280;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.nodata{background:#fef3c7;border:1px solid #fcd34d;color:#92400e;border-radius:8px;padding:10px 14px}
.caption{color:#4b5563;font-size:13px}svg{max-width:100%;height:auto}
ul.samples{columns:2;padding-left:18px}a{color:#1d4ed8}
footer{color:#6b7280;font-size:12px;text-align:center;padding:10px 0 30px}
"""


def render_html(report: Report, sample_links: Sequence[tuple[str, str]] = (), title: str | None = None) -> str:
    kpis = "".join(f'<div class="kpi"><div class="v">{escape(v)}</div><div class="l">{escape(k)}</div></div>'
                   for k, v in report.kpis)
    sections = "".join(f'<section id="{s.key}"><h2>{escape(s.title)}</h2>{s.html}</section>'
                       for s in report.sections)
    links = "".join(f'<li><a href="{escape(href)}">{escape(label)}</a></li>' for label, href in sample_links)
    samples = (f'<section id="samples"><h2>Sample of the rendered messages</h2><ul class="samples">{links}</ul>'
               "</section>") if links else (
        '<section id="samples"><h2>Sample of the rendered messages</h2>'
        + _no_data("notifier", "no message reached the sinks") + "</section>")
    heading = title or f"Loyalty suite run — {report.tenant}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(heading)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f"<header><h1>{escape(heading)}</h1><p>Generated {report.generated_at:%Y-%m-%d %H:%M} UTC from the events "
        f"on Kafka and the messages the local sinks captured.</p></header><main>"
        f'<div class="kpis">{kpis}</div>{sections}{samples}</main>'
        "<footer>Self-contained report: no scripts, no external assets.</footer></body></html>"
    )


def write_samples(samples: Sequence[dict[str, Any]], out_dir: Path) -> list[tuple[str, str]]:
    """Write each sampled message as a file under out_dir/messages; returns (label, relative href)."""
    folder = out_dir / "messages"
    folder.mkdir(parents=True, exist_ok=True)
    links: list[tuple[str, str]] = []
    for i, m in enumerate(samples, start=1):
        sink = m.get("sink", "message")
        if sink == "email":
            name = f"{i:02d}-email.html"
            # The rendered HTML goes in an iframe so its own styles cannot leak into (or pick up) the wrapper's.
            body = (f'<iframe srcdoc="{escape(m["html"], quote=True)}" title="HTML part" '
                    'style="width:100%;height:520px;border:0"></iframe>' if m.get("html")
                    else f"<pre style=\"white-space:pre-wrap\">{escape(m.get('text') or '')}</pre>")
            page = (f'<!doctype html><meta charset="utf-8"><title>{escape(m.get("subject", ""))}</title>'
                    '<body style="margin:0;background:#f3f4f6;font:14px system-ui,sans-serif">'
                    '<div style="max-width:720px;margin:24px auto;background:#fff;border-radius:10px;'
                    'box-shadow:0 1px 3px rgba(0,0,0,.1)">'
                    '<div style="color:#555;border-bottom:1px solid #e5e7eb;padding:12px 18px">'
                    f"To: {escape(m.get('to', ''))}<br>Subject: <b>{escape(m.get('subject', ''))}</b>"
                    + (f"<br>Template: {escape(m['template'])}" if m.get("template") else "")
                    + f'</div><div style="padding:12px 18px">{body}</div>'
                    '<details style="padding:0 18px 14px"><summary>Plain-text part</summary>'
                    f'<pre style="white-space:pre-wrap">{escape(m.get("text") or "")}</pre></details></div></body>')
            (folder / name).write_text(page, encoding="utf-8")
            label = f"e-mail to {m.get('to', '?')}: {m.get('subject', '')}"
        elif sink == "webhook":
            name = f"{i:02d}-webhook.json"
            (folder / name).write_text(json.dumps(m.get("payload"), ensure_ascii=False, indent=2), encoding="utf-8")
            label = f"webhook {m.get('endpoint', '')}: {m.get('type', '')}"
        else:
            name = f"{i:02d}-{sink}.txt"
            (folder / name).write_text(str(m.get("text", "")), encoding="utf-8")
            who = m.get("to") or m.get("chat_id") or "?"
            label = f"{sink} to {who}: {str(m.get('text', ''))[:60]}"
        if m.get("template"):
            label += f" [{m['template']}]"
        links.append((label, f"messages/{name}"))
    return links


def write_report(data: RunData, out_dir: Path, *, title: str | None = None) -> tuple[Path, Report]:
    """Render report.html (+ messages/) into out_dir; returns its path and the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(data)
    links = write_samples(report.samples, out_dir)
    path = out_dir / "report.html"
    path.write_text(render_html(report, links, title), encoding="utf-8")
    return path, report


def terminal_summary(report: Report, path: Path | None = None) -> str:
    lines = [f"== {report.tenant}: " + ", ".join(f"{k} {v}" for k, v in report.kpis)]
    for section in report.sections:
        lines += section.summary
    if path is not None:
        lines.append(f"report: {path}")
    return "\n".join(lines)


async def make_report(bootstrap: str, run_dir: Path, *, tenant: str = "acme-diy", since_ms: int | None = None,
                      programs_dir: Path | None = None, title: str | None = None,
                      topic_prefix: str = "", published: Mapping[str, int] | None = None) -> tuple[Path, str]:
    """Collect, render into run_dir, and return (report path, terminal summary).

    `published`: events sent per name (e.g. `run_stream(...).expected.counts`), checked against what is on Kafka.
    """
    data = await collect(bootstrap, tenant=tenant, run_dir=run_dir, since_ms=since_ms, programs_dir=programs_dir,
                         topic_prefix=topic_prefix)
    data.published = dict(published or {})
    path, report = write_report(data, Path(run_dir), title=title)
    return path, terminal_summary(report, path)
