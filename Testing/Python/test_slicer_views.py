"""Slice views -> RadSAM's slices, and the bounds drawn in the views (``slicer-core``'s
MRML: real ``vtkMRMLSliceNode`` and ``vtkMRMLMarkupsPlaneNode``, no Qt).

The slice views are placed at a voxel's world position computed here from the node's
matrices (not by the code under test), in the axial, coronal and sagittal orientations
and tilted, on plain, oblique, flipped and transformed volumes.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ABDOMEN, ROOT, need

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from RadSAMSlicerLib import bounds as bd  # noqa: E402
from RadSAMSlicerLib import geometry as geo  # noqa: E402
from test_slicer_logic import Mrml, ijk_to_world_independent, ras_of  # noqa: E402

GEOMETRIES = {"plain": {}, "oblique": {"oblique": True}, "flipped": {"flip": True},
              "transform": {"transform": True}, "oblique+flipped+transform": {"oblique": True, "flip": True,
                                                                               "transform": True}}
# view orientation -> (its SliceToRAS rotation, the numpy axis it looks across on these volumes)
VIEWS = {"axial": ("GetAxialSliceToRASMatrix", 0), "coronal": ("GetCoronalSliceToRASMatrix", 1),
         "sagittal": ("GetSagittalSliceToRASMatrix", 2)}


def load(mrml, flip=False, **kw):
    vol = mrml.load_ct(**kw)
    if flip:   # k runs the other way (e.g. inferior) and so does i: same voxels, mirrored matrix
        m = vtk.vtkMatrix4x4()
        vol.GetIJKToRASDirectionMatrix(m)
        for r in range(3):
            m.SetElement(r, 0, -m.GetElement(r, 0))
            m.SetElement(r, 2, -m.GetElement(r, 2))
        vol.SetIJKToRASDirectionMatrix(m)
    return vol


def slice_node(scene, orientation, tilt=0.0):
    node = slicer.vtkMRMLSliceNode()
    node.SetLayoutName("Yellow")
    scene.AddNode(node)
    r = vtk.vtkMatrix3x3()
    getattr(slicer.vtkMRMLSliceNode, VIEWS[orientation][0])(r)
    m = vtk.vtkMatrix4x4()
    for i in range(3):
        for j in range(3):
            m.SetElement(i, j, r.GetElement(i, j))
    if tilt:
        rot = vtk.vtkTransform()
        rot.RotateWXYZ(tilt, 1, 1, 0)
        vtk.vtkMatrix4x4.Multiply4x4(rot.GetMatrix(), m, m)
    node.GetSliceToRAS().DeepCopy(m)
    node.UpdateMatrices()
    return node


def look_at(node, ras):
    node.JumpSliceByCentering(*[float(v) for v in ras])


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_a_slice_view_gives_its_axis_and_slice(name):
    need(ABDOMEN)
    mrml = Mrml()
    vol = load(mrml, **GEOMETRIES[name])
    shape = geo.volume_shape(vol)
    voxel = np.array([17, 40, 61])
    a = ijk_to_world_independent(vol)[:3, :3]
    for orientation, (_, view_axis) in VIEWS.items():
        for tilt in (0.0, 8.0):
            node = slice_node(mrml.scene, orientation, tilt)
            # The expected axis: the voxel axis most aligned with the view's normal (on the
            # rotated volumes a tilted view can look across another axis than its name says).
            normal = [node.GetSliceToRAS().GetElement(r, 2) for r in range(3)]
            axis = 2 - int(np.argmax(np.abs(normal @ (a / np.linalg.norm(a, axis=0)))))
            if name in ("plain", "flipped"):
                assert axis == view_axis
            look_at(node, ras_of(vol, voxel)[0])
            assert geo.view_slice(vol, node) == (axis, voxel[axis]), (orientation, tilt)
            # The neighbouring voxel along that axis is the next slice, whichever way it runs.
            nxt = voxel.copy()
            nxt[axis] += 1
            look_at(node, ras_of(vol, nxt)[0])
            assert geo.view_slice(vol, node) == (axis, voxel[axis] + 1)
    # A view beyond the volume's end gives an index outside 0..n-1 (the caller refuses it).
    node = slice_node(mrml.scene, "axial")
    look_at(node, ras_of(vol, [shape[0] + 3, 0, 0])[0])
    assert geo.view_slice(vol, node) == (0, shape[0] + 3)


@pytest.mark.parametrize("name", ["plain", "oblique+flipped+transform"])
def test_bounds_are_drawn_on_their_slices_and_removed(name):
    need(ABDOMEN)
    mrml = Mrml()
    vol = load(mrml, **GEOMETRIES[name])
    a = ijk_to_world_independent(vol)
    shape = geo.volume_shape(vol)
    for axis in (0, 1, 2):
        lo, hi = 5, shape[axis] - 3
        nodes = bd.show_bounds(mrml.scene, vol, axis, (lo, hi))
        assert [n.GetName() for n in nodes] == [bd.BOTTOM_NAME, bd.TOP_NAME]
        for node, idx in zip(nodes, (lo, hi)):
            centre = [0.0, 0.0, 0.0]
            node.GetOriginWorld(centre)
            kji = np.linalg.solve(a, np.r_[centre, 1.0])[:3][::-1]
            assert abs(kji[axis] - idx) < 1e-6                        # on that slice,
            rest = [n for n in range(3) if n != axis]
            assert np.allclose(kji[rest], [(shape[n] - 1) / 2 for n in rest])   # centred on it
            normal = [0.0, 0.0, 0.0]
            node.GetNormalWorld(normal)
            ijk_dir = a[:3, 2 - axis] / np.linalg.norm(a[:3, 2 - axis])
            assert abs(abs(np.dot(normal, ijk_dir)) - 1) < 1e-6         # across that axis
            # It covers the whole slice: voxel counts times spacings, in mm.
            size = [0.0, 0.0]
            node.GetSize(size)
            assert np.allclose(size, [np.linalg.norm(a[:3, 2 - n]) * shape[n] for n in rest])
            assert node.GetLocked() and not node.GetSaveWithScene()
        # Updating moves the same nodes; a bound not set removes its plane.
        again = bd.show_bounds(mrml.scene, vol, axis, (7, shape[axis]))   # past the end: not drawn
        assert [n.GetName() for n in again] == [bd.BOTTOM_NAME]
        assert again[0] is nodes[0]
        assert mrml.scene.GetFirstNodeByName(bd.TOP_NAME) is None
    assert bd.show_bounds(mrml.scene, vol, 0, None) == []
    assert mrml.scene.GetFirstNodeByName(bd.BOTTOM_NAME) is None
    assert bd.show_bounds(mrml.scene, None, 0, (1, 2)) == []          # no volume: nothing drawn
