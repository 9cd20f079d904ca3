"""The models RadSAM knows by name: one list for the command line, the model registry and
the Slicer module's model choice.

Torch-free (no import beyond the standard library): ``radsam --help`` and the Slicer
module read it before torch is loaded, or installed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """One model. ``name``: what ``load_model`` and ``--model`` take; ``label``: the Slicer
    module's choice; ``description``: ``--help``; ``needs_checkpoint``: the user gives the
    weights file; ``default_strategy``: the propagation its weights are used with unless
    told otherwise (for ``radsam`` the bundled weights name it too, and must agree)."""

    name: str
    label: str
    description: str
    needs_checkpoint: bool
    default_strategy: str


# The base models propagate with a box around the previous mask grown by a margin (they were
# trained on boxes); the fine-tune asks with mask+box and with box (docs/benchmark/training.md).
MODELS = (
    ModelEntry("radsam", "RadSAM (default: LiteMedSAM fine-tuned for mask prompts)",
               "LiteMedSAM fine-tuned for mask prompts (bundled)", False, "hybrid:5"),
    ModelEntry("litemedsam", "LiteMedSAM (base model)", "the base LiteMedSAM (bundled)", False, "box"),
    ModelEntry("sam_vit_b", "SAM ViT-B (checkpoint file)", "Segment Anything ViT-B (--checkpoint)", True, "box"),
    ModelEntry("sam_vit_l", "SAM ViT-L (checkpoint file)", "Segment Anything ViT-L (--checkpoint)", True, "box"),
    ModelEntry("sam_vit_h", "SAM ViT-H (checkpoint file)", "Segment Anything ViT-H (--checkpoint)", True, "box"),
)

# The model used when none is named: the one that won the benchmark against the base
# model (docs/benchmark/training.md).
DEFAULT_MODEL = "radsam"

MODEL_NAMES = tuple(m.name for m in MODELS)


def entry(name: str) -> ModelEntry:
    """The catalogue entry of model ``name`` (KeyError if there is none)."""
    for m in MODELS:
        if m.name == name:
            return m
    raise KeyError(name)
