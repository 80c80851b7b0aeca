"""Tiers hot path without I/O: Python CPU per event, stage by stage (profiling aid next to tiers_bench).

    uv run python -m bench.tiers_cpu [--customers 1000] [--repeat 5] [--history 1] [--profile]

Builds one batch the way ``bench.tiers_bench`` does (PurchaseMade for distinct customers, each with one
earlier purchase in the stored document) and times, best of ``--repeat``, per event: the kit's decode,
fact conversion, parsing stored status rows, the pure domain (derive + evaluate + diff), building the new
status row and its document, building and emitting the outgoing events, and the whole handler
(``apply_customers``) over a connection stub that returns the stored rows and ignores writes. No Kafka,
no Postgres: the numbers are the service's own Python, not the database or broker work that
``tiers_bench`` also pays. ``--profile`` prints a cProfile of the whole path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from loyalty_contracts.envelope import Envelope, decode, encode
from loyalty_contracts.samples import T0, sample, with_customer
from loyalty_kit.effects import EffectContext
from loyalty_kit.programs import load_program_files
from loyalty_kit.runtime import tune_gc
from loyalty_tiers import domain, handlers, store
from loyalty_tiers.program import TiersProgram

from bench.kit_bench import PURCHASE
from bench.tiers_bench import PROGRAMS, SEED_MIX, SEED_TIME, TENANT, customer_id, seed_customer

_COLUMNS = [c.strip() for c in store._CUSTOMER_COLUMNS.split(",")] + ["doc"]


class _Row(tuple[Any, ...]):
    """A stored status row like asyncpg's Record: by position, by column name, and ``items()``."""

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(_COLUMNS.index(key) if isinstance(key, str) else key)

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(_COLUMNS, self, strict=True))


