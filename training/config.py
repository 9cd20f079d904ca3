"""Training settings: one dataclass, read from a JSON file (``training/configs/*.json``).

Unknown keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class Config:
    # data
    shards: list = field(default_factory=list)       # glob patterns of training shards (training/pack.py)
    val_shards: list = field(default_factory=list)   # held-out shards for periodic validation
    shard_weights: dict = field(default_factory=dict)  # shard-name prefix -> sampling weight (default 1 per object)
    class_weights: dict = field(default_factory=dict)  # object-name prefix -> weight multiplier (default 1)
    max_val_objects: int = 12                        # validation objects (volume-level protocol)
    # prompts: kind -> probability (normalised); each batch uses one kind (data.KINDS)
    prompt_mix: dict = field(default_factory=lambda: {
        "box": 0.2, "points": 0.05, "mask": 0.25, "mask+box": 0.35, "mask+point": 0.15})
    neighbor_prob: float = 0.7      # mask prompts: a neighbouring slice's GT (else the same slice's)
    neighbor_max_offset: int = 1    # neighbour at +-1..this slices
    noise: dict = field(default_factory=lambda: {"rot_deg": 5.0, "scale": 0.10, "shift": 0.15, "morph": 5})
    box_jitter_px: float = 10.0     # model-frame pixels (GT box prompts)
    mask_box_margin: list = field(default_factory=lambda: [0.0, 8.0])  # model px, box around a mask prompt
    mask_prompt_grow: float = 0.0   # model px every mask prompt grows by (inference: the strategy's grow)
    # interactive rounds (SAM's recipe): before the trained decode, ``rounds`` correction
    # rounds run without gradients, each decoding the current prompt, then adding a click in
    # the error of the model's own prediction (training.noise.error_click) with that
    # prediction (binary, the inference encoding) as the mask prompt, the first prompt's box
    # kept. The trained decode sees the last round's prompt.
    click_rounds: int = 0           # max rounds per batch (uniform in 1..this); 0 = off
    click_prob: float = 0.5         # share of labelled batches with correction rounds
    click_deepest_prob: float = 0.5  # clicks at the error's deepest point (the challenge user), else its inner half
    # model
    base_model: str = "litemedsam"
    init_from: str = ""             # a RadSAM delta (.safetensors) to start from instead of the base weights
    train_parts: list = field(default_factory=lambda: ["prompt_encoder", "mask_decoder"])
    # loss
    alt_weight: float = 0.5         # min-loss over the 3 alternatives (SAM's ambiguity rule); for a
                                    # lone point (ambiguous) the best alternative is the answer
                                    # (weight 1) and the primary output gets this weight
    iou_weight: float = 1.0         # MSE of the IoU head against the true IoU, all 4 outputs
    rank_weight: float = 0.0        # pairwise hinge on the IoU head's order (objective.rank_loss):
                                    # the truly best output must lead every other by their IoU gap
    l2sp: float = 0.0               # pull toward the base weights (sum of squared differences)
    distill_weight: float = 0.0     # learning without forgetting: weight of the "random_box" batches'
                                    # loss, Dice+BCE of the primary output against the frozen base's
    # optimisation
    lr: float = 1e-5
    batch_size: int = 8
    steps: int = 1000
    max_minutes: float = 0.0        # stop early (then validate + export) after this wall time; 0 = no limit
    amp: bool = False               # bf16 autocast (GPU)
    seed: int = 0
    workers: int = 0
    # bookkeeping
    out_dir: str = "runs/radsam"
    embed_cache: str = ""           # folder for cached embeddings (CPU path); "" = memory only
    val_every: int = 500
    save_every: int = 500
    keep_checkpoints: int = 3       # numbered checkpoints kept (ckpt-STEP.pt; last.pt = the newest)
    dist_timeout_min: float = 30.0  # torchrun: the longest a rank waits for another (validation,
                                    # the cache fill) before a silent rank ends the run
    val_strategies: list = field(default_factory=lambda: ["mask", "mask+box"])
    default_strategy: str = "mask+box"
    export_from: str = "best"       # "best" validated weights (may be the base itself) or "last"
    device: str = "auto"

    @classmethod
    def load(cls, path, **overrides) -> "Config":
        raw = json.loads(Path(path).read_text())
        raw.update(overrides)
        known = {f.name for f in fields(cls)}
        bad = sorted(set(raw) - known - {"comment"})
        if bad:
            raise ValueError(f"unknown config keys in {path}: {', '.join(bad)}")
        raw.pop("comment", None)
        return cls(**raw)

    def to_dict(self) -> dict:
        return asdict(self)
