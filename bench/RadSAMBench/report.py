"""Benchmark JSON -> Markdown tables and PNG plots.

``report.md`` holds: Table 1 in the layout of the RadSAM paper (rows: model x strategy;
columns: volume-level box/point and slice-level box/point, each without and with edits),
the oracle (best of the 4 masks per slice), Dice after each number of edits, Dice after
each click (challenge and uniform clicks, with the AUC over clicks 1..5 and the share of
clicks that lowered an object's Dice), per-organ tables, timings and skipped objects.
Plots: ``dice_vs_edits.png`` (mean Dice vs number of edits, 95% interval band),
``dice_vs_clicks.png`` (mean Dice after each click) and ``per_organ.png`` (per-organ Dice
with intervals).
Cells read ``mean (lo-hi)``: 95% bootstrap interval over cases (over objects when the run
has a single case; see ``stats.py``).

Regenerate from a results file: ``python -m RadSAMBench.report results.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .stats import click_summary, edit_counts, summarize


def load_results(path) -> dict:
    return json.loads(Path(path).read_text())


def all_records(results: dict) -> list:
    """Every non-skipped record of a results dict."""
    return [r for c in results.get("cases", {}).values() for r in c.get("records", []) if "skipped" not in r]


def _cell(s):
    if s is None:
        return "–"
    mean, lo, hi = s[:3]
    return f"{mean:.3f}" if lo == hi else f"{mean:.3f} ({lo:.2f}–{hi:.2f})"


def _order(values):
    seen = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _settings(results, recs):
    listed = results.get("config", {}).get("settings") or []
    return _order(list(listed) + [r["setting"] for r in recs])


def table1(recs, results, key="dice") -> list:
    models = _order(r["model"] for r in recs)
    strategies = _order(s.split("/")[2] for s in _settings(results, recs))
    cols, heads = [], []
    for level in ("volume", "slice"):
        lrecs = [r for r in recs if r["level"] == level]
        n = max(edit_counts(lrecs, key), default=0)
        for prompt in ("box", "point"):
            if not any(r["prompt_kind"] == prompt for r in lrecs):
                continue
            cols.append((level, prompt, 0))
            heads.append(f"{level} {prompt}")
            if n:
                cols.append((level, prompt, n))
                heads.append(f"{level} {prompt} +{n} edit{'s' if n > 1 else ''}{'/slice' if level == 'slice' else ''}")
    if not cols:
        return []
    stats = {n: summarize(recs, n, key) for n in {c[2] for c in cols}}
    lines = ["| model | strategy | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for m in models:
        for st in strategies:
            cells = [_cell(stats[n].get((m, f"{lv}/{p}/{st}"))) for lv, p, n in cols]
            if all(c == "–" for c in cells):
                continue
            lines.append(f"| {m} | {st} | " + " | ".join(cells) + " |")
    return lines


def edits_table(recs, level, results) -> list:
    lrecs = [r for r in recs if r["level"] == level]
    ns = edit_counts(lrecs)
    if not ns:
        return []
    by_n = {n: summarize(lrecs, n) for n in ns}
    orc = {n: summarize(lrecs, n, "oracle") for n in (ns[0], ns[-1])}
    head = [f"{n} edit{'s' if n != 1 else ''}" for n in ns] + [f"oracle, {ns[0]}", f"oracle, {ns[-1]}"]
    lines = ["| model | setting | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for m in _order(r["model"] for r in lrecs):
        for s in _settings(results, lrecs):
            if (m, s) not in by_n[ns[0]]:
                continue
            cells = [_cell(by_n[n].get((m, s))) for n in ns] + [_cell(orc[n].get((m, s))) for n in (ns[0], ns[-1])]
            lines.append(f"| {m} | {s} | " + " | ".join(cells) + " |")
    return lines


def _organ_columns(recs, results, level_filter=None, after_edits=False):
    cols = []
    first_strategy = {}
    for m in _order(r["model"] for r in recs):
        for s in _settings(results, recs):
            lv, p, st = s.split("/")
            if level_filter and lv != level_filter:
                continue
            if lv == "slice" and not after_edits:
                # Without edits a slice-level result does not depend on the strategy.
                if first_strategy.setdefault((m, p), st) != st:
                    continue
            cols.append((m, s))
    return cols


def organ_table(recs, results, after_edits=False) -> list:
    organs = _order(r["object"] for r in recs)
    cols = _organ_columns(recs, results, level_filter="volume" if after_edits else None, after_edits=after_edits)
    if not cols:
        return []
    stats = {}
    for m, s in cols:
        srecs = [r for r in recs if r["model"] == m and r["setting"] == s]
        n = max(edit_counts(srecs)) if after_edits else 0
        stats[(m, s)] = (n, summarize(srecs, n, by=("object",)))
    multi = len(_order(m for m, _ in cols)) > 1
    heads = [(f"{m} " if multi else "") + (s.rsplit("/", 1)[0] if s.startswith("slice") and not after_edits else s)
             + (f" +{stats[(m, s)][0]}" if after_edits else "") for m, s in cols]
    lines = ["| organ | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for o in organs:
        lines.append(f"| {o} | " + " | ".join(_cell(stats[c][1].get((o,))) for c in cols) + " |")
    return lines


def clicks_table(recs, results, model: str) -> list:
    """Dice after each click of ``model`` (challenge/uniform), its AUC over clicks 1..5,
    the gain after the last click and the share of clicks that lowered an object's Dice."""
    summ = click_summary(recs, model)
    if not summ:
        return []
    n = max(len(v["mean"]) for v in summ.values())
    head = [f"{c} click{'s' if c != 1 else ''}" for c in range(n)] + ["gain", "AUC 1..5", "clicks lowering Dice"]
    lines = ["| model | setting | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for m in _order(r["model"] for r in recs):
        for st in _settings(results, recs):
            v = summ.get((m, st))
            if v is None:
                continue
            cells = [f"{x:.3f}" for x in v["mean"]] + ["–"] * (n - len(v["mean"]))
            cells += [f"{v['gain']:+.3f}", "–" if v["auc"] is None else f"{v['auc']:.3f}",
                      f"{100 * v['lowered']:.0f}% of {v['clicks']}"]
            lines.append(f"| {m} | {st} | " + " | ".join(cells) + " |")
    return lines


def timing_table(results) -> list:
    rows = {}
    for c in results.get("cases", {}).values():
        t = c.get("timing") or {}
        m = c.get("model", "?")
        acc = rows.setdefault(m, {"cases": 0, "slices_encoded": 0, "encode_s": 0.0, "decode_calls": 0,
                                  "decode_s": 0.0, "total_s": 0.0, "device": t.get("device", "?")})
        acc["cases"] += 1
        for k in ("slices_encoded", "encode_s", "decode_calls", "decode_s", "total_s"):
            acc[k] += t.get(k, 0)
    lines = ["| model | device | cases | slices encoded | encode s/slice | decoder calls | decode s/call | total s |",
             "|---|---|---|---|---|---|---|---|"]
    for m, a in rows.items():
        enc = a["encode_s"] / a["slices_encoded"] if a["slices_encoded"] else float("nan")
        dec = a["decode_s"] / a["decode_calls"] if a["decode_calls"] else float("nan")
        lines.append(f"| {m} | {a['device']} | {a['cases']} | {a['slices_encoded']} | {enc:.3f} | "
                     f"{a['decode_calls']} | {dec:.4f} | {a['total_s']:.0f} |")
    return lines


def markdown(results: dict) -> str:
    recs = all_records(results)
    cfg = results.get("config", {})
    skipped = [r for c in results.get("cases", {}).values() for r in c.get("records", []) if "skipped" in r]
    cases = _order(r["case"] for r in recs)
    unit = "cases" if len(cases) > 1 else "objects (a single case)"
    out = ["# RadSAM benchmark results", ""]
    if cfg.get("command"):
        out += ["Command:", "", "```", cfg["command"], "```", ""]
    out += [f"Dataset `{cfg.get('dataset', '?')}` ({cfg.get('layout', '?')} layout), {len(cases)} case(s), "
            f"{len(recs)} results; seed {cfg.get('seed', '?')}. 3D Dice, mean over objects with a 95% "
            f"bootstrap interval over {unit}.", ""]
    jitter = (cfg.get("protocol") or {}).get("box_jitter")
    if jitter is not None:
        out += [f"Box prompts: the CVPR 2025 challenge's, every side widened by 0..{jitter} px per 256 (seeded).", ""]
    sections = [
        ("Table 1: mean 3D Dice (layout of the RadSAM paper's Table 1)", table1(recs, results)),
        ("Oracle: best of the 4 masks chosen on every slice", table1(recs, results, key="oracle")),
        ("Volume level: Dice after each number of edits", edits_table(recs, "volume", results)),
        ("Slice level: Dice after each number of edits per slice", edits_table(recs, "slice", results)),
        ("Challenge clicks (CVPR 2025 interactive-3D): Dice after each click", clicks_table(recs, results, "challenge")),
        ("Uniform clicks: Dice after each click", clicks_table(recs, results, "uniform")),
        ("Per organ, no edits", organ_table(recs, results)),
        ("Per organ, volume level after the edits", organ_table(recs, results, after_edits=True)),
        ("Time", timing_table(results)),
    ]
    for title, lines in sections:
        if lines:
            out += [f"## {title}", "", *lines, ""]
    if skipped:
        out += ["## Skipped objects", "", "| case | object | reason |", "|---|---|---|"]
        out += [f"| {r['case']} | {r['object']} | {r['skipped']} |" for r in skipped if r["skipped"] != "absent"]
        absent = sum(r["skipped"] == "absent" for r in skipped)
        if absent:
            out += ["", f"({absent} selected labels absent from their case.)"]
        out.append("")
    p = cfg.get("protocol")
    if p:
        out += ["## Protocol", "", "```", json.dumps(p, indent=1), "```", ""]
    return "\n".join(out)


def _pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_edits(results: dict, path) -> Path | None:
    plt = _pyplot()
    recs = all_records(results)
    panels = [(lv, p) for lv in ("volume", "slice") for p in ("box", "point")
              if any(r["level"] == lv and r["prompt_kind"] == p for r in recs)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    multi = len(_order(r["model"] for r in recs)) > 1
    names = _order((f"{r['model']} " if multi else "") + r["strategy"] for r in recs)
    color = {n: f"C{i % 10}" for i, n in enumerate(names)}   # one colour per line in every panel
    for ax, (lv, p) in zip(axes[0], panels):
        prec = [r for r in recs if r["level"] == lv and r["prompt_kind"] == p]
        ns = edit_counts(prec)
        stats = {n: summarize(prec, n) for n in ns}
        for m in _order(r["model"] for r in prec):
            for s in _settings(results, prec):
                if (m, s) not in stats[ns[0]]:
                    continue
                xs = [n for n in ns if (m, s) in stats[n]]
                mean = [stats[n][(m, s)][0] for n in xs]
                lo = [stats[n][(m, s)][1] for n in xs]
                hi = [stats[n][(m, s)][2] for n in xs]
                label = (f"{m} " if multi else "") + s.split("/")[2]
                ax.plot(xs, mean, marker="o", label=label, color=color[label])
                ax.fill_between(xs, lo, hi, color=color[label], alpha=0.15)
        ax.set_title(f"{lv}-level, {p} prompt")
        ax.set_xlabel("edits" + (" per slice" if lv == "slice" else ""))
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean 3D Dice")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_clicks(results: dict, path) -> Path | None:
    """Mean Dice vs clicks, one panel per click model x start prompt."""
    plt = _pyplot()
    recs = all_records(results)
    panels = []
    for cm in ("challenge", "uniform"):
        summ = click_summary(recs, cm)
        for p in ("box", "point"):
            lines = {k: v for k, v in summ.items() if k[1].split("/")[:2] == ["volume", p]}
            if lines:
                panels.append((cm, p, lines))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    multi = len(_order(r["model"] for r in recs)) > 1
    for ax, (cm, p, lines) in zip(axes[0], panels):
        for (m, s), v in lines.items():
            auc = "" if v["auc"] is None else f" (AUC {v['auc']:.2f})"
            ax.plot(range(len(v["mean"])), v["mean"], marker="o", label=(f"{m} " if multi else "") + s.split("/")[2] + auc)
        ax.set_title(f"{cm} clicks, {p} start")
        ax.set_xlabel("clicks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("mean 3D Dice")
    return _save(fig, path)


def plot_organs(results: dict, path) -> Path | None:
    plt = _pyplot()
    import numpy as np
    recs = all_records(results)
    cols = _organ_columns(recs, results)
    organs = _order(r["object"] for r in recs)
    prompts = [p for p in ("box", "point") if any(s.split("/")[1] == p for _, s in cols)]
    if not organs or not prompts:
        return None
    fig, axes = plt.subplots(len(prompts), 1, figsize=(max(7, 0.9 * len(organs) + 3.5), 3.4 * len(prompts)),
                             squeeze=False, sharex=True)
    x = np.arange(len(organs))
    for ax, p in zip(axes[:, 0], prompts):
        pc = [c for c in cols if c[1].split("/")[1] == p]
        w = 0.8 / max(1, len(pc))
        for n, (m, s) in enumerate(pc):
            st = summarize([r for r in recs if r["model"] == m and r["setting"] == s], 0, by=("object",))
            mean = np.array([st.get((o,), (np.nan,) * 3)[0] for o in organs])
            lo = np.array([st.get((o,), (np.nan,) * 3)[1] for o in organs])
            hi = np.array([st.get((o,), (np.nan,) * 3)[2] for o in organs])
            lv, _, strat = s.split("/")
            label = (f"{m} " if len({c[0] for c in cols}) > 1 else "") + ("slice-level" if lv == "slice" else strat)
            ax.errorbar(x + (n - (len(pc) - 1) / 2) * w, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=4,
                        capsize=2, label=label)
        ax.set_title(f"{p} prompt, no edits")
        ax.set_ylabel("3D Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels(organs, rotation=30, ha="right")
    return _save(fig, path)


def write_report(results: dict, out_dir, plots: bool = True) -> list:
    """Write ``report.md`` (and the PNG plots) into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(markdown(results))
    paths = [md]
    if plots:
        for fn, name in ((plot_edits, "dice_vs_edits.png"), (plot_clicks, "dice_vs_clicks.png"),
                         (plot_organs, "per_organ.png")):
            p = fn(results, out_dir / name)
            if p is not None:
                paths.append(p)
    return paths


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m RadSAMBench.report results.json [out_dir]")
    src = Path(sys.argv[1])
    for p in write_report(load_results(src), sys.argv[2] if len(sys.argv) > 2 else src.parent):
        print(p)
