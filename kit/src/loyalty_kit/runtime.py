"""Process-level tuning for service processes (called by ServiceApp.run, not on import)."""

from __future__ import annotations

import gc


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Fewer, larger young-generation collections.

    Decoding a batch allocates many short-lived pydantic objects; with CPython's default threshold (700)
    the collector runs hundreds of times per batch and walks every live object each full pass — measured
    at 2-3x the decode cost (docs/KIT.md). ``gc.freeze`` moves start-up objects (modules, models) out
    of the collector's view.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, max(gen1, 20), max(gen2, 50))
