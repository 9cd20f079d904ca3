"""Shards, cached image embeddings and batches of prompted samples.

A *sample* is (shard, slice, object label): the slice's image embedding, the object's
ground truth in the model frame ``(256, 256)``, and one prompt generated from the ground
truth (``training.noise``), converted to the model frame with the SAME code as inference
(:class:`RadSAMLib.preprocess.SliceFrame` and, inside the model, ``mask_prompt_logits``).
Objects are drawn balanced over object classes (each class, e.g. "SpinalCord", weighs the
same within its shard group), then a slice uniformly among the object's slices with body
content.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from RadSAMLib.files import atomic_write
from RadSAMLib.preprocess import SliceFrame
from RadSAMLib.propagation import grow_mask
from RadSAMLib.prompts import box_of_mask

from .noise import NoiseSpec, correction_point, jittered_box, noisy_mask, random_box, sample_point

# "random_box": a box anywhere on the slice; trained only toward the frozen base model's
# answer (``distill_weight``), never toward a label.
KINDS = ("box", "points", "mask", "mask+box", "mask+point", "random_box")


@dataclass
class Shard:
    """One packed volume (see ``training/pack.py``): ``ct``/``lab`` uint8 ``(n, rows, cols)``."""

    name: str
    ct: np.ndarray
    lab: np.ndarray
    body: np.ndarray
    objects: dict      # label value -> name
    z0: int

    @classmethod
    def load(cls, path) -> "Shard":
        with np.load(path) as z:
            return cls(Path(path).stem, z["ct"], z["lab"], z["body"].astype(bool),
                       {int(v): str(n) for v, n in zip(z["objects"], z["names"])}, int(z["z0"]))

    @property
    def slice_shape(self) -> tuple:
        return tuple(self.ct.shape[1:])

    def slices_of(self, label: int) -> np.ndarray:
        """Local slice indices where ``label`` is present and the CT has body content."""
        return np.nonzero((self.lab == label).reshape(len(self.lab), -1).any(1) & self.body)[0]

    def image(self, z: int) -> torch.Tensor:
        """``(3, S, S)`` model input of slice ``z`` (S = 256), via the inference framing."""
        return SliceFrame(self.slice_shape, 256).image_to_model(self.ct[z].astype(np.float32) / 255.0)


def expand(patterns) -> list:
    out = []
    for p in patterns:
        out += sorted(glob.glob(str(p)))
    return out


def load_shards(patterns) -> list:
    paths = expand(patterns)
    if not paths:
        raise FileNotFoundError(f"no shards match {list(patterns)} (run python -m training.pack first)")
    return [Shard.load(p) for p in paths]


# -- embeddings --------------------------------------------------------------------------
class EmbeddingStore:
    """Frozen-encoder embeddings of every packed slice: ``store[shard_name]`` is a fp16
    ``(n, 256, 64, 64)`` tensor on the training device. Optional on-disk cache (CPU path)."""

    def __init__(self):
        self.emb: dict = {}

    def __getitem__(self, name):
        return self.emb[name]

    def __contains__(self, name):
        return name in self.emb

    @staticmethod
    def cache_folder(model, cache_dir) -> Path:
        """Where ``model``'s embeddings are cached under ``cache_dir``: filed under the
        encoder's weights, so a fully fine-tuned encoder's can never be mistaken for the base's."""
        from RadSAMLib.accel.cache import weights_sha256
        return Path(cache_dir) / weights_sha256(model.image_encoder)[:16]

    @staticmethod
    def cache_file(folder, shard_name: str) -> Path:
        return Path(folder) / f"{shard_name}.emb.pt"

    @torch.no_grad()
    def build(self, model, shards, cache_dir: str = "", batch: int = 32, progress=None, encode=None) -> "EmbeddingStore":
        """Embeddings of every slice of ``shards`` by ``encode`` (default: the engine's
        fastest path equal to eager fp32, built once per model object: pass
        ``model.encode`` for a model whose encoder weights are changing)."""
        dev = model.device
        folder = self.cache_folder(model, cache_dir) if cache_dir else None
        for sh in shards:
            if sh.name in self.emb:
                continue
            path = self.cache_file(folder, sh.name) if folder is not None else None
            if path is not None and path.is_file():
                self.emb[sh.name] = torch.load(path, map_location=dev, weights_only=True)
                continue
            if encode is None:
                # The engine's fastest path equal to eager fp32 (ONNX Runtime on a CPU: 2.7x).
                from RadSAMLib.accel import make_encoder
                encode = make_encoder(model)
            parts = []
            for b in range(0, len(sh.ct), batch):
                imgs = torch.stack([sh.image(z) for z in range(b, min(len(sh.ct), b + batch))])
                parts.append(encode(imgs.to(dev)).to(dev, torch.float16))
            self.emb[sh.name] = torch.cat(parts)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp, e=self.emb[sh.name]: torch.save(e.cpu(), tmp), suffix=".pt")
            if progress:
                progress(sh.name, len(sh.ct))
        return self


