"""The volume-level protocol on packed volumes, with embeddings already computed.

For each object: the ground-truth box of its largest slice is the one prompt (``start=
"point"``: one positive point at that slice's deepest object pixel, the challenge user's
first click), the true bottom/top slices (restricted to slices with body content) are the bounds, and
:class:`RadSAMLib.session.Session` propagates with a strategy; the score is the 3D Dice
over the bounds. ``"slice"`` instead prompts every slice with its own ground-truth box
(slice-level prompting, the upper reference).
"""
from __future__ import annotations

import numpy as np

from RadSAMLib.engine import SliceEngine
from RadSAMLib.metrics import dice
from RadSAMLib.prompts import SlicePrompt, box_of_mask
from RadSAMLib.config import RadSAMConfig
from RadSAMLib.session import Session

from .noise import error_click
from .pack import u8_to_hu


def engine_for(model, shard, embeddings, fast: bool = True) -> SliceEngine:
    """A SliceEngine over the shard whose embedding cache is already filled.

    ``fast=False`` decodes with the model's own PyTorch modules: a model being trained must,
    since a fast path (an exported ONNX graph) is built once per model object and would
    keep the weights it was built with."""
    eng = SliceEngine(model, u8_to_hu(shard.ct), axis=0, encoder_backend="torch",
                      decoder_backend="auto" if fast else "eager")
    eng.set_embeddings(embeddings[:len(shard.ct)])
    return eng


def gt_box(mask):
    """Tight box of a slice mask, widened to 2 pixels where the object is 1 pixel thin
    (a degenerate box is not a valid prompt)."""
    x0, y0, x1, y1 = box_of_mask(mask)
    rows, cols = mask.shape
    if x1 <= x0:
        x0, x1 = (x0, x0 + 1) if x0 + 1 <= cols - 1 else (x0 - 1, x0)
    if y1 <= y0:
        y0, y1 = (y0, y0 + 1) if y0 + 1 <= rows - 1 else (y0 - 1, y0)
    return (x0, y0, x1, y1)


def start_prompt(gt_slice, start: str = "box") -> SlicePrompt:
    """The first prompt on the start slice: its GT box, or one positive point at the object's
    deepest pixel (farthest from its border; ties by a fixed seed)."""
    if start == "box":
        return SlicePrompt(box=gt_box(gt_slice))
    if start == "point":
        (x, y), _ = error_click(np.zeros_like(gt_slice), gt_slice, np.random.default_rng(0), deepest_prob=1.0)
        return SlicePrompt(points=[(x, y)], labels=[1])
    raise ValueError(f"unknown start '{start}' (box, point)")


def object_dice(model, shard, embeddings, label: int, strategy: str, fast: bool = True, start: str = "box") -> float:
    gt = shard.lab == label
    zs = shard.slices_of(label)
    lo, hi = int(zs[0]), int(zs[-1])
    sess = Session(engine_for(model, shard, embeddings, fast),
                   RadSAMConfig(strategy=None if strategy == "slice" else strategy))
    if strategy == "slice":
        sess.segment_slices({int(z): start_prompt(gt[z], start) for z in zs})
    else:
        z0 = int(zs[np.argmax(gt[zs].reshape(len(zs), -1).sum(1))])
        sess.segment(z0, start_prompt(gt[z0], start), bounds=(lo, hi))
    return dice(sess.mask[lo:hi + 1], gt[lo:hi + 1])


def evaluate(models: dict, shards, store, max_objects: int | None = None, progress=None, fast: bool = True,
             start: str = "box") -> list:
    """``models``: column name -> (model, strategy); ``store``: the embeddings, or a dict
    column name -> its embeddings (models with different image encoders). Returns rows
    ``{"shard", "object", column: dice, ...}``. ``fast=False`` for a model in training."""
    rows = []
    for sh in shards:
        for v, name in sh.objects.items():
            if not len(sh.slices_of(v)):
                continue
            if max_objects is not None and len(rows) >= max_objects:
                return rows
            row = {"shard": sh.name, "object": name}
            for col, (m, strat) in models.items():
                st = store[col] if isinstance(store, dict) else store
                row[col] = object_dice(m, sh, st[sh.name], v, strat, fast, start)
            rows.append(row)
            if progress:
                progress(row)
    return rows


def means(rows, cols) -> dict:
    return {c: float(np.mean([r[c] for r in rows])) if rows else float("nan") for c in cols}
