"""Slices of a ``(k, j, i)`` volume across a propagation axis (torch-free: the Slicer
module and the command line use it before any model is loaded)."""
from __future__ import annotations

from .errors import BoundsError


def slice_index(axis: int, idx: int) -> tuple:
    """Numpy index of slice ``idx`` across ``axis`` of a ``(k, j, i)`` array."""
    key = [slice(None)] * 3
    key[axis] = idx
    return tuple(key)


def check_slice_index(idx, num_slices: int, axis: int, what: str = "slice") -> int:
    """``idx`` as an int if it is a slice of the volume along ``axis``, else a BoundsError."""
    if not 0 <= int(idx) < num_slices:
        raise BoundsError(f"{what} {idx} is outside the volume (0..{num_slices - 1} along axis {axis})")
    return int(idx)
