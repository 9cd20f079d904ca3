"""The RadSAM method: each slice is prompted by its neighbour's result.

Strategies, i.e. how the previous slice's mask becomes the next slice's prompt:

* ``mask``: the previous mask as the mask prompt (RadSAM; needs a model trained for it).
* ``box``: a box around the previous mask, grown by ``margin`` model-frame pixels (the
  SAM/MedSAM baseline). A tight box (margin 0) shrinks the object slice after slice: the
  base model was trained on boxes with slack around the object.
* ``mask+box``: both at once.
* ``hybrid``: the model is asked twice, with ``mask+box`` and with ``box`` alone, and the
  answer it scores higher (its predicted IoU) wins. A mask prompt keeps thin and
  low-contrast objects that a box loses to their neighbours; a box with slack lets an
  object grow back where a model given its neighbour's mask answers a little smaller on
  every slice. Both prompts have the same tokens, so they go to the decoder in one call
  where the decoder path takes batches (``RadSAMConfig.decoder_batch``); the work is still
  two prompts' (docs/benchmark/speed.md).

A mask prompt can be grown by ``grow`` model-frame pixels before it is given, the mask
counterpart of the box margin: a model given its neighbour's exact mask may answer a
little smaller on every slice, and a grown prompt stops that shrinking. A model trained
with grown mask prompts (``training`` config ``mask_prompt_grow``) names its grow in its
default strategy. The figures behind these choices: docs/benchmark/design.md.

Spec strings: ``box``, ``box:5`` (margin 5), ``mask``, ``mask+box``, ``mask+box:5:4``
(margin 5, mask grown 4), ``mask::4`` (mask alone, grown 4), ``hybrid:5``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import RadSAMError
from .metrics import dice
from .prompts import SlicePrompt, box_of_mask

STRATEGIES = ("mask", "box", "mask+box", "hybrid")


@dataclass(frozen=True)
class Strategy:
    """How a slice's mask becomes its neighbour's prompt (``kind``: see the module doc);
    ``margin`` and ``grow`` are model-frame pixels (the box around the previous mask, and
    the growth of the mask prompt). Parse spec strings with :meth:`parse`."""

    kind: str = "box"
    margin: float = 5.0
    grow: float = 0.0

    def __post_init__(self):
        if self.kind not in STRATEGIES:
            raise RadSAMError(f"unknown propagation strategy '{self.kind}' (choose {', '.join(STRATEGIES)})")

    @classmethod
    def parse(cls, spec, default: str = "box") -> "Strategy":
        """``None``/``"auto"`` -> ``default``; else ``kind[:margin[:grow]]`` (see the module doc)."""
        if isinstance(spec, Strategy):
            return spec
        if spec in (None, "", "auto"):
            spec = default
        kind, *nums = str(spec).split(":")
        if len(nums) > 2:
            raise RadSAMError(f"strategy '{spec}': expected kind[:margin[:grow]]")
        try:
            vals = [float(v) if v else None for v in nums]
        except ValueError:
            raise RadSAMError(f"strategy '{spec}': margin and grow must be numbers (model-frame pixels)") from None
        kw = {k: v for k, v in zip(("margin", "grow"), vals) if v is not None}
        if any(not 0 <= v < float("inf") for v in kw.values()):  # NaN fails this too
            raise RadSAMError(f"strategy '{spec}': margin and grow must be finite and not negative")
        return cls(kind=kind, **kw)

    @property
    def uses_box(self) -> bool:
        return self.kind != "mask"

    @property
    def uses_mask(self) -> bool:
        return self.kind != "box"

    def spec(self) -> str:
        """The spec string that parses back to this strategy."""
        margin = f"{self.margin:g}" if self.uses_box else ""
        grow = f":{self.grow:g}" if self.grow and self.uses_mask else ""
        return f"{self.kind}:{margin}{grow}" if margin or grow else self.kind

    def candidates(self, prev: np.ndarray, scale: float) -> list:
        """The prompts a propagated slice is asked with; the best-scored answer wins
        (one prompt, except for ``hybrid``: its ``mask+box`` and its ``box``)."""
        if self.kind != "hybrid":
            return [self.prompt_from_mask(prev, scale)]
        return [self.prompt_from_mask(prev, scale), replace(self, kind="box").prompt_from_mask(prev, scale)]

    def prompt_from_mask(self, prev: np.ndarray, scale: float, extra_points=(), extra_labels=()) -> SlicePrompt:
        """The prompt for a slice whose neighbour (or own previous result) is ``prev``.

        ``scale`` is model-frame pixels per slice pixel. Positive ``extra_points`` widen
        the box so a correction outside the previous mask is inside the box prompt.
        ``hybrid`` gives its ``mask+box`` prompt here (see :meth:`candidates`).
        """
        box = None
        if self.uses_box:
            grow = self.margin / scale
            pos = [p for p, lab in zip(extra_points, extra_labels) if lab == 1]
            region = prev
            if pos:
                region = prev.copy()
                for x, y in pos:
                    region[int(round(y)), int(round(x))] = True
            box = box_of_mask(region, margin=grow)
        mask = None
        if self.uses_mask:
            mask = grow_mask(prev, self.grow / scale) if self.grow else prev
        return SlicePrompt(box=box, points=list(extra_points), labels=list(extra_labels), mask=mask)


def propagate(engine, strategy: Strategy, prev: np.ndarray, start: int, direction: int, within, *,
              bounded: bool, min_score: float, min_pixels: int, old=None, converge_dice: float = 1.0):
    """Prompt each slice from its neighbour, from ``start + direction`` outward; a generator.

    ``prev`` is slice ``start``'s bool mask ``(rows, cols)``; ``within(k)`` is False where
    the run must stop (a bound, or an anchor whose own prompt outranks propagation). Yields
    ``(k, result, source)`` per slice in order: ``result`` a :class:`SliceResult`, or
    ``None`` for a slice that becomes empty; ``source`` the anchor the slice now derives
    from (``start``), or ``None`` when the slice only marks where the object ended. Each
    slice is predicted when the caller asks for it, so a caller that stops iterating stops
    the model. ``bounded``: the user gave the object's extent (``within``); without it the
    run stops where the object ends (predicted IoU below ``min_score`` or fewer than
    ``min_pixels`` pixels). With ``old(k)`` (the slice's mask before this run) the run
    also stops at the first slice whose new mask agrees with its old one (Dice at least
    ``converge_dice``): beyond it the old result is what the new one would be.
    """
    k = start + direction
    while within(k):
        if prev.sum() < min_pixels:
            if not bounded:
                return
            # The object was lost: the rest of this run is empty, not stale.
            yield k, None, start
            k += direction
            continue
        r = engine.predict_best(k, strategy.candidates(prev, engine.frame.scale))
        if not bounded and (r.score < min_score or r.mask.sum() < min_pixels):
            yield k, None, None
            return
        before = old(k) if old is not None else None
        yield k, r, start
        if before is not None and dice(r.mask, before) >= converge_dice:
            return
        prev = r.mask
        k += direction


def grow_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels with a disk (round growth, not square)."""
    if radius <= 0 or not mask.any():
        return mask
    import torch
    import torch.nn.functional as F
    r = int(np.floor(radius))
    if r == 0:
        return mask
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = torch.from_numpy(((yy ** 2 + xx ** 2) <= radius ** 2).astype(np.float32))[None, None]
    # Only a crop around the mask is convolved: whole 512x512 slices would cost ~10x more.
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - r), min(mask.shape[0], ys.max() + r + 1)
    x0, x1 = max(0, xs.min() - r), min(mask.shape[1], xs.max() + r + 1)
    crop = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.float32))[None, None]
    out = np.zeros(mask.shape, dtype=bool)
    out[y0:y1, x0:x1] = (F.conv2d(crop, disk, padding=r)[0, 0] > 0.5).numpy()
    return out
