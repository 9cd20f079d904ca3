"""The training loop: ``python -m training.train training/configs/gpu.json [--set key=json ...]``.

Trains ``cfg.train_parts`` with Adam at a constant learning rate: by default the prompt
encoder + mask decoder on cached embeddings of the frozen image encoder; with
``image_encoder`` in the parts, full fine-tuning (every batch through the encoder; bf16
autocast on a GPU with ``amp``). Writes to ``cfg.out_dir``:
``last.pt`` (model parts, optimizer, step, config; resumed automatically), ``log.csv``
(one row per step), ``val.csv`` (periodic volume-level validation), ``best.pt`` and the
exported delta ``radsam_litemedsam.safetensors`` (+ ``.json``) of the best validation.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist
from .config import Config
from .data import BatchStream, EmbeddingStore, SampleIndex, batch_embeddings, load_shards
from .export import export_delta
from .objective import decode_batch, loss_fn, seg_loss
from .validate import evaluate, means


def trainable(model, parts):
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for part in parts:
        if part not in ("image_encoder", "prompt_encoder", "mask_decoder"):
            raise ValueError(f"train_parts: unknown part '{part}' (image_encoder, prompt_encoder, mask_decoder)")
        mod = getattr(model, part)
        for p in mod.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def _trained_state(model, parts):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.split(".")[0] in parts}


def with_grow(spec: str, grow: float) -> str:
    """A mask strategy spec with the training's mask-prompt grow (unless it names one)."""
    from dataclasses import replace

    from RadSAMLib.propagation import Strategy
    st = Strategy.parse(spec)
    return replace(st, grow=grow).spec() if st.uses_mask and not st.grow else spec


def init_weights(model, cfg: Config) -> None:
    """Start from the trained parts of the RadSAM delta ``cfg.init_from`` (same base model)."""
    from RadSAMLib.models.registry import read_delta
    tensors, record = read_delta(cfg.init_from)
    if record["base_model"] != cfg.base_model or record.get("base_sha256", model.info.sha256) != model.info.sha256:
        raise ValueError(f"init_from {cfg.init_from} was trained on {record['base_model']}, not on this {cfg.base_model}")
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=False)


def distill_loss(teacher, b, logits, amp: bool, emb=None):
    """Learning without forgetting: Dice + BCE of the student's primary output against the
    frozen base model's probabilities for the same prompt (``random_box`` batches: a box
    anywhere on the slice). Head-and-neck labels teach small organs only; the fine-tunes
    that learned from them alone came to under-segment large ones (the liver's largest
    slice: 1139 of 2083 pixels from a box), and this term keeps the base's box behaviour
    on every object size instead."""
    dev = teacher.device
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        if emb is None:  # full fine-tuning: the teacher's own (base) embedding
            emb = teacher.image_encoder(teacher.normalize(b["image"].to(dev)))
        t_logits, _ = decode_batch(teacher, emb.detach(), b.get("box"), b.get("points"), b.get("labels"))
    soft = torch.sigmoid(t_logits[:, 0].float())
    return seg_loss(logits[:, :1].float(), soft).mean()


