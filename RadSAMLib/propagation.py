"""The RadSAM method: each slice is prompted by its neighbour's result.

Strategies, i.e. how the previous slice's mask becomes the next slice's prompt:

* ``mask``: the previous mask as the mask prompt (RadSAM; needs a model trained for it).
* ``box``: a box around the previous mask, grown by ``margin`` model-frame pixels (the
  SAM/MedSAM baseline). A tight box (margin 0) shrinks the object slice after slice: the
  base model was trained on boxes with slack around the object.
* ``mask+box``: both at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import SlicePrompt, box_of_mask

STRATEGIES = ("mask", "box", "mask+box")


@dataclass(frozen=True)
class Strategy:
    kind: str = "box"
    margin: float = 5.0        # model-frame pixels around the previous mask's box (best of 0-8 on the abdominal example)
    min_score: float = 0.5     # unbounded propagation stops below this predicted IoU
    min_pixels: int = 1        # ... or when the mask has fewer pixels

    def __post_init__(self):
        if self.kind not in STRATEGIES:
            from .errors import RadSAMError
            raise RadSAMError(f"unknown propagation strategy '{self.kind}' (choose {', '.join(STRATEGIES)})")

    @classmethod
    def parse(cls, spec, default: str = "box") -> "Strategy":
        """``None``/``"auto"`` -> ``default``; ``"box"``, ``"box:2"`` (margin 2), ``"mask+box"``."""
        if isinstance(spec, Strategy):
            return spec
        if spec in (None, "", "auto"):
            spec = default
        kind, _, margin = str(spec).partition(":")
        return cls(kind=kind, margin=float(margin)) if margin else cls(kind=kind)

    def prompt_from_mask(self, prev: np.ndarray, scale: float, extra_points=(), extra_labels=()) -> SlicePrompt:
        """The prompt for a slice whose neighbour (or own previous result) is ``prev``.

        ``scale`` is model-frame pixels per slice pixel. Positive ``extra_points`` widen
        the box so a correction outside the previous mask is inside the box prompt.
        """
        box = None
        if "box" in self.kind:
            grow = self.margin / scale
            pos = [p for p, lab in zip(extra_points, extra_labels) if lab == 1]
            region = prev
            if pos:
                region = prev.copy()
                for x, y in pos:
                    region[int(round(y)), int(round(x))] = True
            box = box_of_mask(region, margin=grow)
        mask = prev if "mask" in self.kind else None
        return SlicePrompt(box=box, points=list(extra_points), labels=list(extra_labels), mask=mask)
