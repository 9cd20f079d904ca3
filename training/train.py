"""The training loop: ``python -m training.train training/configs/gpu.json [--set key=json ...]``.

Trains ``cfg.train_parts`` with Adam at a constant learning rate: by default the prompt
encoder + mask decoder on cached embeddings of the frozen image encoder; with
``image_encoder`` in the parts, full fine-tuning (every batch through the encoder; bf16
autocast on a GPU with ``amp``). Writes to ``cfg.out_dir``:
``ckpt-STEP.pt`` (model parts, optimizer, step, config; the last ``keep_checkpoints``;
``last.pt`` is the newest; a run resumes from the newest readable one), ``log.csv`` (one
row per step), ``val.csv`` (periodic volume-level validation), ``best.pt`` and the
exported delta ``radsam_litemedsam.safetensors`` (+ ``.json``) of the best validation.
Every file is written to a temporary name and renamed: a run killed mid-write leaves the
previous file, never a truncated one.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

from RadSAMLib.files import atomic_write

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


CHECKPOINT = "ckpt-{:07d}.pt"
# Keys a rank may set for itself (its own disk, GPU, loader); any other key must agree.
LOCAL_KEYS = ("out_dir", "embed_cache", "workers", "device", "dist_timeout_min")


def _checkpoint_step(path: Path):
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def checkpoints(out) -> list:
    """A run folder's checkpoints to resume from, newest first: the numbered ones, or
    ``last.pt`` alone in a folder from before numbered checkpoints."""
    out = Path(out)
    nums = sorted((p for p in out.glob("ckpt-*.pt") if _checkpoint_step(p) is not None),
                  key=_checkpoint_step, reverse=True)
    return nums or [p for p in [out / "last.pt"] if p.is_file()]


def _link_or_copy(src: Path, tmp: str) -> None:
    os.unlink(tmp)
    try:
        os.link(src, tmp)       # last.pt costs no space where the file system has hard links
    except OSError:
        shutil.copyfile(src, tmp)


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
    if cfg.keep_checkpoints < 1 or not cfg.dist_timeout_min > 0:
        raise ValueError("keep_checkpoints must be >= 1 and dist_timeout_min > 0")


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
        self.stop_requested = False     # a rank reached max_minutes (they agree at each step)
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
        self.index = SampleIndex(self.shards, cfg.shard_weights, cfg.class_weights)
        self.log(f"samples: {len(self.index.rows)} (slice, object) pairs, {len(self.index.classes)} object classes")

    def _load_newest(self):
        """The newest readable checkpoint of ``out_dir``: (path, state) or (None, None)."""
        for path in checkpoints(self.out):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                step, best = int(state["step"]), float(state["best"])
                model, optimizer = state["model"], state["optimizer"]
            except Exception as e:  # noqa: BLE001 (truncated, foreign, ...: any unreadable file)
                self.log(f"warning: checkpoint {path} is unreadable ({str(e).splitlines()[0][:200]}); "
                         "trying the one before it")
                continue
            return path, {"model": model, "optimizer": optimizer, "step": step, "best": best}
        return None, None

    def _resume(self):
        """Rank 0 resumes from its newest readable checkpoint, and every rank takes rank 0's
        trained parts, optimizer state and step: the ranks cannot start apart, even when each
        one's ``out_dir`` is on its own disk (only rank 0's is read and written)."""
        newest = checkpoints(self.out)
        local = {k: v for k, v in self.cfg.to_dict().items() if k not in LOCAL_KEYS}
        seen = dist.gather({"host": socket.gethostname(), "out_dir": str(self.out.resolve()),
                            "newest": newest[0].name if newest else None,
                            "base": self.model.info.sha256, "config": local})
        self._check_agreement(seen)
        path, state = self._load_newest() if dist.is_main() else (None, None)
        if path is not None:
            self._load_state(state)
            self.log(f"resumed from {path} at step {self.step}")
        elif dist.is_main() and newest:
            self.log(f"warning: no readable checkpoint in {self.out}: starting at step 0")
        if dist.world() > 1:
            # Another newest checkpoint than rank 0's: that rank's out_dir is another folder
            # (a node-local disk), which nothing reads: say so, the run goes on from rank 0's.
            other = [r for r, s in enumerate(seen) if s["newest"] != seen[0]["newest"]]
            if other:
                s = seen[other[0]]
                who = (f"rank {other[0]} ({s['host']}: {s['out_dir']})" if len(other) == 1 else
                       f"ranks {', '.join(map(str, other))} (rank {other[0]}: {s['host']}: {s['out_dir']})")
                self.log(f"warning: {who} "
                         + (f"found checkpoint {s['newest']}" if s["newest"] else "found no checkpoint")
                         + f" where rank 0 ({seen[0]['host']}: {seen[0]['out_dir']}) found "
                         + (seen[0]["newest"] or "none")
                         + f": every rank continues from rank 0's state (step {self.step}); only rank 0's "
                           "out_dir is read and written (docs/scaling_out.md)")
            state = dist.from_main({"model": _trained_state(self.model, self.cfg.train_parts),
                                    "optimizer": self.opt.state_dict(), "step": self.step, "best": self.best}
                                   if dist.is_main() else None)
            if not dist.is_main():
                self._load_state(state)

    def _load_state(self, state):
        self.model.load_state_dict(state["model"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.best = int(state["step"]), float(state["best"])

    @staticmethod
    def _check_agreement(seen):
        """Refuse ranks that run another configuration or base model than rank 0."""
        for r, s in enumerate(seen[1:], 1):
            keys = sorted(k for k in set(s["config"]) | set(seen[0]["config"])
                          if s["config"].get(k) != seen[0]["config"].get(k))
            if keys:
                raise ValueError(f"rank {r} ({s['host']}) runs another configuration than rank 0 "
                                 f"({seen[0]['host']}): " + ", ".join(
                                     f"{k}={s['config'].get(k)!r} vs {seen[0]['config'].get(k)!r}" for k in keys)
                                 + "; run the same command and config on every node")
            if s["base"] != seen[0]["base"]:
                raise ValueError(f"rank {r} ({s['host']}) loaded other base weights than rank 0 "
                                 f"({seen[0]['host']}): sha256 {s['base'][:12]} vs {seen[0]['base'][:12]}")

    def save(self, path):
        """Write a checkpoint to ``path`` by an atomic rename (rank 0 only)."""
        if not dist.is_main():
            return
        state = {"model": _trained_state(self.model, self.cfg.train_parts), "optimizer": self.opt.state_dict(),
                 "step": self.step, "best": self.best, "config": json.dumps(self.cfg.to_dict())}
        atomic_write(path, lambda tmp: torch.save(state, tmp), suffix=".pt")

    def save_checkpoint(self):
        """``ckpt-STEP.pt``, ``last.pt`` = it, and only the last ``keep_checkpoints`` kept."""
        if not dist.is_main():
            return
        path = self.out / CHECKPOINT.format(self.step)
        self.save(path)
        atomic_write(self.out / "last.pt", lambda tmp: _link_or_copy(path, tmp), suffix=".pt")
        for old in checkpoints(self.out)[self.cfg.keep_checkpoints:]:
            if old.name != "last.pt":
                old.unlink(missing_ok=True)

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
            loss, parts = loss_fn(logits, iou, b["target"].to(self.dev), cfg.alt_weight, cfg.iou_weight, ambiguous,
                                  cfg.rank_weight)
        if cfg.l2sp:
            loss = loss + cfg.l2sp * sum(((p - self.base[n]) ** 2).sum()
                                         for n, p in model.named_parameters() if n in self.base)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # One sync per step: whether a rank failed or reached max_minutes, and the ranks'
        # summed losses (what is logged is their mean, as one process on the union would).
        over = bool(cfg.max_minutes) and time.time() - self.t0 > 60 * cfg.max_minutes
        tot = dist.sync(values=[over, loss.item(), parts["primary"], parts["alt"], parts["iou_mse"]])
        dist.average_gradients(self.params)
        self.opt.step()
        self.step += 1
        self.stop_requested = tot[0] > 0
        n = dist.world()
        return tot[1] / n, {"primary": tot[2] / n, "alt": tot[3] / n, "iou_mse": tot[4] / n}

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
                b = next(it)
                loss, parts = self.train_step(b)
                if self.stop_requested and self.step < stop:
                    self.log(f"time limit of {cfg.max_minutes} min reached at step {self.step}")
                    stop = self.step  # then the final validation + save
                now = time.time()
                sps, tick = dist.world() * cfg.batch_size / max(now - tick, 1e-9), now
                losses.append(loss)
                logw.writerow([self.step, b["kind"], f"{loss:.5f}", f"{parts['primary']:.5f}", f"{parts['alt']:.5f}",
                               f"{parts['iou_mse']:.5f}", f"{sps:.1f}", f"{now - self.t0:.1f}", b.get("rounds", 0)])
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", sps=f"{sps:.0f}")
                if self.step % cfg.val_every == 0 or self.step == stop:
                    logf.flush()
                    self.validate()
                if self.step % cfg.save_every == 0 or self.step == stop:
                    self.save_checkpoint()
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
    """Train, validate, export; ``store`` may hold embeddings computed elsewhere.

    Under torchrun an exception on any rank ends every rank with
    :class:`distributed.RankFailed` (its message), and no rank returns before rank 0 has
    exported."""
    try:
        tr = Trainer(cfg, log, store)
        losses = tr.fit()
        path = tr.export() if dist.is_main() else None
        dist.sync()
    except Exception as e:  # noqa: BLE001 (any failure must reach the other ranks)
        dist.fail(e)
    return {"losses": losses, "best": tr.best, "first": tr.first, "export": path and str(path), "step": tr.step}


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
    try:
        run(cfg, log=print if dist.is_main() else lambda *a: None)
    except dist.RankFailed as e:
        # Every rank says why the run stopped (each node's log shows the cause); the
        # failing rank's own traceback first.
        if e.__cause__ is not None:
            import traceback
            traceback.print_exception(type(e.__cause__), e.__cause__, e.__cause__.__traceback__)
        print(f"error: {e}", file=sys.stderr, flush=True)
        try:    # else gloo's threads may abort the exit, and the run ends by SIGABRT instead of 1
            dist.teardown()
        except Exception:  # noqa: BLE001 (a broken group: exiting is all that is left)
            pass
        sys.exit(1)
    dist.teardown()


if __name__ == "__main__":
    main()
