"""Read and write one segment's binary labelmap on a volume's voxel grid.

Arrays are uint8 ``(k, j, i)`` on the volume's grid (1 inside). A segmentation node keeps
labelmaps in its own local frame, so the grid is expressed there (volume IJK -> world ->
segmentation frame; linear transforms only).

Writing is read-modify-write of the WHOLE segment: ``SetBinaryLabelmapToSegment`` in
replace mode replaces the whole segment even when given an extent (measured with
slicer-core 5.x: an extent of one slice left only that slice), so the changed slices are
put into the segment's current labelmap and the full labelmap is written back. Replace
mode keeps the input's grid (no resampling) and does not overwrite other segments (a
shared layer is split where they would overlap), so other segments and this segment's
other slices keep their exact voxels.
"""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from RadSAMLib.slices import slice_index as slice_key   # torch-free; the one definition

from .errors import user_error
from .geometry import ijk_to_node_frame, numpy_to_matrix, volume_shape

BINARY_LABELMAP = "Binary labelmap"


def _oriented_image(array_kji: np.ndarray, ijk_to_frame: np.ndarray, lo=(0, 0, 0)):
    """A uint8 ``vtkOrientedImageData`` holding ``array_kji`` at voxel offset ``lo``
    ``(k, j, i)`` of the grid ``ijk_to_frame`` (IJK -> the segmentation's frame)."""
    img = slicer.vtkOrientedImageData()
    nk, nj, ni = array_kji.shape
    k0, j0, i0 = (int(v) for v in lo)
    img.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_frame))
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = \
        np.ascontiguousarray(array_kji, dtype=np.uint8).ravel()
    return img


def nonzero_box(array_kji: np.ndarray):
    """``(lo, hi)`` inclusive ``(k, j, i)`` corners of the non-zero voxels, or ``None``."""
    lo, hi = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(array_kji.any(axis=others))
        if not len(idx):
            return None
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]))
    return tuple(lo), tuple(hi)


def _image_array(img) -> np.ndarray:
    ni, nj, nk = img.GetDimensions()
    return numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(nk, nj, ni)


def check_segment(segmentation_node, segment_id) -> None:
    if segmentation_node is None:
        raise user_error("no segmentation selected: choose or create a segmentation")
    if not segment_id or segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise user_error(f"segment '{segment_id}' not found in segmentation '{segmentation_node.GetName()}'")
    source = segmentation_node.GetSegmentation().GetSourceRepresentationName()
    if source != BINARY_LABELMAP:
        raise user_error(f"segmentation '{segmentation_node.GetName()}' is stored as '{source}'; RadSAM "
                         "edits binary labelmaps (Segmentations module: set the source representation)")


def read_segment(segmentation_node, segment_id, volume_node) -> np.ndarray:
    """The segment as uint8 ``(k, j, i)`` on ``volume_node``'s grid (0/1).

    A segment stored on another grid is a user error when it has voxels: resampling it
    would change its slices outside the ones RadSAM writes.
    """
    check_segment(segmentation_node, segment_id)
    shape = volume_shape(volume_node)
    grid = ijk_to_node_frame(volume_node, segmentation_node)
    out = np.zeros(shape, dtype=np.uint8)
    src = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, src)
    e = src.GetExtent()
    if e[1] < e[0] or e[3] < e[2] or e[5] < e[4]:
        return out
    src_arr = _image_array(src)
    m = vtk.vtkMatrix4x4()
    src.GetImageToWorldMatrix(m)
    src_grid = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    if not np.allclose(src_grid, grid, atol=1e-4):
        if not src_arr.any():
            return out
        raise user_error(f"segment '{segment_id}' is stored on a different voxel grid than volume "
                         f"'{volume_node.GetName()}'; choose a segment made on this volume or a new one")
    # Same grid: copy the overlap of the stored extent and the volume (no resampling).
    nk, nj, ni = shape
    lo = (max(e[4], 0), max(e[2], 0), max(e[0], 0))
    hi = (min(e[5], nk - 1), min(e[3], nj - 1), min(e[1], ni - 1))
    if any(h < l for l, h in zip(lo, hi)):
        inside = np.zeros((0,), np.uint8)
    else:
        src_view = src_arr[lo[0] - e[4]:hi[0] - e[4] + 1, lo[1] - e[2]:hi[1] - e[2] + 1, lo[2] - e[0]:hi[2] - e[0] + 1]
        out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = src_view > 0
        inside = src_view
    if int(np.count_nonzero(src_arr)) != int(np.count_nonzero(inside)):
        raise user_error(f"segment '{segment_id}' has voxels outside volume '{volume_node.GetName()}'; "
                         "RadSAM would lose them (choose another segment)")
    return out


def write_segment(segmentation_node, segment_id, volume_node, array_kji: np.ndarray) -> None:
    """Replace the whole segment by ``array_kji`` (uint8 0/1 on the volume grid).

    Only the box around the non-zero voxels is handed over (the same segment, at a
    fraction of the cost of a full-volume image for an organ in a large CT)."""
    check_segment(segmentation_node, segment_id)
    grid = ijk_to_node_frame(volume_node, segmentation_node)
    box = nonzero_box(array_kji)
    if box is None:
        img = _oriented_image(np.zeros((1, 1, 1), np.uint8), grid)
    else:
        (k0, j0, i0), (k1, j1, i1) = box
        img = _oriented_image(array_kji[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1], grid, (k0, j0, i0))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(img, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise user_error(f"could not write segment '{segment_id}' of '{segmentation_node.GetName()}'")


def write_slices(segmentation_node, segment_id, volume_node, slice_masks: dict, axis: int) -> list:
    """Put ``slice_masks`` (``{slice index: bool (rows, cols)}``, slices across ``axis``)
    into the segment, leaving every other voxel of the segmentation as it is. Returns the
    slices whose content changed (nothing is written when none did)."""
    if not slice_masks:
        return []
    current = read_segment(segmentation_node, segment_id, volume_node)
    changed = []
    for s in sorted(slice_masks):
        key = slice_key(axis, int(s))
        new = np.asarray(slice_masks[s]) > 0
        if not np.array_equal(current[key] > 0, new):
            current[key] = new
            changed.append(int(s))
    if changed:
        write_segment(segmentation_node, segment_id, volume_node, current)
    return changed
