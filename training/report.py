"""Markdown tables from ``training.evaluate`` JSON files (columns merged by object).

    python -m training.report runs/gpu2/logs/eval_base.json runs/gpu1/logs/eval_B.json ... \\
        [--rename B_mask=ft_mask ...] [--json merged.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def merge(paths, rename=None):
    rename = rename or {}
    rows, cols = {}, []
    for p in paths:
        d = json.load(open(p))
        for c in d["mean"]:
            cc = rename.get(c, c)
            if cc not in cols:
                cols.append(cc)
        for r in d["rows"]:
            row = rows.setdefault((r["shard"], r["object"]), {"shard": r["shard"], "object": r["object"]})
            row.update({rename.get(k, k): v for k, v in r.items() if k not in ("shard", "object")})
    return list(rows.values()), cols


def table(rows, cols, group) -> str:
    sel = [r for r in rows if r["shard"].startswith(group) and all(c in r for c in cols)]
    out = [f"| object (n) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for o in sorted({r["object"] for r in sel}):
        rs = [r for r in sel if r["object"] == o]
        out.append(f"| {o} ({len(rs)}) | " + " | ".join(f"{np.mean([r[c] for r in rs]):.3f}" for c in cols) + " |")
    out.append(f"| **mean ({len(sel)})** | " + " | ".join(f"**{np.mean([r[c] for r in sel]):.3f}**" for c in cols) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--rename", nargs="*", default=[])
    ap.add_argument("--groups", nargs="*", default=["openkbp", "abdomen"])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rows, cols = merge(a.files, dict(kv.split("=", 1) for kv in a.rename))
    for g in a.groups:
        print(f"\n### {g}\n\n{table(rows, cols, g)}")
    if a.json:
        json.dump({"columns": cols, "rows": rows}, open(a.json, "w"), indent=0)


if __name__ == "__main__":
    main()
