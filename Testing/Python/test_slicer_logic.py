"""RadSAMLogic on real MRML (the ``slicer-core`` wheel) and the real abdominal CT.

The CT is read into a volume node by MRML's own NIfTI reader, placed plain, with an
oblique direction matrix, and under a linear parent transform; markups are placed in
world RAS at known voxels (positions computed here from the node's matrices, not by the
code under test); results are read back from the segmentation node and compared voxel
for voxel with RadSAMLib's own ``Session`` on the same prompt. The voxels are the same
in every geometry, so the session's ``abdomen_engine`` (every slice encoded once) is
reused: a geometry bug shows up as a wrong prompt, i.e. a different result.
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import pytest

from conftest import ABDOMEN, ROOT, need

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from RadSAMSlicerLib import RadSAMLogic, segmentio  # noqa: E402
from RadSAMSlicerLib import geometry as geo  # noqa: E402
from RadSAMSlicerLib import markups as mk  # noqa: E402

SPLEEN, KIDNEY_L, LIVER = 1, 3, 5
SPLEEN_SLICE, SPLEEN_BOUNDS = 22, (14, 27)


# -- MRML fixtures --------------------------------------------------------------------------
class Mrml:
    """A scene with the module logics Slicer would have (converter rules, markups); the
    logics are kept referenced for the scene's lifetime."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        for cls in (slicer.vtkMRMLSelectionNode, slicer.vtkMRMLInteractionNode):
            node = cls()
            node.SetSingletonTag("Singleton")
            self.scene.AddNode(node)
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(self.scene)
        self.markups = slicer.vtkSlicerMarkupsLogic()
        self.markups.SetMRMLScene(self.scene)

    def load_ct(self, oblique=False, transform=False):
        vol = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        self.scene.AddNode(storage)
        storage.SetFileName(str(ABDOMEN / "ct.nii.gz"))
        assert storage.ReadData(vol) == 1
        if oblique:  # rotate the voxel axes 20 deg about R and 35 deg about S
            rot = vtk.vtkTransform()
            rot.RotateX(20)
            rot.RotateZ(35)
            m = rot.GetMatrix()
            dirs = [[m.GetElement(r, c) for c in range(3)] for r in range(3)]
            vol.SetIJKToRASDirections(dirs[0][0], dirs[0][1], dirs[0][2], dirs[1][0], dirs[1][1], dirs[1][2],
                                      dirs[2][0], dirs[2][1], dirs[2][2])
        if transform:
            t = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
            tr = vtk.vtkTransform()
            tr.Translate(12.5, -40.0, 7.25)
            tr.RotateY(-25)
            t.SetMatrixTransformToParent(tr.GetMatrix())
            vol.SetAndObserveTransformNodeID(t.GetID())
        return vol


def ijk_to_world_independent(vol) -> np.ndarray:
    """The test's own IJK -> world matrix, from the node's IJK-to-RAS matrix and its
    parent transform's to-parent matrix (one level, as the fixtures build it)."""
    m = vtk.vtkMatrix4x4()
    vol.GetIJKToRASMatrix(m)
    a = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    parent = vol.GetParentTransformNode()
    if parent is not None:
        p = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToParent(p)
        a = np.array([[p.GetElement(r, c) for c in range(4)] for r in range(4)]) @ a
    return a


def ras_of(vol, kji) -> np.ndarray:
    kji = np.asarray(kji, float).reshape(-1, 3)
    h = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return (ijk_to_world_independent(vol) @ h.T).T[:, :3]


