"""Everything between a CT slice and the model's input frame, in one place.

A slice is a 2D array ``(rows, cols)`` in Hounsfield units; prompts on it are pixel
coordinates ``(x, y) = (col, row)``. The model sees a square ``input_size`` frame: the
slice windowed to [0, 1], its longest side resized to ``input_size`` (aspect kept), zero
padding at the bottom and right, repeated over 3 channels. This is the framing the base
LiteMedSAM and SAM were trained with (and the one ``training/`` uses).

Coordinates map by pixel centres: slice pixel ``x`` covers ``[x - 0.5, x + 0.5]`` and maps
to model coordinate ``(x + 0.5) * scale - 0.5``. That is the convention of bilinear
resizing with ``align_corners=False``, so an image, a point on it and a mask resized with
it stay aligned, and ``model_to_slice(slice_to_model(p)) == p`` exactly (up to float).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# A binary mask is given to the model as logits of this magnitude (inside +, outside -).
# SAM's own low-resolution logits are of this order; training uses the same encoding.
MASK_PROMPT_LOGIT = 8.0


# Named windows (lo, hi) in HU: the soft-tissue default and Slicer's CT presets for the
# targets it hides (CT-Lung W 1400 L -500, CT-Bone W 1000 L 400).
WINDOW_PRESETS = {
    "soft-tissue": (-160.0, 240.0),
    "lung": (-1200.0, 200.0),
    "bone": (-100.0, 900.0),
}


@dataclass(frozen=True)
class Window:
    """CT intensity window in HU; the default is a soft-tissue window (W 400, L 40).

    The model sees nothing outside the window, so a target that is not soft tissue (lung,
    bone) needs a window that spans it: a preset (:meth:`preset`), the viewer's
    window/level (:meth:`from_level`), or one derived from the prompt region
    (:meth:`from_region`). Slices are encoded per window.
    """

    lo: float = -160.0
    hi: float = 240.0

    def __post_init__(self):
        if not self.hi > self.lo:
            raise ValueError(f"window upper bound {self.hi} must be above its lower bound {self.lo}")

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """HU array -> float32 in [0, 1]."""
        out = (np.asarray(hu, dtype=np.float32) - self.lo) / (self.hi - self.lo)
        return np.clip(out, 0.0, 1.0, out=out)

    @classmethod
    def preset(cls, name: str) -> "Window":
        if name not in WINDOW_PRESETS:
            raise ValueError(f"unknown window '{name}' (choose {', '.join(WINDOW_PRESETS)}, auto, or LO:HI in HU)")
        return cls(*WINDOW_PRESETS[name])

    @classmethod
    def from_level(cls, width: float, level: float) -> "Window":
        """A viewer's window/level (width and centre, HU)."""
        return cls(level - width / 2.0, level + width / 2.0)

    @classmethod
    def from_region(cls, hu, min_width: float = 400.0, step: float = 50.0) -> "Window":
        """A window spanning the intensities of a prompt region (its 1st to 99th
        percentile), at least ``min_width`` HU wide, rounded outwards to ``step`` HU (so
        nearby prompts share one window, and its encoded slices)."""
        values = np.asarray(hu, dtype=np.float64).ravel()
        if not values.size:
            raise ValueError("the prompt region is empty")
        lo, hi = np.percentile(values, [1.0, 99.0])
        if hi - lo < min_width:
            centre = (lo + hi) / 2.0
            lo, hi = centre - min_width / 2.0, centre + min_width / 2.0
        return cls(float(np.floor(lo / step) * step), float(np.ceil(hi / step) * step))

    @classmethod
    def parse(cls, text: str) -> "Window":
        """A preset name or ``LO:HI`` (HU), as the command line takes it."""
        text = str(text).strip()
        if text in WINDOW_PRESETS:
            return cls.preset(text)
        try:
            lo, hi = (float(v) for v in text.split(":"))
        except ValueError:
            raise ValueError(f"unknown window '{text}' (choose {', '.join(WINDOW_PRESETS)}, auto, or LO:HI in HU)") \
                from None
        return cls(lo, hi)


