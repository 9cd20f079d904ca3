"""Which output to keep for a lone point: ``python -m training.point_choice MODEL [MODEL ...]``.

A diagnostic, not a benchmark: every slice of each abdominal evaluation organ gets one
positive point at its deepest object pixel (``validate.start_prompt``), and the mean
per-organ Dice over those slices is printed for three ways of reading the model's 4
outputs: the primary (what the inference engine keeps today), the alternative 1-3 with
the highest predicted IoU (SAM's multimask answer), and the best of all 4 by predicted IoU.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from RadSAMLib.metrics import dice
from RadSAMLib.preprocess import SliceFrame

from .data import EmbeddingStore, load_shards
from .validate import start_prompt

CHOICES = {
    "primary": lambda iou: 0,
    "alt_by_iou": lambda iou: 1 + int(np.argmax(iou[1:])),
    "all_by_iou": lambda iou: int(np.argmax(iou)),
}


def point_choice_dice(model, shard, embeddings) -> dict:
    """Choice name -> mean Dice over the shard's objects (slice-level, one point per slice)."""
    frame = SliceFrame(shard.slice_shape, 256)
    out = {k: [] for k in CHOICES}
    for v in shard.objects:
        gt = shard.lab == v
        zs = shard.slices_of(v)
        pred = {k: np.zeros_like(gt[zs]) for k in CHOICES}
        for i, z in enumerate(zs):
            p = start_prompt(gt[z], "point")
            with torch.no_grad():
                logits, iou = model.decode(embeddings[z:z + 1], points=frame.slice_to_model(np.asarray(p.points)),
                                           labels=p.labels)
            masks, iou = (frame.logits_to_slice(logits) > 0).numpy(), iou.numpy()
            for k, pick in CHOICES.items():
                pred[k][i] = masks[pick(iou)]
        for k in CHOICES:
            out[k].append(dice(pred[k], gt[zs]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def main(argv=None):
    from RadSAMLib.models import load_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--shard", default=".devpack-training/eval/abdomen_eval.npz")
    ap.add_argument("--embed-cache", default="runs/emb")
    a = ap.parse_args(argv)
    shard = load_shards([a.shard])[0]
    for spec in a.models:
        m = load_model(spec, device="cpu")
        emb = EmbeddingStore().build(m, [shard], cache_dir=a.embed_cache)[shard.name]
        print(spec, " ".join(f"{k}={v:.3f}" for k, v in point_choice_dice(m, shard, emb).items()), flush=True)


if __name__ == "__main__":
    main()
