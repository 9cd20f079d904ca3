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
from .objective import correction_rounds, decode_batch, loss_fn, seg_loss
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


def check_config(cfg: Config) -> None:
    """Refuse a configuration that cannot train, before any work."""
    if cfg.prompt_mix.get("random_box", 0) > 0 and not cfg.distill_weight:
        raise ValueError("prompt kind 'random_box' needs distill_weight > 0 (it has no label to learn)")
    if cfg.click_rounds < 0 or not 0 <= cfg.click_prob <= 1 or not 0 <= cfg.click_deepest_prob <= 1:
        raise ValueError("click_rounds must be >= 0, click_prob and click_deepest_prob in [0, 1]")


def train_mode(model) -> None:
    model.train()
    # Batch statistics of a few slices would overwrite the encoder's BatchNorm running
    # statistics (TinyViT's Conv2d_BN): they stay as pretrained.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


class Trainer:
    """One training run: the model, its data, the optimizer and the run folder's files."""

    LOG_COLUMNS = ["step", "kind", "loss", "primary", "alt", "iou_mse", "samples_per_s", "seconds", "rounds"]

    def __init__(self, cfg: Config, log=print, store: EmbeddingStore | None = None):
        from RadSAMLib.models import load_model
        check_config(cfg)
        dist.setup(cfg)  # under torchrun: join the ranks (training/distributed.py)
        torch.manual_seed(cfg.seed)
        if cfg.mask_prompt_grow:  # validate and ship with the mask prompts it was trained on
            cfg.val_strategies = [with_grow(v, cfg.mask_prompt_grow) for v in cfg.val_strategies]
            cfg.default_strategy = with_grow(cfg.default_strategy, cfg.mask_prompt_grow)
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.model = load_model(cfg.base_model, device=cfg.device)
        self.dev = self.model.device
        if cfg.init_from:
            init_weights(self.model, cfg)
        self.teacher = self._teacher(load_model) if cfg.distill_weight else None
        # Full fine-tuning (the image encoder trains too): every batch goes through the
        # encoder, and validation re-encodes its slices with the current weights; otherwise
        # every slice is encoded once by the frozen encoder and cached.
        self.full = "image_encoder" in cfg.train_parts
        self.amp = cfg.amp and self.dev.type == "cuda"
        self.t0 = time.time()
        self._load_data(store)
        params = self.params = trainable(self.model, cfg.train_parts)
        self.base = ({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
                     if cfg.l2sp else {})
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self.step, self.best, self.first = 0, -1.0, None
        self._resume()
        self.click_rng = np.random.default_rng([dist.rank_seed(cfg.seed), self.step, 7])

    def _teacher(self, load_model):
        teacher = load_model(self.cfg.base_model, device=self.cfg.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _load_data(self, store):
        cfg = self.cfg
        self.shards = load_shards(cfg.shards)
        self.val_shards = load_shards(cfg.val_shards) if cfg.val_shards else []
        self.store = store or EmbeddingStore()
        if not self.full:
            both = self.shards + self.val_shards
            dist.prefill_cache(self.model, both, cfg.embed_cache)
            self.store.build(self.model, both, cache_dir=cfg.embed_cache)
            self.log(f"embeddings: {sum(len(s.ct) for s in both)} slices in {time.time() - self.t0:.1f} s on {self.dev}")
        self.index = SampleIndex(self.shards, cfg.shard_weights)
        self.log(f"samples: {len(self.index.rows)} (slice, object) pairs, {len(self.index.classes)} object classes")

    def _resume(self):
        ck = self.out / "last.pt"
        if ck.is_file():
            state = torch.load(ck, map_location=self.dev, weights_only=True)
            self.model.load_state_dict(state["model"], strict=False)
            self.opt.load_state_dict(state["optimizer"])
            self.step, self.best = int(state["step"]), float(state["best"])
            self.log(f"resumed from {ck} at step {self.step}")

    def save(self, path):
        if not dist.is_main():
            return
        torch.save({"model": _trained_state(self.model, self.cfg.train_parts), "optimizer": self.opt.state_dict(),
                    "step": self.step, "best": self.best, "config": json.dumps(self.cfg.to_dict())}, path)

    def validate(self):
        """Volume-level Dice of every validation strategy; keeps ``best.pt``."""
        if not self.val_shards or not dist.is_main():
            return None
        cfg, model = self.cfg, self.model
        model.eval()
        val_store = self.store
        if self.full:  # the encoder has changed since the last validation: eager, never a cached path
            val_store = EmbeddingStore().build(model, self.val_shards, encode=model.encode)
        cols = {s: (model, s) for s in cfg.val_strategies}
        m = means(evaluate(cols, self.val_shards, val_store, cfg.max_val_objects, fast=False), cols)
        train_mode(model)
        new = not (self.out / "val.csv").is_file()
        with open(self.out / "val.csv", "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step"] + list(cols))
            w.writerow([self.step] + [f"{m[c]:.4f}" for c in cols])
        self.log(f"step {self.step}: validation " + ", ".join(f"{c} {v:.3f}" for c, v in m.items()))
        score = m.get(cfg.default_strategy, next(iter(m.values())))
        if score > self.best:
            self.best = score
            self.save(self.out / "best.pt")
        return m

    def embeddings(self, b):
        if self.full:
            return self.model.image_encoder(self.model.normalize(b["image"].to(self.dev)))
        return batch_embeddings(self.store, self.shards, b)

    def train_step(self, b) -> tuple:
        """One optimizer step on batch ``b`` (after its correction rounds); (loss, parts)."""
        cfg, model = self.cfg, self.model
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
            emb = self.embeddings(b)
            prompt = {k: b[k] for k in ("box", "points", "labels", "mask") if k in b}
            if b.get("rounds"):
                # Rounds without gradients, then one trained decode of the last prompt (as
                # RITM's iterative training): each round's loss would depend on the previous
                # only through a detached mask and a click, so per-round gradients add
                # correlated samples of one slice at a backward pass each; on a CPU the same
                # time buys more distinct slices.
                model.eval()
                prompt = correction_rounds(model, emb, b, b["rounds"], self.click_rng, cfg.click_deepest_prob)
                train_mode(model)
            logits, iou = decode_batch(model, emb, prompt.get("box"), prompt.get("points"), prompt.get("labels"),
                                       prompt.get("mask"))
        if b["kind"] == "random_box":
            d = distill_loss(self.teacher, b, logits, self.amp, emb if not self.full else None)
            loss, parts = cfg.distill_weight * d, {"primary": d.item(), "alt": 0.0, "iou_mse": 0.0}
        else:
            ambiguous = bool(b.get("single_point")) and not b.get("rounds")
            loss, parts = loss_fn(logits, iou, b["target"].to(self.dev), cfg.alt_weight, cfg.iou_weight, ambiguous)
        if cfg.l2sp:
            loss = loss + cfg.l2sp * sum(((p - self.base[n]) ** 2).sum()
                                         for n, p in model.named_parameters() if n in self.base)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        dist.average_gradients(self.params)
        self.opt.step()
        self.step += 1
        return loss.item(), parts

    def fit(self) -> list:
        """Steps until ``cfg.steps`` or ``max_minutes``; validates and checkpoints on schedule."""
        from tqdm import tqdm
        cfg = self.cfg
        stream = BatchStream(self.shards, self.index, cfg, seed=dist.rank_seed(cfg.seed * 1000 + self.step),
                             mask_size=self.model.mask_input_size, with_images=self.full)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                             persistent_workers=cfg.workers > 0)
        new_log = not (self.out / "log.csv").is_file()
        losses = []
        with open(self.out / "log.csv" if dist.is_main() else os.devnull, "a", newline="") as logf:
            logw = csv.writer(logf)
            if new_log:
                logw.writerow(self.LOG_COLUMNS)
            self.first = self.validate() if self.step == 0 else None
            train_mode(self.model)
            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True, mininterval=2.0,
                       disable=not dist.is_main())
            it, tick, stop = iter(loader), time.time(), cfg.steps
            while self.step < stop:
                if cfg.max_minutes and dist.any_rank(time.time() - self.t0 > 60 * cfg.max_minutes) and self.step < stop:
                    self.log(f"time limit of {cfg.max_minutes} min reached at step {self.step}")
                    stop = self.step + 1  # one more step, then the final validation + save
                b = next(it)
                loss, parts = self.train_step(b)
                now = time.time()
                sps, tick = cfg.batch_size / max(now - tick, 1e-9), now
                losses.append(loss)
                logw.writerow([self.step, b["kind"], f"{loss:.5f}", f"{parts['primary']:.5f}", f"{parts['alt']:.5f}",
                               f"{parts['iou_mse']:.5f}", f"{sps:.1f}", f"{now - self.t0:.1f}", b.get("rounds", 0)])
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", sps=f"{sps:.0f}")
                if self.step % cfg.val_every == 0 or self.step == stop:
                    logf.flush()
                    self.validate()
                if self.step % cfg.save_every == 0 or self.step == stop:
                    self.save(self.out / "last.pt")
            bar.close()
        return losses

    def export(self) -> Path:
        """The best validated weights (the step-0 base itself if training never beat it),
        or the last ones (``export_from: last``, or no validation), as a RadSAM delta."""
        cfg, model = self.cfg, self.model
        if cfg.export_from == "best" and (self.out / "best.pt").is_file():
            state = torch.load(self.out / "best.pt", map_location=self.dev, weights_only=True)
            model.load_state_dict(state["model"], strict=False)
        index = self.index
        record = {"base_model": cfg.base_model, "default_strategy": cfg.default_strategy, "config": cfg.to_dict(),
                  "data": {"shards": [s.name for s in self.shards], "val_shards": [s.name for s in self.val_shards],
                           "samples": int(len(index.rows)),
                           "classes": sorted(f"{g}:{n}" if g else n for g, n in index.classes)},
                  "validation_dice": {"best": self.best, "before": self.first}, "steps": self.step}
        if cfg.init_from:
            from RadSAMLib.models.registry import sha256_of
            record["init_from_sha256"] = sha256_of(Path(cfg.init_from))
        path = export_delta(model, cfg.train_parts, self.out / "radsam_litemedsam.safetensors", record)
        self.log(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB), best validation {self.best:.3f}")
        return path


def run(cfg: Config, log=print, store: EmbeddingStore | None = None) -> dict:
    """Train, validate, export; ``store`` may hold embeddings computed elsewhere."""
    tr = Trainer(cfg, log, store)
    losses = tr.fit()
    if not dist.is_main():
        return {"losses": losses, "best": tr.best, "first": tr.first, "export": None, "step": tr.step}
    path = tr.export()
    return {"losses": losses, "best": tr.best, "first": tr.first, "export": str(path), "step": tr.step}


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
