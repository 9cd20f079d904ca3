"""Model backends. ``load_model`` is the one entry point."""
from .base import ModelInfo, SamFamilyModel
from .registry import MODEL_NAMES, load_model, pick_device

__all__ = ["ModelInfo", "SamFamilyModel", "MODEL_NAMES", "load_model", "pick_device"]
