"""Process-level tuning for service processes (called by ServiceApp.run, not on import)."""

from __future__ import annotations

import gc


def tune_gc(gen0_threshold: int = 300_000) -> None:
    """Fewer, larger young-generation collections.

    Decoding a batch allocates many short-lived pydantic objects; with CPython's default threshold (700)
    the collector runs hundreds of times per batch and walks every live object each full pass — measured
    at 2-3x the decode cost (docs/KIT.md). Even at 50 000 a young collection walks the objects of the one to
    three batches in flight (~8 ms each, 15 % of the kit benchmark's CPU); at 300 000 they are rare (2 per
    50 000 events instead of 58) and peak RSS did not change (bench RSS ~220 MB either way). Most objects
    are freed by reference counting; only cyclic garbage waits for a collection. ``gc.freeze`` moves
    start-up objects (modules, models) out of the collector's view.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, max(gen1, 20), max(gen2, 50))
