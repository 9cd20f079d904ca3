"""Writing RadSAM's slices into a segmentation never changes another segment's voxels or
grid, whatever the segmentation's geometry (the ``slicer-core`` wheel's real MRML).

Synthetic volumes (no data, no model): the other segment is stored on a finer grid, or
the volume sits under a rotating parent transform while the segmentation does not; each
other segment is compared voxel for voxel (its labelmap's matrix, extent and values)
before and after RadSAM writes.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from vtk.util import numpy_support  # noqa: E402

from RadSAMSlicerLib import RadSAMLogic, segmentio  # noqa: E402
from RadSAMSlicerLib import geometry as geo  # noqa: E402

SHAPE = (12, 40, 48)           # (k, j, i)


def scene():
    s = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(s)
    s._keep = logic          # the module logic lives as long as the scene
    return s


def synthetic_volume(s, shape=SHAPE, spacing=(0.8, 0.7, 2.5), origin=(-20.0, 15.0, -40.0)):
    vol = s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    img = vtk.vtkImageData()
    img.SetDimensions(shape[2], shape[1], shape[0])
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = \
        np.random.default_rng(0).integers(-1000, 1000, int(np.prod(shape)))
    vol.SetAndObserveImageData(img)
    vol.SetSpacing(*spacing)
    vol.SetOrigin(*origin)
    return vol


def empty_segment(name):
    """A scene with a synthetic volume and a segmentation holding one empty segment
    ``name``: (scene, volume, segmentation node, segment id); the caller holds the scene,
    which its nodes live no longer than."""
    s = scene()
    vol = synthetic_volume(s)
    node = s.AddNewNodeByClass("vtkMRMLSegmentationNode")
    return s, vol, node, node.GetSegmentation().AddEmptySegment("", name)


def oriented_blob(grid_4x4, extent, fill):
    """A uint8 labelmap on ``grid_4x4`` (IJK -> segmentation frame) with ``fill(k, j, i)``."""
    img = slicer.vtkOrientedImageData()
    img.SetExtent(*extent)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.SetImageToWorldMatrix(geo.numpy_to_matrix(grid_4x4))
    e = extent
    k, j, i = np.mgrid[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1]
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = fill(k, j, i).astype(np.uint8).ravel()
    return img


def snapshot(seg_node, segment_id):
    """A segment exactly as stored: (grid matrix, sorted IJK of its voxels)."""
    img = slicer.vtkOrientedImageData()
    seg_node.GetBinaryLabelmapRepresentation(segment_id, img)
    m = vtk.vtkMatrix4x4()
    img.GetImageToWorldMatrix(m)
    e = img.GetExtent()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(
        e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    kji = np.argwhere(arr > 0) + [e[4], e[2], e[0]]
    return geo.matrix_to_numpy(m), kji


def assert_unchanged(before, after):
    assert np.allclose(before[0], after[0], atol=1e-9), "the other segment's grid changed"
    assert before[1].shape == after[1].shape and np.array_equal(before[1], after[1]), \
        f"the other segment's voxels changed ({len(before[1])} -> {len(after[1])})"


def written(shape=SHAPE):
    rng = np.random.default_rng(1)
    return {k: rng.random(shape[1:]) > 0.6 for k in (3, 4, 9)}


def check_target(seg, sid, vol, masks):
    got = segmentio.read_segment(seg, sid, vol)
    want = np.zeros(geo.volume_shape(vol), np.uint8)
    for k, m in masks.items():
        want[k] = m
    assert np.array_equal(got, want)


def test_an_oversampled_segment_in_the_shared_layer_is_not_resampled():
    s = scene()
    vol = synthetic_volume(s)
    seg = RadSAMLogic.__new__(RadSAMLogic)   # only the node helpers, no worker
    seg.scene = s
    node = seg.create_segmentation(vol)
    a = node.GetSegmentation().AddEmptySegment("", "A")
    fine = geo.ijk_to_node_frame(vol, node) @ np.diag([0.5, 0.5, 0.5, 1.0])   # half the spacing
    blob = oriented_blob(fine, (10, 40, 12, 50, 4, 14),
                         lambda k, j, i: (i - 25) ** 2 + (j - 30) ** 2 + 4 * (k - 9) ** 2 < 90)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(blob, node, a, logic.MODE_REPLACE)
    before = snapshot(node, a)
    assert len(before[1]) > 300
    target = RadSAMLogic.add_segment(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetLayerIndex(target) == segmentation.GetLayerIndex(a)   # Slicer shares the layer
    masks = written()
    assert segmentio.write_slices(node, target, vol, masks, axis=0) == [3, 4, 9]
    assert_unchanged(before, snapshot(node, a))
    check_target(node, target, vol, masks)
    # Clearing the slices again leaves A as it was, too.
    assert segmentio.write_slices(node, target, vol, {k: np.zeros_like(m) for k, m in masks.items()}, 0) == [3, 4, 9]
    assert_unchanged(before, snapshot(node, a))
    assert not segmentio.read_segment(node, target, vol).any()


def test_a_volume_under_a_rotating_transform_leaves_other_segments_on_their_grid():
    s = scene()
    vol = synthetic_volume(s)
    t = s.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rotating")
    tr = vtk.vtkTransform()
    tr.RotateZ(30)
    tr.RotateX(12)
    tr.Translate(4, -3, 9)
    t.SetMatrixTransformToParent(tr.GetMatrix())
    node = s.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(vol)     # before the volume moves
    a = node.GetSegmentation().AddEmptySegment("", "A")
    m = vtk.vtkMatrix4x4()
    vol.GetIJKToRASMatrix(m)
    blob = oriented_blob(geo.matrix_to_numpy(m), (5, 30, 8, 33, 2, 10),
                         lambda k, j, i: (i + j + k) % 3 == 0)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(blob, node, a, logic.MODE_REPLACE)
    vol.SetAndObserveTransformNodeID(t.GetID())                    # the volume is moved, the segmentation not
    before = snapshot(node, a)
    target = RadSAMLogic.add_segment(node)
    masks = written()
    segmentio.write_slices(node, target, vol, masks, axis=0)
    assert_unchanged(before, snapshot(node, a))
    check_target(node, target, vol, masks)
    # The result is stored on the volume's voxels as seen from the segmentation's frame.
    grid, _ = snapshot(node, target)
    assert np.allclose(grid, geo.ijk_to_node_frame(vol, node), atol=1e-6)
    # Slices across another axis of the same rotated grid.
    col = np.zeros((SHAPE[0], SHAPE[2]), bool)
    col[2:7, 10:30] = True
    segmentio.write_slices(node, target, vol, {20: col}, axis=1)
    got = segmentio.read_segment(node, target, vol)
    want3 = masks[3].copy()
    want3[20] = col[3]                            # row j=20 of slice k=3 is now the j-slice's row k=3
    assert np.array_equal(got[:, 20, :], col) and np.array_equal(got[3], want3)
    assert_unchanged(before, snapshot(node, a))


def test_a_target_with_voxels_on_another_grid_is_refused_untouched():
    from RadSAMLib.errors import RadSAMError
    s, vol, node, sid = empty_segment("fine")
    fine = geo.ijk_to_node_frame(vol, node) @ np.diag([0.5, 0.5, 0.5, 1.0])
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(oriented_blob(fine, (0, 9, 0, 9, 0, 3), lambda k, j, i: i > 4),
                                     node, sid, logic.MODE_REPLACE)
    before = snapshot(node, sid)
    with pytest.raises(RadSAMError, match="different voxel grid .* would have to resample it"):
        segmentio.write_slices(node, sid, vol, written(), axis=0)
    assert_unchanged(before, snapshot(node, sid))


def test_slices_are_written_in_place_and_the_extent_grows_only_when_needed():
    s, vol, node, sid = empty_segment("work")
    events = []
    node.GetSegmentation().AddObserver(slicer.vtkSegmentation.SourceRepresentationModified,
                                       lambda caller, event: events.append(event))
    small = np.zeros(SHAPE[1:], bool)
    small[10:20, 10:20] = True
    assert segmentio.write_slices(node, sid, vol, {5: small}, 0) == [5]
    img = node.GetSegmentation().GetSegment(sid).GetRepresentation(segmentio.BINARY_LABELMAP)
    assert img.GetExtent() == (10, 19, 10, 19, 5, 5) and events      # the displays hear of it
    n = len(events)
    # A slice inside the extent: the same image object, no reallocation, one notification.
    pointer = img.GetScalarPointer()
    inner = small.copy()
    inner[12, 12] = False
    assert segmentio.write_slices(node, sid, vol, {5: inner}, 0) == [5]
    assert img.GetScalarPointer() == pointer and len(events) == n + 1
    assert segmentio.write_slices(node, sid, vol, {5: inner, 6: np.zeros_like(inner)}, 0) == []   # no change
    assert len(events) == n + 1
    # A slice beyond the extent grows it (along the axis by at least its length).
    # (into a new image: resizing the observed one would drop every segment's surfaces).
    assert segmentio.write_slices(node, sid, vol, {6: small}, 0) == [6]
    assert len(events) == n + 2
    e = node.GetSegmentation().GetSegment(sid).GetRepresentation(segmentio.BINARY_LABELMAP).GetExtent()
    assert e[:4] == (10, 19, 10, 19) and e[4] <= 5 and e[5] >= 6
    got = segmentio.read_segment(node, sid, vol)
    assert np.array_equal(got[5], inner) and np.array_equal(got[6], small) and got.sum() == inner.sum() + small.sum()
