"""RadSAM as a Segment Editor step honours the editor's masking and undo (the
``slicer-core`` wheel's ``vtkSlicerSegmentEditorLogic``: the editor's own modify, mask and
undo code, without Qt).

Synthetic writes check each masking setting voxel for voxel; a real propagation on the
abdominal CT checks that a RadSAM step is one editor undo state.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")
if not hasattr(slicer, "vtkSlicerSegmentEditorLogic"):
    pytest.skip("this slicer-core has no vtkSlicerSegmentEditorLogic", allow_module_level=True)

from vtk.util import numpy_support  # noqa: E402

from RadSAMSlicerLib import editor, segmentio  # noqa: E402
from test_slicer_logic import (SPLEEN_BOUNDS, SPLEEN_SLICE, ct_engine, fill_segment, logic_on_ct,  # noqa: E402,F401
                               spleen_reference)

SHAPE = (8, 20, 24)


def volume(scene):
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    img = vtk.vtkImageData()
    img.SetDimensions(SHAPE[2], SHAPE[1], SHAPE[0])
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    i = np.broadcast_to(np.arange(SHAPE[2]), SHAPE)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = (i * 10).ravel()   # HU = 10 * i
    vol.SetAndObserveImageData(img)
    vol.SetSpacing(0.9, 0.9, 2.0)
    return vol


class Editor:
    """A segmentation, a source volume and the Segment Editor's logic on them."""

    def __init__(self, scene, vol, seg):
        self.node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(self.node)
        self.node.SetAndObserveSegmentationNode(seg)
        self.node.SetAndObserveSourceVolumeNode(vol)
        self.seg = seg

    def writer(self, segment_id):
        self.node.SetSelectedSegmentID(segment_id)
        modes = {editor.ADD: self.logic.ModificationModeAdd, editor.REMOVE: self.logic.ModificationModeRemove}
        return editor.EditorWriter(
            lambda img, mode: self.logic.ModifySegmentByLabelmap(self.seg, segment_id, img, modes[mode], True, False))


def setup():
    s = slicer.vtkMRMLScene()
    s._keep = slicer.vtkSlicerSegmentationsModuleLogic()
    s._keep.SetMRMLScene(s)
    vol = volume(s)
    seg = s.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    other = seg.GetSegmentation().AddEmptySegment("", "other")
    b = np.zeros(SHAPE, np.uint8)
    b[:, :6] = 1                                        # rows j < 6 on every slice
    segmentio.write_segment(seg, other, vol, b)
    target = seg.GetSegmentation().AddEmptySegment("", "radsam")
    before = np.zeros(SHAPE, np.uint8)
    before[:, 15:, 2:20] = 1                            # the target's own earlier content
    segmentio.write_segment(seg, target, vol, before)
    return s, vol, seg, other, target, b, before


def masks():
    m = np.zeros(SHAPE[1:], bool)
    m[3:12, 4:18] = True
    return {2: m, 5: m}


def expected(before, new, keep):
    want = before.copy()
    for k, m in new.items():
        want[k] = m & keep
    return want


def test_writes_replace_the_given_slices_and_keep_the_others():
    s, vol, seg, other, target, b, before = setup()
    ed = Editor(s, vol, seg)
    ed.node.SetOverwriteMode(ed.node.OverwriteNone)
    assert ed.writer(target)(seg, target, vol, masks(), 0) == [2, 5]
    assert np.array_equal(segmentio.read_segment(seg, target, vol), expected(before, masks(), True))
    assert np.array_equal(segmentio.read_segment(seg, other, vol), b)    # overwrite: none


def test_the_editable_intensity_range_is_honoured():
    s, vol, seg, other, target, b, before = setup()
    ed = Editor(s, vol, seg)
    ed.node.SetOverwriteMode(ed.node.OverwriteNone)
    ed.node.SetSourceVolumeIntensityMask(True)
    ed.node.SetSourceVolumeIntensityMaskRange(55, 125)            # columns i = 6..12
    ed.writer(target)(seg, target, vol, masks(), 0)
    i = np.arange(SHAPE[2])[None, :]
    got = segmentio.read_segment(seg, target, vol)
    # Added only inside the range; removed only inside it too (erasing is masked as well).
    for k in (2, 5):
        inside = np.broadcast_to((i >= 6) & (i <= 12), SHAPE[1:])
        assert np.array_equal(got[k][inside], masks()[k][inside])
        assert np.array_equal(got[k][~inside], before[k][~inside] > 0)
    assert np.array_equal(np.delete(got, [2, 5], 0), np.delete(before, [2, 5], 0))


def test_overwrite_other_segments_follows_the_setting():
    s, vol, seg, other, target, b, before = setup()
    ed = Editor(s, vol, seg)
    ed.node.SetOverwriteMode(ed.node.OverwriteAllSegments)
    ed.writer(target)(seg, target, vol, masks(), 0)
    want_other = b.copy()
    for k, m in masks().items():
        want_other[k][m] = 0
    assert np.array_equal(segmentio.read_segment(seg, other, vol), want_other)


def test_the_editable_area_is_honoured():
    s, vol, seg, other, target, b, before = setup()
    ed = Editor(s, vol, seg)
    ed.node.SetOverwriteMode(ed.node.OverwriteNone)
    ed.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    ed.node.SetMaskSegmentID(other)                                  # editable: inside "other" only
    ed.writer(target)(seg, target, vol, masks(), 0)
    got = segmentio.read_segment(seg, target, vol)
    for k in (2, 5):
        inside = b[k] > 0
        assert np.array_equal(got[k][inside], masks()[k][inside])
        # Nothing is added outside the editable area (what is erased there follows the
        # editor's own Erase rules, as for any effect).
        added = (got[k] > 0) & (before[k] == 0)
        assert not added[~inside].any() and (masks()[k] & ~inside).any()


def test_a_radsam_step_is_one_editor_undo_state(model, abdomen, abdomen_engine, spleen_reference):
    from RadSAMLib.prompts import SlicePrompt
    box, expected_mask = spleen_reference
    with logic_on_ct(model, ct_engine(abdomen, abdomen_engine)) as (mrml, vol, logic, seg):
        liver = (abdomen[2] == 5).astype(np.uint8)
        other = fill_segment(mrml, seg, "liver", liver, vol)
        sid = fill_segment(mrml, seg, "spleen", None, vol)
        ed = Editor(mrml.scene, vol, seg)
        ed.node.SetOverwriteMode(ed.node.OverwriteNone)
        logic.writer = ed.writer(sid)
        steps = []
        logic.on_step = lambda name: (steps.append(name), ed.logic.SaveStateForUndo())
        t = logic.target_for(vol, seg, sid)
        logic.segment(t, SPLEEN_SLICE, SlicePrompt(box=box), SPLEEN_BOUNDS)
        assert steps == ["segment"]
        assert np.array_equal(segmentio.read_segment(seg, sid, vol), expected_mask)
        assert np.array_equal(segmentio.read_segment(seg, other, vol), liver)
        ed.logic.Undo()                                  # the editor's Undo takes the whole step back
        assert not segmentio.read_segment(seg, sid, vol).any()
        assert np.array_equal(segmentio.read_segment(seg, other, vol), liver)
        ed.logic.Redo()
        assert np.array_equal(segmentio.read_segment(seg, sid, vol), expected_mask)
