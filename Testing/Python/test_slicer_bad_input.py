"""Bad input and faults on the Slicer side: one table, at the logic layer (``RadSAMLogic`` on
``slicer-core``'s real MRML), the counterpart of the command line's test_bad_input.py.

Every row ends the way the module needs it to: a one-line ``RadSAMError`` (the module
shows it in its status line; ``errors.is_user_error`` is what keeps a traceback out of
the log), no half-written segment (each slice holds what it held before or a whole new
result, other segments keep every voxel), and the undo history intact (undo still takes
the segment back to what it was before RadSAM touched it).

The model is a stand-in (fakes.FakeModel: it returns its prompt) behind a gate, so a
test decides how many slices a run has finished when the fault strikes. Milliseconds
per row, no data.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from vtk.util import numpy_support  # noqa: E402

from fakes import FakeModel  # noqa: E402
from RadSAMLib.errors import RadSAMError  # noqa: E402
from RadSAMLib.prompts import SlicePrompt  # noqa: E402
from RadSAMSlicerLib import RadSAMLogic, segmentio  # noqa: E402
from RadSAMSlicerLib import geometry as geo  # noqa: E402
from RadSAMSlicerLib.errors import is_user_error, message_for  # noqa: E402

SHAPE = (20, 40, 48)                     # (k, j, i)
BOX = (10, 8, 30, 24)                    # (x0, y0, x1, y1) on every slice
PROMPT_SLICE, BOUNDS = 10, (3, 16)


class GatedModel(FakeModel):
    """FakeModel whose decoder waits for a permit (``step``), so a run advances one model
    call at a time; ``open()`` lets it run freely."""

    def __init__(self):
        super().__init__(strategy="mask")
        self.permits = threading.Semaphore(0)
        self.free = threading.Event()
        self.calls = 0

    def decode(self, *args, **kwargs):
        if not self.free.is_set():
            assert self.permits.acquire(timeout=30), "the test never let the model run"
        self.calls += 1
        return super().decode(*args, **kwargs)

    def open(self):
        self.free.set()
        self.permits.release(1000)


def make_volume(scene, shape=SHAPE, name="ct", cls="vtkMRMLScalarVolumeNode", components=1, values=None,
                identity=False):
    """A CT-like volume: air (-1000 HU) around a soft-tissue body (40 HU)."""
    vol = scene.AddNewNodeByClass(cls, name)
    img = vtk.vtkImageData()
    img.SetDimensions(shape[2], shape[1], shape[0])
    img.AllocateScalars(vtk.VTK_SHORT, components)
    if values is None:
        values = np.full(shape, -1000, np.int16)
        values[:, 4:-4, 4:-4] = 40
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
    arr[:] = np.repeat(values.ravel()[:, None], components, axis=1).reshape(arr.shape)
    vol.SetAndObserveImageData(img)
    if not identity:
        vol.SetSpacing(0.8, 0.8, 2.5)
        vol.SetOrigin(-20.0, 15.0, -40.0)
    return vol


class Scene:
    """A scene with the Segmentations logic (converter rules), a CT-like volume, a
    segmentation holding a filled segment 'other' and an empty target segment, and a
    RadSAMLogic whose model is a :class:`GatedModel`."""

    def __init__(self, shape=SHAPE, **volume):
        self.scene = slicer.vtkMRMLScene()
        self._segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self._segmentations.SetMRMLScene(self.scene)
        self.vol = make_volume(self.scene, shape, **volume)
        self.model = GatedModel()
        self.logic = RadSAMLogic(self.scene, model_loader=lambda spec: self.model)
        self.seg = self.logic.create_segmentation(self.vol)
        self.other = RadSAMLogic.add_segment(self.seg, "other")
        self.other_voxels = np.zeros(shape, np.uint8)
        self.other_voxels[:, 30:, 30:] = 1
        segmentio.write_segment(self.seg, self.other, self.vol, self.other_voxels)
        self.sid = RadSAMLogic.add_segment(self.seg, "organ")

    def target(self, sid=None):
        return self.logic.target_for(self.vol, self.seg, sid or self.sid)

    def voxels(self, sid=None):
        return segmentio.read_segment(self.seg, sid or self.sid, self.vol)

    def start(self, box=BOX, slice_idx=PROMPT_SLICE, bounds=BOUNDS):
        return self.logic.start_segment(self.target(), slice_idx, SlicePrompt(box=box), bounds)

    def advance(self, job, slices: int, timeout=30.0):
        """Let the run finish ``slices`` slices (in all) and write them into the segment."""
        deadline = time.monotonic() + timeout
        while job.progress[0] < slices:
            assert time.monotonic() < deadline and not job.finished, "the run did not advance"
            done, calls = job.progress[0], self.model.calls
            self.model.permits.release()
            while self.model.calls == calls and time.monotonic() < deadline:
                time.sleep(0.002)
            # The slice is reported right after its model call (if that call ends a slice).
            settle = time.monotonic() + 2.0
            while job.progress[0] == done and time.monotonic() < settle:
                time.sleep(0.002)
        self.logic.pump()

    def finish(self):
        self.model.open()
        return self.logic.wait()

    def close(self):
        self.model.open()
        self.logic.shutdown()


@pytest.fixture
def mrml():
    m = Scene()
    yield m
    m.close()


def full_result(shape=SHAPE):
    """What a finished run of the stand-in model writes: the box on every bounded slice."""
    want = np.zeros(shape, np.uint8)
    x0, y0, x1, y1 = BOX
    want[BOUNDS[0]:BOUNDS[1] + 1, y0:y1 + 1, x0:x1 + 1] = 1
    return want


def assert_whole_slices(got, before, after):
    """Each slice across axis 0 is exactly its old content or exactly the new result."""
    for k in range(got.shape[0]):
        assert np.array_equal(got[k], before[k]) or np.array_equal(got[k], after[k]), f"slice {k} is half-written"


def assert_one_line_user_error(exc):
    assert isinstance(exc, RadSAMError) and is_user_error(exc)
    text = message_for(exc)
    assert text == str(exc) and "\n" not in text and "Traceback" not in text
    return text


def wait_idle(logic, timeout=30.0):
    deadline = time.monotonic() + timeout
    while logic.busy:
        assert time.monotonic() < deadline, "the logic stayed busy"
        logic.pump()
        time.sleep(0.01)


# -- faults while a run streams in --------------------------------------------------------
def remove_volume(m):
    m.scene.RemoveNode(m.vol)


def remove_segmentation(m):
    m.scene.RemoveNode(m.seg)


def remove_segment(m):
    m.seg.GetSegmentation().RemoveSegment(m.sid)


def close_scene(m):
    m.scene.Clear(0)
    m.logic.clear_cache()         # what the module does on the scene's EndCloseEvent


def next_frame(m):
    """A sequence browser shows another frame: the proxy volume gets other voxels."""
    img = vtk.vtkImageData()
    img.DeepCopy(m.vol.GetImageData())
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] += 7
    m.vol.SetAndObserveImageData(img)


def switch_editor_segment(m):
    m.selected = (m.seg, m.other)


# row: (how the fault strikes, the message, whether the segment (and its undo) remain)
FAULTS = {
    "volume removed": (remove_volume, "volume 'ct' was removed from the scene while RadSAM was working", False),
    "segmentation removed": (remove_segmentation, "segmentation 'ct RadSAM' was removed from the scene", False),
    "segment removed": (remove_segment, "the segment RadSAM was writing was removed from 'ct RadSAM'", False),
    "scene closed": (close_scene, "the scene was closed while RadSAM was working", False),
    "sequence frame changed": (next_frame, "the voxels of volume 'ct' changed while RadSAM was working", True),
    "editor switched segment": (switch_editor_segment,
                                "another segment was selected in the Segment Editor while RadSAM was writing 'organ'",
                                True),
}


@pytest.mark.parametrize("row", list(FAULTS))
def test_a_fault_mid_run_stops_it_cleanly(row, mrml, caplog):
    strike, message, segment_remains = FAULTS[row]
    m = mrml
    m.selected = (m.seg, m.sid)
    m.logic.selected_segment = lambda: m.selected
    # A first run that completes: the history has a step before the faulty one.
    first = {k: m.voxels()[k] for k in range(SHAPE[0])}
    m.start(bounds=(PROMPT_SLICE, PROMPT_SLICE))
    m.finish()
    before = m.voxels()
    assert before[PROMPT_SLICE].any() and not np.array_equal(before, np.stack(list(first.values())))
    job = m.start()
    m.advance(job, 4)
    written_before_fault = m.voxels()
    assert (written_before_fault != before).any()            # slices were streaming in
    strike(m)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RadSAMError) as info:
            m.logic.pump()
    text = assert_one_line_user_error(info.value)
    assert text.startswith(message) and "RadSAM stopped" in text
    assert not [r for r in caplog.records if r.exc_info]     # nothing for the log's traceback
    m.model.open()
    wait_idle(m.logic)
    assert m.logic.pump() == [] and not m.logic.busy
    if row == "scene closed":
        assert m.logic._engines == {} and m.logic._sessions == {}    # released once the run ended
    if not segment_remains:
        return
    got = m.voxels()
    assert np.array_equal(got, written_before_fault)         # nothing more was written after the fault
    assert_whole_slices(got, before, full_result())
    assert np.array_equal(m.voxels(m.other), m.other_voxels)
    if row == "sequence frame changed":
        # The volume now shows other voxels: RadSAM works on them (new encodings).
        m.start()
        m.finish()
        assert np.array_equal(m.voxels(), full_result())
        return
    # Undo takes back the stopped run, then the first run: the history is intact.
    m.logic.selected_segment = None
    assert m.logic.undo() is not None and np.array_equal(m.voxels(), before)
    assert m.logic.undo() is not None and not m.voxels().any()
    assert np.array_equal(m.voxels(m.other), m.other_voxels)


# -- bad input: refused before anything starts ----------------------------------------------
def rgb_volume(m):
    return make_volume(m.scene, name="photo", cls="vtkMRMLVectorVolumeNode", components=3)


def four_d_volume(m):
    return make_volume(m.scene, name="perfusion", components=12)      # a MultiVolume's image


def labelmap_volume(m):
    return make_volume(m.scene, name="labels", cls="vtkMRMLLabelMapVolumeNode")


VOLUMES = {
    "RGB volume": (rgb_volume, "volume 'photo' has 3 values per voxel (a colour (RGB) volume)"),
    "4D multi-frame volume": (four_d_volume, "volume 'perfusion' has 12 values per voxel (a multi-frame (4D) volume)"),
    "labelmap volume": (labelmap_volume, "volume 'labels' is a labelmap"),
}


@pytest.mark.parametrize("row", list(VOLUMES))
def test_a_volume_that_is_not_a_ct_image_is_refused(row, mrml):
    make, message = VOLUMES[row]
    vol = make(mrml)
    with pytest.raises(RadSAMError) as info:
        mrml.logic.target_for(vol, mrml.seg, mrml.sid)
    assert assert_one_line_user_error(info.value).startswith(message)
    with pytest.raises(RadSAMError, match="choose the CT volume|scalar CT volume"):
        mrml.logic.create_segmentation(vol)
    assert not mrml.voxels().any() and not mrml.logic.busy and not mrml.logic.can_undo()


PROMPTS = {
    "prompt slice outside": (dict(slice_idx=SHAPE[0] + 3, bounds=None), "prompt slice 23 is outside"),
    "negative prompt slice": (dict(slice_idx=-1, bounds=None), "prompt slice -1 is outside"),
    "box outside the slice": (dict(box=(60, 8, 80, 24), bounds=None), "box (60, 8, 80, 24) is outside the image"),
    "bounds outside": (dict(bounds=(-2, SHAPE[0] + 5)), "bounds -2..25 are outside the volume (slices 0..19)"),
    "prompt outside the bounds": (dict(bounds=(12, 16)), "prompt slice 10 is outside the bounds 12..16"),
}


@pytest.mark.parametrize("row", list(PROMPTS))
def test_a_prompt_or_bounds_outside_the_volume_is_refused_before_anything_starts(row, mrml):
    kwargs, message = PROMPTS[row]
    steps = []
    mrml.logic.on_step = steps.append                    # the Segment Editor's undo state
    with pytest.raises(RadSAMError) as info:
        mrml.start(**kwargs)
    assert message in assert_one_line_user_error(info.value)
    assert steps == [] and mrml.logic.job is None and mrml.model.calls == 0
    assert not mrml.voxels().any() and not mrml.logic.can_undo()


def test_a_correction_outside_the_volume_is_refused(mrml):
    mrml.start()
    mrml.finish()
    before = mrml.voxels()
    t = mrml.target()
    with pytest.raises(RadSAMError) as info:
        mrml.logic.start_edit(t, 5, (60.0, 10.0))
    assert "edit point (60, 10) is outside the image on slice 5" in assert_one_line_user_error(info.value)
    with pytest.raises(RadSAMError, match="the correction point is outside the volume"):
        mrml.logic.start_edit_at(t, geo.kji_to_world(mrml.vol, np.array([SHAPE[0] + 4.0, 10, 10])))
    assert np.array_equal(mrml.voxels(), before) and mrml.logic.queued == 0
    assert mrml.logic.undo() is not None and not mrml.voxels().any()


# -- inputs that work, with what the user is told ----------------------------------------
def test_an_mr_volume_uses_the_prompt_regions_window_and_says_so(caplog):
    values = np.zeros(SHAPE, np.int16)                    # MR-like: 0 outside, 300..900 inside, no HU
    values[:, 4:-4, 4:-4] = 300 + (np.arange(SHAPE[2] - 8) * 15)[None, None, :]
    m = Scene(values=values, name="t1")
    try:
        from RadSAMLib.preprocess import Window
        assert m.logic.window == "soft-tissue" and not geo.looks_like_hu(m.vol)
        with caplog.at_level(logging.WARNING):
            m.start()
            m.finish()
        assert "volume 't1' is not a CT in Hounsfield units" in m.logic.notice
        assert "\n" not in m.logic.notice and not [r for r in caplog.records if r.exc_info]
        window = m.logic._windows[m.logic._target_key(m.target())]
        assert window != Window.preset("soft-tissue") and window.lo >= 0
        assert np.array_equal(m.voxels(), full_result())
        # A CT keeps the preset, with no notice.
        ct = Scene()
        try:
            ct.start()
            ct.finish()
            assert ct.logic.notice is None
            assert ct.logic._windows[ct.logic._target_key(ct.target())] == Window.preset("soft-tissue")
        finally:
            ct.close()
    finally:
        m.close()


def test_a_2048_by_2048_slice_is_segmented_and_written_in_place():
    shape = (4, 2048, 2048)
    m = Scene(shape=shape)
    try:
        t = m.target()
        big_box = (100, 200, 1900, 1500)
        m.model.open()
        job = m.logic.start_segment(t, 1, SlicePrompt(box=big_box), (0, 3))
        change = m.logic.wait(job)
        assert change.slices == [0, 1, 2, 3] and m.logic.notice is None
        got = m.voxels()
        # The stand-in returns its box, through the model's 256 x 256 frame and back.
        x0, y0, x1, y1 = big_box
        assert got[:, y0 + 8:y1 - 8, x0 + 8:x1 - 8].all() and not got[:, :y0 - 8].any()
        assert np.array_equal(m.voxels(m.other), m.other_voxels)
        assert m.logic.undo() is not None and not m.voxels().any()
    finally:
        m.close()
