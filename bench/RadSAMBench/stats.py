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


# -- per-click curves -------------------------------------------------------------------------
CLICK_MODELS = {"challenge": ("challenge", "challenge_clicks"), "uniform": ("curve", "clicks")}


def click_curve(record: dict, model: str = "challenge"):
    """``(dice, n_clicks)``: the record's Dice after 0, 1, ... clicks of ``model``
    (``challenge`` or ``uniform``) and how many clicks were made (the rest repeat the last
    value: no error was left); ``None`` if not measured."""
    curve_key, clicks_key = CLICK_MODELS[model]
    c = record.get(curve_key)
    if not c:
        return None
    return [float(v) for v in c], len(record.get(clicks_key) or [])


def click_auc(curve, first: int = 1, last: int = 5) -> float:
    """Area under Dice vs clicks, trapezoid over clicks ``first..last`` (unit spacing),
    as the CVPR 2025 interactive-3D challenge scores it (so at most ``last - first``)."""
    c = np.asarray(curve[first:last + 1], float)
    return float(np.sum((c[1:] + c[:-1]) / 2))


def click_summary(records, model: str = "challenge", by=("model", "setting"), tol: float = 1e-4):
    """``{group: {"mean": [Dice after n clicks], "auc", "gain", "lowered", "clicks",
    "objects"}}``: mean Dice curve, mean AUC over clicks 1..5 (None with fewer clicks),
    mean gain after the last click, and the fraction of the clicks made that lowered the
    object's Dice by more than ``tol``."""
    groups = defaultdict(list)
    for r in records:
        cc = click_curve(r, model)
        if cc is not None:
            groups[tuple(r[b] for b in by)].append(cc)
    out = {}
    for g, ccs in groups.items():
        n = min(len(c) for c, _ in ccs)
        arr = np.array([c[:n] for c, _ in ccs])
        drops = [d < -tol for c, made in ccs for d in np.diff(c[:made + 1])]
        out[g] = {"mean": arr.mean(axis=0).tolist(),
                  "auc": float(np.mean([click_auc(c) for c, _ in ccs])) if n >= 6 else None,
                  "gain": float((arr[:, -1] - arr[:, 0]).mean()),
                  "lowered": float(np.mean(drops)) if drops else 0.0,
                  "clicks": len(drops), "objects": len(ccs)}
    return out