def segment_voxels(seg_node, segment_id, vol) -> np.ndarray:
    """Read a segment back straight from the node: its labelmap must be on the volume's
    grid (same matrix, no resampling); returns (k, j, i) uint8 in the volume's extent."""
    img = slicer.vtkOrientedImageData()
    seg_node.GetBinaryLabelmapRepresentation(segment_id, img)
    ni, nj, nk = vol.GetImageData().GetDimensions()
    out = np.zeros((nk, nj, ni), np.uint8)
    e = img.GetExtent()
    if e[1] < e[0]:
        return out
    m, v = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    img.GetImageToWorldMatrix(m)
    vol.GetIJKToRASMatrix(v)
    assert np.allclose([[m.GetElement(r, c) for c in range(4)] for r in range(4)],
                       [[v.GetElement(r, c) for c in range(4)] for r in range(4)], atol=1e-5)
    from vtk.util import numpy_support
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1,
                                                                             e[1] - e[0] + 1)
    assert e[0] >= 0 and e[2] >= 0 and e[4] >= 0 and e[1] < ni and e[3] < nj and e[5] < nk
    out[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = arr > 0
    return out


def fill_segment(mrml, seg_node, name, mask_kji, vol):
    sid = seg_node.GetSegmentation().AddEmptySegment("", name)
    if mask_kji is not None:
        segmentio.write_segment(seg_node, sid, vol, mask_kji.astype(np.uint8))
    return sid


def place_roi(scene, vol, k, box_xy):
    """An ROI around slice ``k``'s box (x0, y0, x1, y1) in voxel coordinates (axis 0),
    one voxel thick, oriented along the volume's axes (world)."""
    x0, y0, x1, y1 = box_xy
    centre = ras_of(vol, [k, (y0 + y1) / 2, (x0 + x1) / 2])[0]
    a = ijk_to_world_independent(vol)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    # ROI axes = the volume's world axes, so the box maps back to exactly (x0, y0, x1, y1).
    orient = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            orient.SetElement(r, c, a[r, c] / spacing[c])
        orient.SetElement(r, 3, centre[r])
    roi.SetAndObserveObjectToNodeMatrix(orient)
    roi.SetSize((x1 - x0) * spacing[0], (y1 - y0) * spacing[1], 0.5 * spacing[2])
    return roi


@pytest.fixture(scope="module")
def spleen_reference(model, abdomen, abdomen_engine):
    """RadSAMLib's own result for the spleen box prompt (no MRML involved)."""
    from RadSAMLib.prompts import SlicePrompt, box_of_mask
    from RadSAMLib.session import Session
    lab = abdomen[2]
    box = box_of_mask(lab[SPLEEN_SLICE] == SPLEEN, margin=2)
    s = Session(abdomen_engine)
    ch = s.segment(SPLEEN_SLICE, SlicePrompt(box=box), bounds=SPLEEN_BOUNDS)
    assert ch.slices == list(range(SPLEEN_BOUNDS[0], SPLEEN_BOUNDS[1] + 1))
    return box, s.mask.copy()


def ct_engine(abdomen, engine):
    """An engine factory that hands out ``engine`` once it has checked what the logic read."""
    def engine_factory(m, volume, axis, window):
        # The logic must have read exactly the CT's voxels, in (k, j, i) order.
        assert axis == 0 and volume.dtype == np.int16 and np.array_equal(volume, abdomen[1])  # a copy, int16 kept
        assert window == engine.window        # the shared engine's slices are encoded under the default
        return engine
    return engine_factory


@contextlib.contextmanager
def logic_on_ct(model, engine_factory, **geometry):
    """A fresh scene holding the CT (``geometry``: ``Mrml.load_ct``'s options), a RadSAMLogic
    on it and a new segmentation of the CT: yields (mrml, vol, logic, seg). The logic's
    worker thread is shut down however the test ends."""
    mrml = Mrml()
    vol = mrml.load_ct(**geometry)
    logic = RadSAMLogic(mrml.scene, model_loader=lambda spec: model, engine_factory=engine_factory)
    try:
        yield mrml, vol, logic, logic.create_segmentation(vol)
    finally:
        logic.shutdown()


def rounded(prompts):
    return [(s, tuple(float(round(v, 6)) + 0.0 for v in xy), lab) for s, xy, lab in prompts]


GEOMETRIES = {"plain": {}, "oblique": {"oblique": True}, "transform": {"transform": True},
              "oblique+transform": {"oblique": True, "transform": True}}


# -- geometry: RAS <-> voxels ---------------------------------------------------------------
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_markups_map_to_their_voxels(name, abdomen):
    need(ABDOMEN)
    mrml = Mrml()
    vol = mrml.load_ct(**GEOMETRIES[name])
    assert np.array_equal(geo.volume_array(vol), abdomen[1])
    voxels = np.array([[3, 40, 60], [17, 0, 0], [29, 100, 121], [11, 57, 12]], float)
    assert np.allclose(geo.world_to_kji(vol, ras_of(vol, voxels)), voxels, atol=1e-6)
    pos = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pos")
    neg = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "neg")
    for p in ras_of(vol, voxels[:2]):
        pos.AddControlPoint(*p)
    neg.AddControlPoint(*ras_of(vol, voxels[3])[0])
    assert rounded(mk.point_prompts(vol, 0, pos, neg)) == [
        (3, (60.0, 40.0), 1), (17, (0.0, 0.0), 1), (11, (12.0, 57.0), 0)]
    # The same voxel seen across the other axes: (x, y) = (column, row) of that slice.
    assert rounded(mk.point_prompts(vol, 1, pos))[0] == (40, (60.0, 3.0), 1)
    assert rounded(mk.point_prompts(vol, 2, pos))[0] == (60, (40.0, 3.0), 1)
    roi = place_roi(mrml.scene, vol, 9, (20, 30, 50, 45))
    idx, box = mk.box_prompt(vol, roi, 0)
    assert idx == 9 and np.allclose(box, (20, 30, 50, 45), atol=1e-6)
    # A markup under its own transform is read in world coordinates.
    t = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    tr = vtk.vtkTransform()
    tr.Translate(5, 0, 0)
    t.SetMatrixTransformToParent(tr.GetMatrix())
    moved = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    moved.AddControlPoint(*(ras_of(vol, [[4, 10, 20]])[0] - [5, 0, 0]))
    moved.SetAndObserveTransformNodeID(t.GetID())
    assert rounded(mk.point_prompts(vol, 0, moved)) == [(4, (20.0, 10.0), 1)]