# -- samples ------------------------------------------------------------------------------
class SampleIndex:
    """All (shard, slice, label) samples with their balanced sampling probabilities.

    Each class (shard group, object name) weighs its group's weight (``group_weights``,
    by shard-name prefix; 1 by default) shared among the group's classes, times its
    ``class_weights`` entry (by object-name prefix; 1 by default)."""

    def __init__(self, shards, group_weights: dict | None = None, class_weights: dict | None = None):
        group_weights = group_weights or {}
        class_weights = class_weights or {}
        rows, cls = [], []
        for s, sh in enumerate(shards):
            for v, name in sh.objects.items():
                for z in sh.slices_of(v):
                    rows.append((s, int(z), v))
                    cls.append((self._group(sh.name, group_weights), name))
        if not rows:
            raise ValueError("the shards hold no labelled slice with body content")
        self.rows = np.array(rows, dtype=np.int64)
        keys = {k: i for i, k in enumerate(sorted(set(cls)))}
        names = [n for _, n in sorted(keys, key=keys.get)]
        cid = np.array([keys[c] for c in cls])
        count = np.bincount(cid)
        groups = sorted({g for g, _ in keys})
        w = np.zeros(len(rows))
        for g in groups:
            ids = [i for (gg, _), i in keys.items() if gg == g]
            gw = float(group_weights.get(g, 1.0)) if g else 1.0
            for i in ids:  # each class weighs gw / (classes in the group)
                w[cid == i] = gw / len(ids) / count[i] * self._weight(names[i], class_weights)
        self.p = w / w.sum()
        self.classes = {c: int(count[i]) for c, i in keys.items()}

    @staticmethod
    def _group(name, weights):
        for prefix in sorted(weights, key=len, reverse=True):
            if name.startswith(prefix):
                return prefix
        return ""

    @classmethod
    def _weight(cls, name, weights) -> float:
        prefix = cls._group(name, weights)
        return float(weights[prefix]) if prefix else 1.0

    def draw(self, rng, n):
        return self.rows[rng.choice(len(self.rows), size=n, p=self.p)]


def _neighbor_gt(sh: Shard, z: int, label: int, rng, max_off: int) -> np.ndarray:
    offs = [d for d in range(-max_off, max_off + 1) if d and 0 <= z + d < len(sh.lab)]
    rng.shuffle(offs)
    for d in sorted(offs, key=abs):  # nearest first, random side
        m = sh.lab[z + d] == label
        if m.any():
            return m
    return sh.lab[z] == label


def make_prompt(sh: Shard, z: int, label: int, kind: str, cfg, rng, n_points: int = 1):
    """One sample's prompt in slice coordinates: dict(box, points, labels, mask)."""
    gt = sh.lab[z] == label
    frame = SliceFrame(sh.slice_shape, 256)
    p = {"box": None, "points": [], "labels": [], "mask": None}
    if "mask" in kind:
        src = _neighbor_gt(sh, z, label, rng, cfg.neighbor_max_offset) if rng.random() < cfg.neighbor_prob else gt
        p["mask"] = noisy_mask(src, rng, NoiseSpec(**cfg.noise))
    if kind == "box":
        p["box"] = jittered_box(gt, rng, cfg.box_jitter_px / frame.scale)
    elif kind == "mask+box":
        lo, hi = cfg.mask_box_margin
        p["box"] = box_of_mask(p["mask"], margin=rng.uniform(lo, hi) / frame.scale)
    elif kind == "points":
        for _ in range(n_points):
            p["points"].append(sample_point(gt, rng, interior=rng.random() < 0.7))
            p["labels"].append(1)
    elif kind == "mask+point":
        fix = correction_point(p["mask"], gt, rng)
        if fix is None:  # the noisy mask happens to be perfect: a positive click inside
            fix = (sample_point(gt, rng), 1)
        p["points"], p["labels"] = [fix[0]], [fix[1]]
    elif kind == "random_box":
        p["box"] = random_box(sh.slice_shape, rng)
    if p["mask"] is not None and cfg.mask_prompt_grow:
        # Inference grows the mask prompt the same way (Strategy.grow).
        p["mask"] = grow_mask(p["mask"], cfg.mask_prompt_grow / frame.scale)
    return p