def run(cfg: Config, log=print, store: EmbeddingStore | None = None) -> dict:
    """Train, validate, export; ``store`` may hold embeddings computed elsewhere."""
    from RadSAMLib.models import load_model
    from tqdm import tqdm

    if cfg.prompt_mix.get("random_box", 0) > 0 and not cfg.distill_weight:
        raise ValueError("prompt kind 'random_box' needs distill_weight > 0 (it has no label to learn)")
    dist.setup(cfg)  # under torchrun: join the ranks (training/distributed.py)
    torch.manual_seed(cfg.seed)
    if cfg.mask_prompt_grow:  # validate and ship with the mask prompts it was trained on
        cfg.val_strategies = [with_grow(v, cfg.mask_prompt_grow) for v in cfg.val_strategies]
        cfg.default_strategy = with_grow(cfg.default_strategy, cfg.mask_prompt_grow)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(cfg.base_model, device=cfg.device)
    dev = model.device
    if cfg.init_from:
        init_weights(model, cfg)
    teacher = None
    if cfg.distill_weight:
        teacher = load_model(cfg.base_model, device=cfg.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    shards = load_shards(cfg.shards)
    val_shards = load_shards(cfg.val_shards) if cfg.val_shards else []
    # Full fine-tuning (the image encoder trains too): every batch goes through the encoder,
    # and validation re-encodes its slices with the current weights; otherwise every slice
    # is encoded once by the frozen encoder and cached.
    full = "image_encoder" in cfg.train_parts
    t0 = time.time()
    store = store or EmbeddingStore()
    if not full:
        dist.prefill_cache(model, shards + val_shards, cfg.embed_cache)
        store.build(model, shards + val_shards, cache_dir=cfg.embed_cache)
        n_slices = sum(len(s.ct) for s in shards + val_shards)
        log(f"embeddings: {n_slices} slices in {time.time() - t0:.1f} s on {dev}")
    index = SampleIndex(shards, cfg.shard_weights)
    log(f"samples: {len(index.rows)} (slice, object) pairs, {len(index.classes)} object classes")

    params = trainable(model, cfg.train_parts)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if cfg.l2sp else {}
    opt = torch.optim.Adam(params, lr=cfg.lr)
    step, best = 0, -1.0
    ck = out / "last.pt"
    if ck.is_file():  # resume
        state = torch.load(ck, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        log(f"resumed from {ck} at step {step}")

    stream = BatchStream(shards, index, cfg, seed=dist.rank_seed(cfg.seed * 1000 + step), mask_size=model.mask_input_size,
                         with_images=full)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                         persistent_workers=cfg.workers > 0)
    new_log = not (out / "log.csv").is_file()
    logf = open(out / "log.csv" if dist.is_main() else os.devnull, "a", newline="")
    logw = csv.writer(logf)
    if new_log:
        logw.writerow(["step", "kind", "loss", "primary", "alt", "iou_mse", "samples_per_s", "seconds"])

    def save(path):
        if not dist.is_main():
            return
        torch.save({"model": _trained_state(model, cfg.train_parts), "optimizer": opt.state_dict(),
                    "step": step, "best": best, "config": json.dumps(cfg.to_dict())}, path)

    def validate():
        nonlocal best
        if not val_shards or not dist.is_main():
            return None
        model.eval()
        val_store = store
        if full:  # the encoder has changed since the last validation: eager, never a cached path
            val_store = EmbeddingStore().build(model, val_shards, encode=model.encode)
        cols = {s: (model, s) for s in cfg.val_strategies}
        rows = evaluate(cols, val_shards, val_store, cfg.max_val_objects, fast=False)
        m = means(rows, cols)
        train_mode()
        new = not (out / "val.csv").is_file()
        with open(out / "val.csv", "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step"] + list(cols))
            w.writerow([step] + [f"{m[c]:.4f}" for c in cols])
        score = m.get(cfg.default_strategy, next(iter(m.values())))
        log(f"step {step}: validation " + ", ".join(f"{c} {v:.3f}" for c, v in m.items()))
        if score > best:
            best = score
            save(out / "best.pt")
        return m

    def train_mode():
        model.train()
        # Batch statistics of a few slices would overwrite the encoder's BatchNorm running
        # statistics (TinyViT's Conv2d_BN): they stay as pretrained.
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    first = validate() if step == 0 else None
    train_mode()
    losses = []
    bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2.0,
               disable=not dist.is_main())
    it = iter(loader)
    tick = time.time()
    stop = cfg.steps
    while step < stop:
        if cfg.max_minutes and dist.any_rank(time.time() - t0 > 60 * cfg.max_minutes) and step < stop:
            log(f"time limit of {cfg.max_minutes} min reached at step {step}")
            stop = step + 1  # one more step, then the final validation + save
        b = next(it)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp and dev.type == "cuda"):
            if full:
                emb = model.image_encoder(model.normalize(b["image"].to(dev)))
            else:
                emb = batch_embeddings(store, shards, b)
            logits, iou = decode_batch(model, emb, b.get("box"), b.get("points"), b.get("labels"), b.get("mask"))
        if b["kind"] == "random_box":
            d = distill_loss(teacher, b, logits, cfg.amp and dev.type == "cuda", emb if not full else None)
            loss, parts = cfg.distill_weight * d, {"primary": d.item(), "alt": 0.0, "iou_mse": 0.0}
        else:
            loss, parts = loss_fn(logits, iou, b["target"].to(dev), cfg.alt_weight, cfg.iou_weight)
        if cfg.l2sp:
            loss = loss + cfg.l2sp * sum(((p - base[n]) ** 2).sum() for n, p in model.named_parameters() if n in base)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(params)
        opt.step()
        step += 1
        now = time.time()
        sps = cfg.batch_size / max(now - tick, 1e-9)
        tick = now
        losses.append(loss.item())
        logw.writerow([step, b["kind"], f"{loss.item():.5f}", f"{parts['primary']:.5f}", f"{parts['alt']:.5f}",
                       f"{parts['iou_mse']:.5f}", f"{sps:.1f}", f"{now - t0:.1f}"])
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", sps=f"{sps:.0f}")
        if step % cfg.val_every == 0 or step == stop:
            logf.flush()
            validate()
        if step % cfg.save_every == 0 or step == stop:
            save(ck)
    bar.close()
    logf.close()

    if not dist.is_main():
        return {"losses": losses, "best": best, "first": first, "export": None, "step": step}
    # Export the best validated weights (the step-0 base itself if training never beat it),
    # or the last ones (``export_from: last``, or no validation).
    if cfg.export_from == "best" and (out / "best.pt").is_file():
        model.load_state_dict(torch.load(out / "best.pt", map_location=dev, weights_only=True)["model"], strict=False)
    record = {"base_model": cfg.base_model, "default_strategy": cfg.default_strategy, "config": cfg.to_dict(),
              "data": {"shards": [s.name for s in shards], "val_shards": [s.name for s in val_shards],
                       "samples": int(len(index.rows)), "classes": sorted(f"{g}:{n}" if g else n for g, n in index.classes)},
              "validation_dice": {"best": best, "before": first}, "steps": step}
    if cfg.init_from:
        from RadSAMLib.models.registry import sha256_of
        record["init_from_sha256"] = sha256_of(Path(cfg.init_from))
    path = export_delta(model, cfg.train_parts, out / "radsam_litemedsam.safetensors", record)
    log(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB), best validation {best:.3f}")
    return {"losses": losses, "best": best, "first": first, "export": str(path), "step": step}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train RadSAM's mask-prompt model (see training/README.md)")
    ap.add_argument("config")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="override config keys")
    a = ap.parse_args(argv)
    over = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    cfg = Config.load(a.config, **over)
    dist.setup(cfg)
    run(cfg, log=print if dist.is_main() else lambda *a: None)
    dist.teardown()


if __name__ == "__main__":
    main()