def test_axis_follows_the_view_normal():
    need(ABDOMEN)
    vol = Mrml().load_ct(oblique=True, transform=True)
    a = ijk_to_world_independent(vol)
    assert geo.slice_axis(vol) == 0                    # default: the volume's own slices (k)
    for ijk_axis, numpy_axis in ((0, 2), (1, 1), (2, 0)):
        normal = a[:3, ijk_axis] + 0.2 * a[:3, (ijk_axis + 1) % 3]   # a slightly tilted view
        assert geo.slice_axis(vol, normal) == numpy_axis
        assert geo.slice_axis(vol, -normal) == numpy_axis


def test_bad_prompts_have_clear_messages():
    need(ABDOMEN)
    from RadSAMLib.errors import PromptError, RadSAMError
    mrml = Mrml()
    vol = mrml.load_ct()
    pts = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    pts.AddControlPoint(*ras_of(vol, [[5, 50, 130]])[0])        # i = 130 > 121
    with pytest.raises(PromptError, match="point 1 of 'clicks' is outside the volume"):
        mk.point_prompts(vol, 0, pts)
    far = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "far")
    far.AddControlPoint(*ras_of(vol, [[40, 50, 50]])[0])         # slice 40 of 30
    with pytest.raises(PromptError, match="slice 40, the volume has slices 0..29"):
        mk.point_prompts(vol, 0, far)
    a = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    a.AddControlPoint(*ras_of(vol, [[5, 50, 50]])[0])
    a.AddControlPoint(*ras_of(vol, [[6, 50, 50]])[0])
    with pytest.raises(PromptError, match="different slices \\(5, 6\\)"):
        mk.initial_prompt(vol, 0, positive=a)
    with pytest.raises(PromptError, match="no prompt"):
        mk.initial_prompt(vol, 0)
    with pytest.raises(RadSAMError, match="no volume selected"):
        geo.volume_array(None)
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(RadSAMError, match="segment 'nope' not found"):
        segmentio.read_segment(seg, "nope", vol)


# -- writing slices into a segment (no model) -------------------------------------------------
def test_write_slices_touches_only_those_slices_of_that_segment(abdomen):
    need(ABDOMEN)
    mrml = Mrml()
    vol = mrml.load_ct(transform=True)
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    seg.SetAndObserveTransformNodeID(vol.GetParentTransformNode().GetID())
    liver = (abdomen[2] == LIVER).astype(np.uint8)
    kidney = (abdomen[2] == KIDNEY_L).astype(np.uint8)
    other = fill_segment(mrml, seg, "liver", liver, vol)
    sid = fill_segment(mrml, seg, "work", kidney, vol)
    seg.GetSegmentation().CollapseBinaryLabelmaps(False)
    assert seg.GetSegmentation().GetNumberOfLayers() == 1          # both in one shared layer
    rng = np.random.default_rng(0)
    new = {5: rng.random(kidney.shape[1:]) > 0.5, 6: np.zeros(kidney.shape[1:], bool), 29: liver[29] > 0}
    changed = segmentio.write_slices(seg, sid, vol, new, axis=0)
    assert changed == [5, 6, 29]
    want = kidney.copy()
    for k, m in new.items():
        want[k] = m
    assert np.array_equal(segment_voxels(seg, sid, vol), want)
    assert np.array_equal(segment_voxels(seg, other, vol), liver)   # even where they now overlap
    assert segmentio.write_slices(seg, sid, vol, {5: new[5]}, axis=0) == []     # unchanged: no write
    # Slices across another axis (j): rows are k, columns i.
    col = np.zeros((want.shape[0], want.shape[2]), bool)
    col[3:9, 40:60] = True
    segmentio.write_slices(seg, sid, vol, {50: col}, axis=1)
    want[:, 50, :] = col
    assert np.array_equal(segment_voxels(seg, sid, vol), want)
    segmentio.write_segment(seg, sid, vol, np.zeros_like(want))
    assert not segment_voxels(seg, sid, vol).any()
    assert np.array_equal(segment_voxels(seg, other, vol), liver)