class _StoredRows:
    """Just enough of an asyncpg connection for ``apply_customers``: reads return the stored rows."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    async def execute(self, *_: Any) -> str:
        return "DELETE 0"

    async def fetch(self, sql: str, *_: Any) -> list[tuple[Any, ...]]:
        return self.rows if "FROM customers" in sql else []


def build(customers: int, history: int = 1) -> dict[str, Any]:
    """``history``: earlier purchases per customer (1: as in tiers_bench; more: a frequent shopper, every
    purchase still in the window)."""
    files = load_program_files(PROGRAMS, "tiers", TiersProgram)
    header, program = files[TENANT].header, files[TENANT].section
    zone = program.zone(header.timezone)
    rules = handlers.TenantRules(program, zone, header.default_locale, header.currency)
    base = sample(PURCHASE)
    records = []
    for i in range(customers):
        data = with_customer(base, customer_id(i), T0 + timedelta(seconds=i))
        rec = encode(Envelope.new(data.model_copy(update={"order_id": f"o-{i}"}), tenant=TENANT, source="/bench"))
        records.append(SimpleNamespace(key=rec.key, value=rec.value, headers=rec.headers))
    templates = []
    for share, points in SEED_MIX:
        line = domain.PurchaseLine("1", "tools", 1, points * 100)
        fact = domain.Purchase("seed", SEED_TIME, "seed-order", "EUR", (line,))
        templates += [(fact, domain.process(program, "x", [fact], None, SEED_TIME, zone))] * share
    seed_facts = [seed_customer(i, *templates[i % len(templates)])[0] for i in range(customers)]
    histories = [[fact] for fact in seed_facts]
    if history > 1:  # one shared history of `history` purchases over the 300 days before SEED_TIME
        step = timedelta(days=300) / history
        line = domain.PurchaseLine("1", "tools", 1, 1000)
        shared = [domain.Purchase(f"seed-{k}", SEED_TIME - step * (history - 1 - k), f"seed-order-{k}", "EUR",
                                  (line,)) for k in range(history)]
        outcome_all = domain.process(program, "x", shared, None, SEED_TIME, zone)
        histories = [shared] * customers
    rows = []
    for i in range(customers):
        _, outcome = seed_customer(i, *templates[i % len(templates)])
        if history > 1:
            outcome = outcome_all
        assert outcome.derivation is not None
        # As the handler stores it: more rewarded keys than the document keeps spill to the rewarded table
        # (the stub's probe finds none of the new orders there, as the real one would not).
        spilled = store.rewarded_size(outcome.derivation) > store.REWARDED_INLINE
        row = store.CustomerRow.of(customer_id(i), program, outcome.state, outcome.snapshot, outcome.derivation,
                                   spilled)
        # The columns load_customers selects, in its order (the document as text).
        rows.append(_Row((row.customer_id, row.program_version, row.tier, row.since, row.reason, row.points, row.as_of,
                     row.pending_to, row.pending_effective_at, row.pending_notice_at, list(row.milestones),
                     row.notice_for, row.next_check_at, row.doc_json())))
    return {"program": program, "zone": zone, "rules": rules, "records": records, "rows": rows,
            "histories": histories}


def stages(b: dict[str, Any]) -> dict[str, Callable[[], object]]:
    program, zone, rules, records, rows = b["program"], b["zone"], b["rules"], b["records"], b["rows"]
    tenants = {TENANT}
    envs = [decode(r.key, r.value, r.headers, known_tenants=tenants) for r in records]
    facts = [f for f in (handlers.to_fact(e) for e in envs) if f is not None]  # PurchaseMade: never None
    assert len(facts) == len(envs)
    stored = [store._customer(r) for r in rows]

    def advance_all() -> list[domain.Outcome]:
        # Each run starts from freshly parsed rows: advance updates the derivation in place.
        out = []
        for r, f in zip(rows, facts, strict=True):
            s = store._customer(r)
            state = s.state(program)
            assert f is not None and state is not None and s.derivation is not None
            outcome = domain.advance(program, s.customer_id, s.derivation, state, [f], s.snapshot(),
                                     f.occurred_at, zone)
            assert outcome is not None, "the benchmark's events are in order: the fast path must take them"
            out.append(outcome)
        return out

    outcomes = advance_all()
    effects = [(s.customer_id, e, f.occurred_at)
               for s, f, o in zip(stored, facts, outcomes, strict=True) for e in o.effects]

    def new_rows() -> object:
        return [store.CustomerRow.of(s.customer_id, program, o.state, o.snapshot, o.derivation).doc_json()
                for s, o in zip(stored, outcomes, strict=True)]

    def emit_events() -> object:
        ctx = EffectContext(None, service="tiers", source="/loyalty/tiers", clock="wall")  # type: ignore[arg-type]
        for cid, effect, at in effects:
            ctx.emit(handlers.to_event(rules, cid, effect, at), tenant=TENANT)
        return ctx

    def whole_handler() -> object:
        per_customer: dict[str, list[tuple[domain.Fact, Envelope | None]]] = {}
        for env in (decode(r.key, r.value, r.headers, known_tenants=tenants) for r in records):
            fact = handlers.to_fact(env)
            assert fact is not None
            per_customer.setdefault(env.data.customer_id, []).append((fact, env))
        ctx = EffectContext(_StoredRows(rows), service="tiers", source="/loyalty/tiers", clock="wall")  # type: ignore[arg-type]
        counts = asyncio.run(handlers.apply_customers(ctx, TENANT, rules, per_customer))
        assert counts.full_rederivations == 0
        return counts

    def full_rederivation() -> object:  # the reference path, for comparison (not part of the handler)
        return [domain.process(program, s.customer_id, [*known, f], s.snapshot(), f.occurred_at, zone)
                for s, f, known in zip(stored, facts, b["histories"], strict=True)]

    return {
        "kit decode": lambda: [decode(r.key, r.value, r.headers, known_tenants=tenants) for r in records],
        "to_fact": lambda: [handlers.to_fact(e) for e in envs],
        "parse stored rows": lambda: [store._customer(r) for r in rows],
        "parse + domain.advance": advance_all,
        "(full re-derivation instead)": full_rederivation,
        "new row + document": new_rows,
        "to_event + emit (all events)": emit_events,
        "decode + whole handler": whole_handler,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.tiers_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000, help="events (one per customer) in the batch")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs per stage")
    parser.add_argument("--history", type=int, default=1,
                        help="earlier purchases per customer (default 1, as in tiers_bench)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the whole path")
    args = parser.parse_args(argv)
    tune_gc()  # as ServiceApp.run() does
    b = build(args.customers, args.history)
    n = args.customers
    result: dict[str, float] = {}
    for label, fn in stages(b).items():
        best = float("inf")
        for _ in range(args.repeat):
            started = time.process_time()
            fn()
            best = min(best, time.process_time() - started)
        result[label] = best / n * 1e6
        print(f"{label:<30} {result[label]:8.1f} us/event")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(stages(b)["decode + whole handler"])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return result


if __name__ == "__main__":
    main()
