"""Read and write one segment's binary labelmap on a volume's voxel grid.

Arrays are uint8 ``(k, j, i)`` on the volume's grid (1 inside). A segmentation node keeps
labelmaps in its own local frame, so the grid is expressed there (volume IJK -> world ->
segmentation frame; linear transforms only).

Writing goes into the segment's OWN labelmap, in place. A new segment shares its layer
(one ``vtkOrientedImageData``) with other segments, and a replace-mode
``SetBinaryLabelmapToSegment`` re-grids that whole layer when the input's grid differs, so
a segment drawn at another resolution, or in another frame, would be resampled. Instead
the segment is first moved to a layer of its own (``SeparateSegmentLabelmap``: the other
segments' voxels stay in their layer, on their grid); that layer is put on the volume's
grid when it is empty, and a segment that already has voxels on another grid is refused
(writing it would resample it). Then only the written slices change, through the
labelmap's array, and the extent grows only when a slice reaches outside it.

Telling the views follows Slicer's own modify path (``vtkSegmentationModifier::
ModifyBinaryLabelmap``): the voxels change without the labelmap's ``ModifiedEvent``
reaching the segmentation -- which would drop the derived representations (the 3D
closed surfaces) of EVERY segment, and which a segmentation's first segment does not
even have observed (``AddSegment`` updates its observers before the segment is in its
list) -- then the segmentation invokes ``SourceRepresentationModified`` and
``RepresentationModified`` with the segment's ID, the events the slice and 3D views
observe. Only this segment's derived representations go stale, and ``surfaces`` says
whether to rebuild them now (a streaming run rebuilds them about once a second and at
its end, not on every write).
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


def _grid_of(img) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    img.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _is_empty(extent) -> bool:
    return extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]


def own_labelmap(segmentation_node, segment_id, volume_node):
    """The segment's own labelmap layer on ``volume_node``'s grid: ``(vtkOrientedImageData,
    label value)``. Moves the segment out of a shared layer and puts an empty layer on the
    volume's grid; other segments are not touched. A user error when the segment has
    voxels on another grid (nothing is changed then)."""
    check_segment(segmentation_node, segment_id)
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    grid = ijk_to_node_frame(volume_node, segmentation_node)
    img = segment.GetRepresentation(BINARY_LABELMAP)
    label = segment.GetLabelValue()
    same_grid = img is not None and np.allclose(_grid_of(img), grid, atol=1e-4)
    if img is not None and not same_grid and not _is_empty(img.GetExtent()) and \
            (_image_array(img) == label).any():
        raise user_error(f"segment '{segment.GetName()}' is stored on a different voxel grid than volume "
                         f"'{volume_node.GetName()}' (another resolution, orientation or transform); RadSAM "
                         "would have to resample it: choose a segment made on this volume, or a new one")
    if img is not None and len(segmentation.GetSegmentIDsForLayer(segmentation.GetLayerIndex(segment_id))) > 1:
        segmentation.SeparateSegmentLabelmap(segment_id)
        img = segment.GetRepresentation(BINARY_LABELMAP)
        label = segment.GetLabelValue()
    if img is None or not same_grid:
        # Empty: its (own) layer becomes an empty image on the volume's grid.
        img = _oriented_image(np.zeros((0, 0, 0), np.uint8), grid)
        _replace_labelmap(segment, img)
    return img, label


def _replace_labelmap(segment, img) -> None:
    """Make ``img`` the segment's labelmap (its own layer). The old image fires no
    ``ModifiedEvent``, so the other segments' derived representations stay; the segment's
    own ``Modified`` lets the segmentation observe the new image."""
    segment.AddRepresentation(BINARY_LABELMAP, img)


def _notify(segmentation_node, segment_id, surfaces: bool) -> None:
    """Tell the segmentation and its views that the segment's voxels changed (its labelmap
    was written without a ``ModifiedEvent``), as Slicer's own modify path does. With
    ``surfaces``, the segment's stale derived representations (e.g. the closed surface
    Show 3D displays) are rebuilt now; other segments' are never touched."""
    segmentation = segmentation_node.GetSegmentation()
    if surfaces:
        segment = segmentation.GetSegment(segment_id)
        stale = surfaces_stale(segmentation_node, segment_id)
        for name in stale:
            segment.RemoveRepresentation(name)
        for name in stale:     # converts only the segments that lack it: this one
            segmentation.CreateRepresentation(name)
    segmentation.InvokeEvent(slicer.vtkSegmentation.SourceRepresentationModified, segment_id)
    segmentation.InvokeEvent(slicer.vtkSegmentation.RepresentationModified, segment_id)


