"""Numbers from benchmark records: Dice, means and 95% bootstrap intervals over cases.

A *record* is one (model, case, object, setting) result: a dict with at least ``model``,
``case``, ``object``, ``setting`` and ``dice`` (``{n_edits: 3D Dice}``; JSON keys are
strings). The mean over objects pools every object of the selected cases; its interval
resamples *cases* (objects of one patient are not independent), 2000 times, seeded.
With a single case there is nothing to resample across cases, so the interval resamples
objects instead and says so (``unit = "objects"``).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from RadSAMLib.metrics import dice  # noqa: F401  (re-exported: the one Dice definition)


def bootstrap_ci(groups, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Mean of all values in ``groups`` (a list of 1-D value lists, one per resampling
    unit) and its percentile bootstrap interval resampling the units.

    Returns ``(mean, lo, hi)``; ``lo = hi = mean`` with one unit, NaNs with none.
    """
    groups = [np.asarray(g, float) for g in groups if len(g)]
    if not groups:
        return (float("nan"),) * 3
    allv = np.concatenate(groups)
    mean = float(allv.mean())
    if len(groups) == 1:
        return mean, mean, mean
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups])
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(groups), size=(n_boot, len(groups)))
    stats = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    a = (1 - level) / 2
    return mean, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def value_at(record: dict, n_edits: int, key: str = "dice"):
    """The record's Dice after ``n_edits`` edits (``None`` if not measured)."""
    d = record.get(key) or {}
    v = d.get(str(n_edits), d.get(n_edits))
    return None if v is None else float(v)


def summarize(records, n_edits: int, key: str = "dice", by=("model", "setting"), seed: int = 0):
    """``{group: (mean, lo, hi, n_objects, n_cases, unit)}`` for the Dice after
    ``n_edits`` edits, grouped by the record fields ``by``."""
    buckets = defaultdict(lambda: defaultdict(list))
    for r in records:
        v = value_at(r, n_edits, key)
        if v is None:
            continue
        g = tuple(r[b] for b in by)
        buckets[g][r["case"]].append(v)
    out = {}
    for g, per_case in buckets.items():
        if len(per_case) >= 2:
            groups, unit = list(per_case.values()), "cases"
        else:
            groups, unit = [[v] for vals in per_case.values() for v in vals], "objects"
        mean, lo, hi = bootstrap_ci(groups, seed=seed)
        out[g] = (mean, lo, hi, sum(len(v) for v in per_case.values()), len(per_case), unit)
    return out


def edit_counts(records, key: str = "dice") -> list:
    """Sorted edit counts measured in ``records``."""
    return sorted({int(n) for r in records for n in (r.get(key) or {})})