def test_slicer_replace_with_an_extent_replaces_the_whole_segment(abdomen):
    """Why segmentio writes whole segments: measured Slicer behaviour (if this starts
    failing, Slicer changed and slab writes may become possible)."""
    need(ABDOMEN)
    mrml = Mrml()
    vol = mrml.load_ct()
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    kidney = (abdomen[2] == KIDNEY_L).astype(np.uint8)
    sid = fill_segment(mrml, seg, "work", kidney, vol)
    img = segmentio._oriented_image(kidney, geo.ijk_to_node_frame(vol, seg))
    ni, nj, _ = vol.GetImageData().GetDimensions()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(img, seg, sid, logic.MODE_REPLACE, [0, ni - 1, 0, nj - 1, 10, 10])
    got = segment_voxels(seg, sid, vol)
    assert np.array_equal(got[10], kidney[10]) and not np.delete(got, 10, axis=0).any()


# -- propagation into a segmentation ------------------------------------------------------
@pytest.mark.parametrize("name", ["plain", "oblique+transform"])
def test_propagation_is_written_voxel_exact(name, model, abdomen, abdomen_engine, spleen_reference):
    box, expected = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, abdomen_engine), **GEOMETRIES[name]) as (mrml, vol, logic, seg):
        liver = (abdomen[2] == LIVER).astype(np.uint8)
        kidney = (abdomen[2] == KIDNEY_L).astype(np.uint8)
        other = fill_segment(mrml, seg, "liver", liver, vol)
        target = fill_segment(mrml, seg, "spleen", None, vol)
        third = fill_segment(mrml, seg, "kidney", kidney, vol)
        seg.GetSegmentation().CollapseBinaryLabelmaps(False)   # share one layer where they can
        roi = place_roi(mrml.scene, vol, SPLEEN_SLICE, box)
        job = logic.start_segment_from_markups(logic.target_for(vol, seg, target), SPLEEN_BOUNDS, box_node=roi)
        change = logic.wait(job)
        assert not change.cancelled and change.slices == list(range(SPLEEN_BOUNDS[0], SPLEEN_BOUNDS[1] + 1))
        got = segment_voxels(seg, target, vol)
        assert got.sum() > 1000 and np.array_equal(got, expected)
        assert np.array_equal(segment_voxels(seg, other, vol), liver)
        assert np.array_equal(segment_voxels(seg, third, vol), kidney)


def test_undo_redo_and_edit_restore_exact_labelmaps(model, abdomen, abdomen_engine, spleen_reference):
    from RadSAMLib.prompts import SlicePrompt
    box, expected = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, abdomen_engine), transform=True) as (mrml, vol, logic, seg):
        # The target segment already holds voxels (a hand-drawn kidney) on every slice.
        before = (abdomen[2] == KIDNEY_L).astype(np.uint8)
        sid = fill_segment(mrml, seg, "work", before, vol)
        t = logic.target_for(vol, seg, sid)
        logic.segment(t, SPLEEN_SLICE, SlicePrompt(box=box), SPLEEN_BOUNDS)
        after = segment_voxels(seg, sid, vol)
        lo, hi = SPLEEN_BOUNDS
        outside = np.r_[0:lo, hi + 1:after.shape[0]]
        assert np.array_equal(after[outside], before[outside])        # slices outside untouched
        # Inside the bounds the session started from the kidney voxels; the spleen slices
        # were recomputed from the prompt, so they hold the propagated result.
        assert np.array_equal(after[lo:hi + 1], expected[lo:hi + 1])
        assert logic.can_undo()
        undone = logic.undo()
        assert undone.slices == list(range(lo, hi + 1))
        assert np.array_equal(segment_voxels(seg, sid, vol), before)
        logic.redo()
        assert np.array_equal(segment_voxels(seg, sid, vol), after)
        # A negative correction click inside the spleen on its prompt slice.
        ys, xs = np.nonzero(after[SPLEEN_SLICE])
        edit = logic.edit(t, SPLEEN_SLICE, (float(xs[0]), float(ys[0])), positive=False)
        assert SPLEEN_SLICE in edit.slices
        edited = segment_voxels(seg, sid, vol)
        assert not np.array_equal(edited, after)
        assert np.array_equal(edited[outside], before[outside])
        logic.undo()
        assert np.array_equal(segment_voxels(seg, sid, vol), after)
        logic.undo()
        assert np.array_equal(segment_voxels(seg, sid, vol), before)


