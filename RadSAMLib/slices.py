"""Slices of a ``(k, j, i)`` volume across a propagation axis (torch-free: the Slicer
module and the command line use it before any model is loaded)."""
from __future__ import annotations


def slice_index(axis: int, idx: int) -> tuple:
    """Numpy index of slice ``idx`` across ``axis`` of a ``(k, j, i)`` array."""
    key = [slice(None)] * 3
    key[axis] = idx
    return tuple(key)