def surfaces_stale(segmentation_node, segment_id) -> list:
    """Names of the segment's derived representations older than its labelmap."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    img = segment.GetRepresentation(BINARY_LABELMAP) if segment is not None else None
    if img is None:
        return []
    names = []
    segment.GetContainedRepresentationNames(names)
    return [n for n in names if n != BINARY_LABELMAP and segment.GetRepresentation(n) is not None
            and segment.GetRepresentation(n).GetMTime() < img.GetMTime()]


def _grown_extent(extent, need, shape, axis):
    """``extent`` (VTK i0, i1, j0, j1, k0, k1) grown to hold ``need`` (same form). Along the
    slice axis it grows by at least its own length (slices stream in one by one, so the
    image is re-allocated a logarithmic number of times); it stays inside the volume."""
    if _is_empty(extent):
        return tuple(need)
    out = [min(extent[0], need[0]), max(extent[1], need[1]), min(extent[2], need[2]),
           max(extent[3], need[3]), min(extent[4], need[4]), max(extent[5], need[5])]
    a = 2 - axis                                  # numpy axis -> VTK axis (i=0, j=1, k=2)
    n = shape[axis]
    length = extent[2 * a + 1] - extent[2 * a] + 1
    if out[2 * a] < extent[2 * a]:
        out[2 * a] = max(0, min(out[2 * a], extent[2 * a] - length))
    if out[2 * a + 1] > extent[2 * a + 1]:
        out[2 * a + 1] = min(n - 1, max(out[2 * a + 1], extent[2 * a + 1] + length))
    return tuple(out)


def _reallocated(img, extent):
    """A copy of ``img`` with ``extent``, keeping its voxels and grid (a new image: resizing
    ``img`` itself would fire its ``ModifiedEvent``, see the module's docstring)."""
    out = slicer.vtkOrientedImageData()
    out.SetExtent(*extent)
    out.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    m = vtk.vtkMatrix4x4()
    img.GetImageToWorldMatrix(m)
    out.SetImageToWorldMatrix(m)
    arr = _image_array(out)
    arr[:] = 0
    o = img.GetExtent()
    if not _is_empty(o):
        e = extent
        arr[o[4] - e[4]:o[5] - e[4] + 1, o[2] - e[2]:o[3] - e[2] + 1, o[0] - e[0]:o[1] - e[0] + 1] = _image_array(img)
    return out


def _slice_extent(axis: int, idx: int, box2d):
    """VTK extent of a box ``((r0, c0), (r1, c1))`` on slice ``idx`` across ``axis``."""
    (r0, c0), (r1, c1) = box2d
    lo, hi = [0, 0, 0], [0, 0, 0]
    rest = [a for a in range(3) if a != axis]
    lo[axis] = hi[axis] = idx
    lo[rest[0]], hi[rest[0]], lo[rest[1]], hi[rest[1]] = r0, r1, c0, c1
    return (lo[2], hi[2], lo[1], hi[1], lo[0], hi[0])


def write_slices(segmentation_node, segment_id, volume_node, slice_masks: dict, axis: int,
                 surfaces: bool = True) -> list:
    """Put ``slice_masks`` (``{slice index: bool (rows, cols)}``, slices across ``axis``)
    into the segment, in place, leaving every other voxel of the segmentation as it is.
    Returns the slices whose content changed (nothing is written when none did).

    ``surfaces``: rebuild the segment's stale derived representations (its 3D surface)
    now; ``False`` leaves them stale for a later write (a run streaming in slices)."""
    if not slice_masks:
        if surfaces and segmentation_node is not None and surfaces_stale(segmentation_node, segment_id):
            _notify(segmentation_node, segment_id, True)
        return []
    img, label = own_labelmap(segmentation_node, segment_id, volume_node)
    shape = volume_shape(volume_node)
    extent = img.GetExtent()
    need = None
    masks = {}
    for s, m in slice_masks.items():
        m = np.asarray(m) > 0
        masks[int(s)] = m
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(rows):
            e = _slice_extent(axis, int(s), ((rows[0], cols[0]), (rows[-1], cols[-1])))
            need = e if need is None else tuple(min(a, b) if n % 2 == 0 else max(a, b)
                                                for n, (a, b) in enumerate(zip(need, e)))
    if need is not None and (_is_empty(extent) or any(
            need[n] < extent[n] if n % 2 == 0 else need[n] > extent[n] for n in range(6))):
        img = _reallocated(img, _grown_extent(extent, need, shape, axis))
        _replace_labelmap(segmentation_node.GetSegmentation().GetSegment(segment_id), img)
        extent = img.GetExtent()
    changed = []
    if not _is_empty(extent):
        arr = _image_array(img)
        lo = (extent[4], extent[2], extent[0])             # (k, j, i) of arr[0, 0, 0]
        hi = (extent[5], extent[3], extent[1])
        rest = [a for a in range(3) if a != axis]
        r0, r1 = lo[rest[0]], hi[rest[0]]
        c0, c1 = lo[rest[1]], hi[rest[1]]
        for s in sorted(masks):
            if not lo[axis] <= s <= hi[axis]:
                continue      # outside the extent: empty before, and empty now (else it grew)
            plane = arr[slice_key(axis, s - lo[axis])]
            new = masks[s][max(r0, 0):r1 + 1, max(c0, 0):c1 + 1]
            view = plane[max(r0, 0) - r0:, max(c0, 0) - c0:][:new.shape[0], :new.shape[1]]
            if not np.array_equal(view == label, new):
                view[...] = np.where(new, label, 0).astype(view.dtype)
                changed.append(s)
    if changed:
        img.GetPointData().GetScalars().Modified()    # the image's MTime, for pipelines; no event
    if changed or (surfaces and surfaces_stale(segmentation_node, segment_id)):
        _notify(segmentation_node, segment_id, surfaces)
    return changed


def write_segment(segmentation_node, segment_id, volume_node, array_kji: np.ndarray) -> None:
    """Replace the whole segment by ``array_kji`` (uint8 0/1 on the volume grid), in its own
    labelmap; every slice across axis 0 is written."""
    array_kji = np.asarray(array_kji)
    if array_kji.shape != volume_shape(volume_node):
        raise user_error(f"mask shape {array_kji.shape} is not the volume's {volume_shape(volume_node)}")
    write_slices(segmentation_node, segment_id, volume_node, {k: array_kji[k] for k in range(array_kji.shape[0])}, 0)
