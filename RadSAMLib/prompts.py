"""Prompts on one slice, in that slice's pixel coordinates.

``x`` is the column and ``y`` the row of the 2D slice (for the default propagation axis 0
of a ``(k, j, i)`` volume: ``x = i``, ``y = j``). Boxes are inclusive pixel indices
``(x0, y0, x1, y1)``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import PromptError


@dataclass(frozen=True, eq=False)
class SlicePrompt:
    """Any mix of a box, positive/negative points and a binary mask on one slice.

    Immutable: ``points`` and ``labels`` are stored as tuples and ``mask`` as a read-only
    bool copy, so a session that keeps a prompt (as an anchor) cannot be changed by its
    caller afterwards. Derive changed prompts with :meth:`with_points` or
    ``dataclasses.replace``.
    """

    box: tuple | None = None                     # (x0, y0, x1, y1), inclusive pixel indices
    points: tuple = ()                           # ((x, y), ...)
    labels: tuple = ()                           # 1 positive, 0 negative, one per point
    mask: np.ndarray | None = None               # bool (rows, cols)

    def __post_init__(self):
        if self.box is not None:
            object.__setattr__(self, "box", tuple(self.box))
        object.__setattr__(self, "points", tuple(tuple(p) for p in self.points))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.mask is not None:
            mask = np.array(self.mask, dtype=bool)   # a copy: the caller's array stays theirs
            mask.setflags(write=False)
            object.__setattr__(self, "mask", mask)

    def is_empty(self) -> bool:
        return self.box is None and not self.points and (self.mask is None or not self.mask.any())

    def with_points(self, points, labels) -> "SlicePrompt":
        return replace(self, points=self.points + tuple(points), labels=self.labels + tuple(labels))

    def validate(self, shape, where: str = "") -> "SlicePrompt":
        """Check the prompt against a slice of ``shape`` (rows, cols); return it."""
        rows, cols = shape
        at = f" on {where}" if where else ""
        if self.is_empty():
            raise PromptError(f"empty prompt{at}: give a box, a point or a non-empty mask")
        if self.box is not None:
            x0, y0, x1, y1 = _finite(self.box, 4, f"box{at}")
            if x1 <= x0 or y1 <= y0:
                raise PromptError(
                    f"degenerate box ({x0:g}, {y0:g}, {x1:g}, {y1:g}){at}: need x0 < x1 and y0 < y1")
            if x0 < 0 or y0 < 0 or x1 > cols - 1 or y1 > rows - 1:
                raise PromptError(
                    f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image{at} "
                    f"(x in 0..{cols - 1}, y in 0..{rows - 1})")
        if len(self.points) != len(self.labels):
            raise PromptError(f"{len(self.points)} points but {len(self.labels)} labels{at}")
        for p, lab in zip(self.points, self.labels):
            x, y = _finite(p, 2, f"point{at}")
            if not (0 <= x <= cols - 1 and 0 <= y <= rows - 1):
                raise PromptError(
                    f"point ({x:g}, {y:g}) is outside the image{at} (x in 0..{cols - 1}, y in 0..{rows - 1})")
            if lab not in (0, 1):
                raise PromptError(f"point label must be 1 (positive) or 0 (negative), got {lab}")
        if self.mask is not None:
            if tuple(self.mask.shape) != (rows, cols):
                raise PromptError(f"mask prompt shape {tuple(self.mask.shape)} differs from the slice {(rows, cols)}{at}")
        return self


def _finite(values, n: int, what: str) -> tuple:
    """``n`` finite floats: a NaN box would pass every comparison and prompt nothing."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be {n} numbers, got {values!r}") from None
    if len(out) != n or not np.isfinite(out).all():
        raise PromptError(f"{what} must be {n} finite numbers, got {values!r}")
    return out


def box_of_mask(mask: np.ndarray, margin: float = 0.0, shape=None):
    """Inclusive box ``(x0, y0, x1, y1)`` around a binary mask, grown by ``margin`` pixels
    and clipped to ``shape`` (default: the mask's); ``None`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    rows, cols = shape or mask.shape
    return (max(0.0, xs.min() - margin), max(0.0, ys.min() - margin),
            min(cols - 1.0, xs.max() + margin), min(rows - 1.0, ys.max() + margin))