def prompt_region(slice_hu: np.ndarray, box=None, points=(), mask=None, pad: int = 16) -> np.ndarray:
    """The HU values a prompt covers on its slice: inside the box, or the bounding box of
    the points and mask grown by ``pad`` pixels (a point marks a spot, not an extent)."""
    rows, cols = slice_hu.shape
    if box is not None:
        x0, y0, x1, y1 = box
    else:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if mask is not None and np.asarray(mask).any():
            r, c = np.nonzero(mask)
            xs += [c.min(), c.max()]
            ys += [r.min(), r.max()]
        if not xs:
            raise ValueError("the prompt has no box, point or mask")
        x0, y0, x1, y1 = min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad
    c0, c1 = int(np.clip(np.floor(x0), 0, cols - 1)), int(np.clip(np.ceil(x1), 0, cols - 1))
    r0, r1 = int(np.clip(np.floor(y0), 0, rows - 1)), int(np.clip(np.ceil(y1), 0, rows - 1))
    return slice_hu[r0:r1 + 1, c0:c1 + 1]


@dataclass(frozen=True)
class SliceFrame:
    """The mapping between one slice's pixel grid and the model's input frame.

    ``shape`` is the slice shape ``(rows, cols)``; ``input_size`` the model's square input.
    """

    shape: tuple
    input_size: int

    @property
    def scale(self) -> float:
        return self.input_size / max(self.shape)

    @property
    def resized_shape(self) -> tuple:
        """(rows, cols) the slice occupies inside the model frame, before padding."""
        s = self.scale
        return (max(1, int(round(self.shape[0] * s))), max(1, int(round(self.shape[1] * s))))

    # -- coordinates -------------------------------------------------------------------
    def slice_to_model(self, xy) -> np.ndarray:
        """Points ``(..., 2)`` as (x, y) slice pixels -> model-frame coordinates."""
        return (np.asarray(xy, dtype=np.float64) + 0.5) * self.scale - 0.5

    def model_to_slice(self, xy) -> np.ndarray:
        """Inverse of :meth:`slice_to_model`."""
        return (np.asarray(xy, dtype=np.float64) + 0.5) / self.scale - 0.5

    def box_to_model(self, box) -> np.ndarray:
        """Box ``(x0, y0, x1, y1)`` in slice pixels (inclusive pixel indices) -> model frame.

        The box's edges are the outer pixel edges, so a one-pixel box keeps its extent.
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        s = self.scale
        return np.array([x0 * s, y0 * s, (x1 + 1) * s - 1, (y1 + 1) * s - 1], dtype=np.float64)

    # -- images and masks --------------------------------------------------------------
    def image_to_model(self, windowed: np.ndarray) -> torch.Tensor:
        """Windowed slice ``(rows, cols)`` in [0, 1] -> ``(3, S, S)`` float32 tensor."""
        t = torch.from_numpy(np.ascontiguousarray(windowed, dtype=np.float32))[None, None]
        t = self._resize_pad(t, mode="bilinear")
        return t[0].expand(3, -1, -1).contiguous()

    def mask_to_model(self, mask: np.ndarray, size: int | None = None) -> torch.Tensor:
        """Binary slice mask -> ``(size, size)`` float32 in [0, 1] in the model frame.

        ``size`` defaults to ``input_size``; SAM's mask prompt lives at a quarter of it.
        """
        t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        return self._resize_pad(t, mode="bilinear", size=size)[0, 0]

    def logits_to_slice(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., L, L)`` logits over the model frame -> ``(..., rows, cols)`` on the slice."""
        lead = logits.shape[:-2]
        L = logits.shape[-1]
        t = logits.reshape(-1, 1, L, L).float()
        if L != self.input_size:
            t = F.interpolate(t, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        r, c = self.resized_shape
        t = t[..., :r, :c]
        t = F.interpolate(t, size=tuple(self.shape), mode="bilinear", align_corners=False)
        return t.reshape(*lead, *self.shape)

    def _resize_pad(self, t: torch.Tensor, mode: str, size: int | None = None) -> torch.Tensor:
        size = size or self.input_size
        r, c = self.resized_shape
        if size != self.input_size:
            f = size / self.input_size
            r, c = max(1, int(round(r * f))), max(1, int(round(c * f)))
        t = F.interpolate(t, size=(r, c), mode=mode, align_corners=False)
        return F.pad(t, (0, size - c, 0, size - r))


def mask_prompt_logits(mask_in_frame: torch.Tensor) -> torch.Tensor:
    """A [0, 1] mask in the model frame -> the logits given as the model's mask prompt."""
    return (mask_in_frame * 2.0 - 1.0) * MASK_PROMPT_LOGIT
