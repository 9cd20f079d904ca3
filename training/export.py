"""Export the fine-tuned parts as a RadSAM delta: fp16 safetensors + a metadata record.

The record (JSON under the safetensors metadata key ``radsam``, also written beside the
file as ``.json``) names the base model and its SHA-256 (checked at load time by
``RadSAMLib.models.registry._build_radsam``), the default propagation strategy, the
training config, the data and the validation Dice.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def delta_tensors(model, parts) -> dict:
    """fp16 copies of the trained parts' parameters (state-dict keys)."""
    # Parameters only: fixed buffers (e.g. the positional-encoding matrix) stay the base's.
    return {k: v.detach().to("cpu", torch.float16).contiguous()
            for k, v in model.named_parameters() if k.split(".")[0] in parts}


def export_delta(model, parts, path, record: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "base_model" not in record:
        raise ValueError("the metadata record must name its base_model")
    record = {"base_sha256": model.info.sha256, **record}
    write_delta(path, delta_tensors(model, parts), record)
    return path


def write_delta(path: Path, tensors: dict, record: dict) -> None:
    """The safetensors file and its ``.json`` record, each by an atomic rename: a run
    killed while exporting leaves the previous delta, never a truncated one."""
    from safetensors.torch import save_file

    from RadSAMLib.files import atomic_write
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"radsam": json.dumps(record)}),
                 suffix=".safetensors")
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"),
                 suffix=".json")


def restamp(path, **extra) -> dict:
    """Add keys to a delta's metadata record (e.g. the benchmark results measured after
    training), rewriting the file with the same tensors; returns the new record."""
    from RadSAMLib.models.registry import read_delta

    path = Path(path)
    tensors, record = read_delta(path)
    record.update(extra)
    write_delta(path, tensors, record)
    return record


def export_checkpoint(checkpoint, out) -> Path:
    """A training checkpoint (``last.pt`` / ``best.pt``) -> a RadSAM delta, e.g. to evaluate
    the last weights of a run whose export was its best validation."""
    from RadSAMLib.models import load_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = json.loads(state["config"])
    model = load_model(cfg["base_model"], device="cpu")
    model.load_state_dict(state["model"], strict=False)
    record = {"base_model": cfg["base_model"], "default_strategy": cfg["default_strategy"], "config": cfg,
              "steps": int(state["step"]), "from_checkpoint": str(checkpoint)}
    return export_delta(model, cfg["train_parts"], out, record)


def interpolate(delta, alpha: float, out, default_strategy: str | None = None) -> Path:
    """Weight-space interpolation between the base model and a delta (WiSE-FT, Wortsman
    et al. 2022): every trained parameter becomes ``(1 - alpha) * base + alpha * delta``.

    Why: a fine-tune on one domain (head and neck) forgets the base's behaviour elsewhere
    (the abdomen's large organs); the midpoint of the two weight sets kept most of both,
    measured in docs/benchmark/training.md. ``alpha`` 0 is the base, 1 the delta."""
    from RadSAMLib.models import load_model
    from RadSAMLib.models.registry import read_delta, sha256_of

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    tensors, rec = read_delta(delta)
    # Through the loader, not the raw tensors: it refuses a delta made on another base
    # (SHA-256) or with tensors the base lacks, and interpolating those would be silent.
    tuned = dict(load_model(str(delta), device="cpu").named_parameters())
    model = load_model(rec["base_model"], device="cpu")
    own = dict(model.named_parameters())
    with torch.no_grad():
        for k in tensors:
            own[k].lerp_(tuned[k], alpha)
    parts = sorted({k.split(".")[0] for k in tensors})
    record = {"base_model": rec["base_model"],
              "default_strategy": default_strategy or rec.get("default_strategy", "mask+box"),
              "interpolation": {"alpha": alpha, "delta": Path(delta).name, "delta_sha256": sha256_of(Path(delta))},
              # what the delta was trained with, so the interpolated file still names its data
              "source": {k: rec[k] for k in ("run", "config", "data", "steps", "validation_dice") if k in rec}}
    return export_delta(model, parts, out, record)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="export a training checkpoint as a RadSAM delta, or (--alpha) "
                                             "interpolate a delta with its base model")
    ap.add_argument("source", help="a training checkpoint (.pt), or a delta (.safetensors) with --alpha")
    ap.add_argument("out")
    ap.add_argument("--alpha", type=float, help="weight of the delta: (1 - alpha) * base + alpha * delta")
    ap.add_argument("--strategy", help="the interpolated delta's default strategy (default: the source's)")
    a = ap.parse_args()
    if a.alpha is None:
        print(export_checkpoint(a.source, a.out))
    else:
        print(interpolate(a.source, a.alpha, a.out, a.strategy))