class SlowEngine:
    """The shared engine with a pause after each prediction, so a cancel lands mid-run."""

    def __init__(self, engine, pause):
        self._engine, self._pause = engine, pause

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def predict(self, idx, prompt):
        return self.predict_best(idx, [prompt])

    def predict_best(self, idx, prompts):   # what propagation calls
        r = self._engine.predict_best(idx, prompts)
        time.sleep(self._pause)
        return r


def test_cancel_mid_run_leaves_each_slice_old_or_new(model, abdomen, abdomen_engine, spleen_reference):
    from RadSAMLib.prompts import SlicePrompt
    box, expected = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, SlowEngine(abdomen_engine, 0.15))) as (mrml, vol, logic, seg):
        before = (abdomen[2] == LIVER).astype(np.uint8)   # old content differs from the result
        sid = fill_segment(mrml, seg, "work", before, vol)
        t = logic.target_for(vol, seg, sid)
        job = logic.start_segment(t, SPLEEN_SLICE, SlicePrompt(box=box), SPLEEN_BOUNDS)
        streamed = []
        deadline = time.monotonic() + 60
        while not job.finished and time.monotonic() < deadline:
            streamed += logic.pump()                   # results stream in while it runs
            if len(streamed) >= 3:
                logic.cancel()
                break
            time.sleep(0.01)
        change = logic.wait(job)
        assert change.cancelled, "the run ended before the cancel: make the engine slower"
        n = SPLEEN_BOUNDS[1] - SPLEEN_BOUNDS[0] + 1
        assert 3 <= len(change.slices) < n and job.progress[0] == len(change.slices)
        got = segment_voxels(seg, sid, vol)
        for k in range(got.shape[0]):
            if k in change.slices:
                assert np.array_equal(got[k], expected[k]), k
            else:
                assert np.array_equal(got[k], before[k]), k
        assert not logic.busy
        logic.undo()
        assert np.array_equal(segment_voxels(seg, sid, vol), before)


def test_core_errors_reach_the_caller(model, abdomen, abdomen_engine):
    from RadSAMLib.errors import BoundsError, RadSAMError
    from RadSAMLib.prompts import SlicePrompt
    with logic_on_ct(model, ct_engine(abdomen, abdomen_engine)) as (mrml, vol, logic, seg):
        sid = logic.add_segment(seg)
        t = logic.target_for(vol, seg, sid)
        with pytest.raises(BoundsError, match="bottom and the top"):
            logic.start_segment(t, 10, SlicePrompt(box=(10, 10, 30, 30)), (None, 12))
        with pytest.raises(RadSAMError, match="outside the volume"):
            logic.segment(t, 10, SlicePrompt(box=(10, 10, 30, 30)), (0, 40))
        assert not segment_voxels(seg, sid, vol).any() and not logic.busy


