"""RadSAM inside the Segment Editor, without Qt: writes that go through the editor.

The Segment Editor effect (``SegmentEditorRadSAMLib``) hands :class:`EditorWriter` the
editor's own modify call, so each slice RadSAM writes is subject to the editor's masking
settings (editable area, editable intensity range, overwrite other segments), exactly
as a paint stroke is; and the effect saves an editor undo state before each RadSAM step,
so the editor's Undo/Redo are RadSAM's.

A write of slices ``S`` is two modifier labelmaps on the volume's grid (in the
segmentation's frame), each spanning the slab of ``S``: first *remove* everything in
those slices that the new masks leave out, then *add* the new masks. Slices in the slab
that are not in ``S`` are zero in both, so they do not change.
"""
from __future__ import annotations

import numpy as np

from .geometry import ijk_to_node_frame, volume_shape
from .segmentio import _oriented_image, slice_key

ADD, REMOVE = "add", "remove"


def slab_labelmaps(slice_masks: dict, axis: int, grid: np.ndarray, shape) -> tuple:
    """``(remove, add)`` modifier labelmaps for ``slice_masks`` (``{index: bool (rows,
    cols)}``, slices across ``axis``) on the grid ``grid`` (IJK -> segmentation frame) of a
    volume of ``shape`` ``(k, j, i)``."""
    lo, hi = min(slice_masks), max(slice_masks)
    slab_shape = list(shape)
    slab_shape[axis] = hi - lo + 1
    add = np.zeros(slab_shape, np.uint8)
    remove = np.zeros(slab_shape, np.uint8)
    for s, m in slice_masks.items():
        m = np.asarray(m) > 0
        add[slice_key(axis, s - lo)] = m
        remove[slice_key(axis, s - lo)] = ~m
    offset = [0, 0, 0]
    offset[axis] = lo
    return _oriented_image(remove, grid, offset), _oriented_image(add, grid, offset)


class EditorWriter:
    """A slice writer for :class:`~.logic.RadSAMLogic` (``logic.writer``) that writes
    through ``modify(labelmap, mode)``, ``mode`` being :data:`ADD` or :data:`REMOVE`: the
    Segment Editor's ``modifySelectedSegmentByLabelmap`` in Slicer. Returns every slice
    it was given (what the masking kept is the editor's decision)."""

    def __init__(self, modify):
        self.modify = modify

    def __call__(self, segmentation_node, segment_id, volume_node, slice_masks: dict, axis: int) -> list:
        if not slice_masks:
            return []
        grid = ijk_to_node_frame(volume_node, segmentation_node)
        remove, add = slab_labelmaps({int(k): v for k, v in slice_masks.items()}, axis, grid,
                                     volume_shape(volume_node))
        self.modify(remove, REMOVE)
        self.modify(add, ADD)
        return sorted(int(k) for k in slice_masks)
