"""Base vs fine-tuned, volume-level protocol, on packed volumes (``training/pack.py``).

    python -m training.evaluate --shards 'DIR/openkbp_validation_*.npz' \\
        --col base_box5=litemedsam@box:5 --col base_slice=litemedsam@slice \\
        --col ft_mask=runs/gpu/radsam_litemedsam.safetensors@mask --out results.json

Each column is ``name=MODEL@STRATEGY`` (``slice`` = slice-level prompting of every slice).
``--start point`` prompts with one positive point at the object's deepest pixel instead of
its box (on the start slice, or on every slice for ``slice``).
All models must share the base image encoder (RadSAM deltas do), so every slice is
encoded once. Prints and writes per-object Dice and the means.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .data import EmbeddingStore, load_shards
from .validate import evaluate, means


def main(argv=None):
    ap = argparse.ArgumentParser(description="volume-level Dice, base vs fine-tuned")
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--col", action="append", required=True, metavar="NAME=MODEL@STRATEGY")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--start", choices=("box", "point"), default="box", help="the first prompt")
    ap.add_argument("--out")
    ap.add_argument("--embed-cache", default="", help="folder of cached embeddings (written when missing)")
    a = ap.parse_args(argv)
    from RadSAMLib.models import load_model

    loaded, cols = {}, {}
    for spec in a.col:
        name, _, rest = spec.partition("=")
        mname, _, strat = rest.rpartition("@")
        if mname not in loaded:
            loaded[mname] = load_model(mname, device=a.device)
        cols[name] = (loaded[mname], strat)
    # Deltas that did not train the image encoder share the base's: one encoding serves
    # every such column. A full fine-tune's columns get their own embeddings.
    from RadSAMLib.accel.cache import weights_sha256
    shards = load_shards(a.shards)
    stores, by_encoder = {}, {}
    for name, (m, _) in cols.items():
        key = weights_sha256(m.image_encoder)
        if key not in stores:
            t0 = time.time()
            stores[key] = EmbeddingStore().build(m, shards, cache_dir=a.embed_cache)
            print(f"encoded {sum(len(s.ct) for s in shards)} slices in {time.time() - t0:.1f} s", flush=True)
        by_encoder[name] = stores[key]
    t0 = time.time()
    rows = evaluate(cols, shards, by_encoder, progress=lambda r: print(
        r["shard"], r["object"], " ".join(f"{c}={r[c]:.3f}" for c in cols), flush=True), start=a.start)
    m = means(rows, cols)
    by_obj = {}
    for r in rows:
        by_obj.setdefault(r["object"], []).append(r)
    per_object = {o: {c: float(np.mean([r[c] for r in rs])) for c in cols} | {"n": len(rs)} for o, rs in by_obj.items()}
    print(f"evaluated {len(rows)} objects in {time.time() - t0:.1f} s")
    print("mean " + " ".join(f"{c}={v:.3f}" for c, v in m.items()))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"columns": {c: s for c, s in zip(cols, a.col)}, "start": a.start, "mean": m, "per_object": per_object,
                       "rows": rows, "n_objects": len(rows)}, f, indent=1)


if __name__ == "__main__":
    main()