def test_mask_prompt_and_click_edit_match_radsamlib(model, abdomen, abdomen_engine):
    """The Mask button (the segment's own mask on a slice as the prompt) and a correction
    click placed in world RAS on an oblique, transformed volume give RadSAMLib's result."""
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session
    bounds = (20, 24)
    start = np.zeros_like(abdomen[2], dtype=np.uint8)
    start[SPLEEN_SLICE] = abdomen[2][SPLEEN_SLICE] == SPLEEN       # drawn by hand on one slice
    engine = ct_engine(abdomen, abdomen_engine)
    with logic_on_ct(model, engine, oblique=True, transform=True) as (mrml, vol, logic, seg):
        sid = fill_segment(mrml, seg, "spleen", start, vol)
        t = logic.target_for(vol, seg, sid)
        logic.wait(logic.start_segment_from_markups(t, bounds, mask_slice=SPLEEN_SLICE))
        ref = Session(abdomen_engine)
        ref.mask[:] = start                    # the logic starts from the segment's content
        ref.segment(SPLEEN_SLICE, SlicePrompt(mask=start[SPLEEN_SLICE] > 0), bounds=bounds)
        assert np.array_equal(segment_voxels(seg, sid, vol), ref.mask)
        # A click on slice 21 where the result is wrong (the deepest missed or leaked
        # spleen voxel, so it changes the mask), placed at its world position.
        from scipy import ndimage
        gt21, cur = abdomen[2][21] == SPLEEN, ref.mask[21] > 0
        positive = (gt21 & ~cur).sum() >= (cur & ~gt21).sum()
        wrong = gt21 & ~cur if positive else cur & ~gt21
        assert wrong.any()
        depth = ndimage.distance_transform_edt(wrong)
        y, x = (int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))
        click = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "click")
        click.AddControlPoint(*ras_of(vol, [[21, y, x]])[0])
        ras = mk.control_points_world(click)[0]
        change = logic.wait(logic.start_edit_at(t, ras, positive=positive))
        ref_change = ref.edit(21, (x, y), positive=positive)
        assert change.slices == ref_change.slices and 21 in change.slices
        assert np.array_equal(segment_voxels(seg, sid, vol), ref.mask)
        with pytest.raises(Exception, match="empty on slice 3"):
            logic.start_segment_from_markups(t, bounds, mask_slice=3)


def test_bottom_and_top_work_whichever_way_the_slice_axis_runs(model, abdomen, abdomen_engine, spleen_reference):
    """Bottom/Top are the organ's ends in patient terms: on a volume whose k axis runs
    inferior the bottom has the higher index; both orders give the same result."""
    from RadSAMLib.prompts import SlicePrompt
    box, expected = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, abdomen_engine)) as (mrml, vol, logic, seg):
        sid = logic.add_segment(seg)
        t = logic.target_for(vol, seg, sid)
        change = logic.segment(t, SPLEEN_SLICE, SlicePrompt(box=box), SPLEEN_BOUNDS[::-1])
        assert change.slices == list(range(SPLEEN_BOUNDS[0], SPLEEN_BOUNDS[1] + 1))
        assert np.array_equal(segment_voxels(seg, sid, vol), expected)


def test_a_click_during_a_run_is_queued_and_runs_after_it(model, abdomen, abdomen_engine, spleen_reference):
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session
    box, _ = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, SlowEngine(abdomen_engine, 0.05))) as (mrml, vol, logic, seg):
        sid = logic.add_segment(seg)
        t = logic.target_for(vol, seg, sid)
        first = logic.start_segment(t, SPLEEN_SLICE, SlicePrompt(box=box), SPLEEN_BOUNDS)
        ys, xs = np.nonzero(abdomen[2][SPLEEN_SLICE] == SPLEEN)
        click = (float(xs[0]), float(ys[0]))
        assert logic.start_edit(t, SPLEEN_SLICE, click, positive=False) is None      # queued, not refused
        assert logic.queued == 1 and logic.busy and not first.finished
        logic.wait(first)                      # pumps the first job, then the queued click's
        assert logic.queued == 0 and not logic.busy and logic.job is not first
        ref = Session(abdomen_engine)
        ref.segment(SPLEEN_SLICE, SlicePrompt(box=box), bounds=SPLEEN_BOUNDS)
        ref.edit(SPLEEN_SLICE, click, positive=False)
        assert np.array_equal(segment_voxels(seg, sid, vol), ref.mask)
        # Two undo steps: the click, then the segmentation.
        logic.undo()
        logic.undo()
        assert not segment_voxels(seg, sid, vol).any()
        # Cancel drops queued clicks with the running job.
        logic.start_segment(t, SPLEEN_SLICE, SlicePrompt(box=box), SPLEEN_BOUNDS)
        logic.start_edit(t, SPLEEN_SLICE, click, positive=False)
        logic.cancel()
        assert logic.queued == 0
        logic.wait()
        assert not logic.busy


def test_removing_a_volume_releases_its_encoded_slices(model, abdomen, abdomen_engine, spleen_reference):
    from RadSAMLib.prompts import SlicePrompt
    box, _ = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, abdomen_engine)) as (mrml, vol, logic, seg):
        t = logic.target_for(vol, seg, logic.add_segment(seg))
        logic.segment(t, SPLEEN_SLICE, SlicePrompt(box=box), (SPLEEN_SLICE - 1, SPLEEN_SLICE + 1))
        assert logic._engines and logic._sessions
        logic.forget_volume("some other volume")
        assert logic._engines and logic._sessions
        logic.forget_volume(vol.GetID())
        assert not logic._engines and not logic._sessions and logic.target is None