def to_model_frame(sh: Shard, z: int, label: int, prompt: dict, mask_size: int) -> dict:
    """Prompt + target -> model-frame arrays, through the inference code paths."""
    f = SliceFrame(sh.slice_shape, 256)
    gt = sh.lab[z] == label
    r, c = f.resized_shape
    valid = torch.zeros(256, 256, dtype=torch.bool)  # the slice's part of the padded frame
    valid[:r, :c] = True
    out = {"target": (f.mask_to_model(gt) > 0.5).float(), "valid": valid}
    if prompt["box"] is not None:
        out["box"] = torch.as_tensor(f.box_to_model(prompt["box"]), dtype=torch.float32)
    if prompt["points"]:
        out["points"] = torch.as_tensor(f.slice_to_model(np.asarray(prompt["points"], np.float64)), dtype=torch.float32)
        out["labels"] = torch.as_tensor(prompt["labels"], dtype=torch.float32)
    if prompt["mask"] is not None:
        out["mask"] = f.mask_to_model(prompt["mask"], size=mask_size)
    return out


class BatchStream(torch.utils.data.IterableDataset):
    """Endless batches; every batch has one prompt kind (so prompt tensors stack).

    A batch also says how many correction rounds precede its trained decode (``rounds``:
    0, or with ``click_prob`` 1..``click_rounds``; never for ``random_box``) and whether its
    prompt is a lone point (``single_point``: ambiguous, trained with the multimask rule)."""

    def __init__(self, shards, index: SampleIndex, cfg, seed: int, mask_size: int, with_images: bool = False):
        self.shards, self.index, self.cfg, self.seed = shards, index, cfg, seed
        self.mask_size = mask_size  # the model's mask-prompt side (256 for LiteMedSAM)
        self.with_images = with_images
        kinds = [k for k in cfg.prompt_mix if cfg.prompt_mix[k] > 0]
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown prompt kinds {bad} (choose from {', '.join(KINDS)})")
        w = np.array([cfg.prompt_mix[k] for k in kinds], dtype=np.float64)
        self.kinds, self.kind_p = kinds, w / w.sum()

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield self.batch(rng)

    def batch(self, rng) -> dict:
        kind = str(rng.choice(self.kinds, p=self.kind_p))
        n_points = int(rng.integers(1, 4))
        items = []
        rows = self.index.draw(rng, self.cfg.batch_size)
        for s, z, v in rows:
            sh = self.shards[s]
            it = to_model_frame(sh, z, v, make_prompt(sh, z, v, kind, self.cfg, rng, n_points), self.mask_size)
            if self.with_images:
                it["image"] = sh.image(z)
            items.append(it)
        out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        out["kind"] = kind
        rounds = 0
        if kind != "random_box" and self.cfg.click_rounds > 0 and rng.random() < self.cfg.click_prob:
            rounds = int(rng.integers(1, self.cfg.click_rounds + 1))
        out["rounds"] = rounds
        out["single_point"] = kind == "points" and n_points == 1
        out["shard"] = torch.as_tensor(rows[:, 0])
        out["z"] = torch.as_tensor(rows[:, 1])
        return out


def batch_embeddings(store: EmbeddingStore, shards, batch: dict) -> torch.Tensor:
    """The batch's image embeddings ``(B, 256, 64, 64)`` (fp16, on the store's device)."""
    return torch.stack([store[shards[int(s)].name][int(z)] for s, z in zip(batch["shard"], batch["z"])])
