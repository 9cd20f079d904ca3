"""Encode while the user looks (RadSAMSlicerLib.prefetch) on real MRML: a chosen volume's
engine is made on the worker from a main-thread numpy copy and encodes outward from the
viewed slice; scrolling re-centres it, another volume stops it, the count is reported,
and the prompt's job then uses that engine. Fake model (logic only)."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from conftest import ROOT, wait_for
from fakes import FakeModel

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from vtk.util import numpy_support  # noqa: E402

from RadSAMSlicerLib import ModelSpec, RadSAMLogic  # noqa: E402
from RadSAMSlicerLib.prefetch import LookAhead  # noqa: E402

SHAPE = (30, 24, 20)


class SlowModel(FakeModel):
    def encode(self, images):
        time.sleep(0.01 * len(images))
        return super().encode(images)


def volume_node(scene, name="ct"):
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    img = vtk.vtkImageData()
    img.SetDimensions(SHAPE[2], SHAPE[1], SHAPE[0])
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    voxels = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
    voxels[:] = 40
    voxels[:SHAPE[2]] = -1000        # air along one edge: a CT in HU (RadSAMLogic.window_for)
    vol.SetAndObserveImageData(img)
    return vol


@pytest.fixture
def logic():
    loads = []

    def loader(spec):
        loads.append(spec)
        return SlowModel()
    scene = slicer.vtkMRMLScene()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    lg = RadSAMLogic(scene, model_loader=loader)
    lg.keep = segmentations       # the module logic lives as long as the scene
    lg.loads = loads
    yield lg
    lg.shutdown()


def engine(logic, ahead):
    return logic._engines.get(ahead.key)


def test_a_chosen_volume_is_encoded_from_the_viewed_slice(logic):
    vol = volume_node(logic.scene)
    ahead = LookAhead()
    spec = ModelSpec("litemedsam", device="cpu")
    ahead.follow(logic, vol, 0, 20, spec, "soft-tissue")
    assert not logic.busy                       # the user can prompt at once
    wait_for(lambda: engine(logic, ahead) is not None)
    eng = engine(logic, ahead)
    assert eng.volume.shape == SHAPE and logic.loads == [spec]
    wait_for(lambda: len(eng.cached_slices()) >= 3)
    first = eng.cached_slices()
    assert set(first[:3]) <= {18, 19, 20, 21, 22}    # outward from slice 20
    ahead.follow(logic, vol, 0, -7, spec, "soft-tissue")  # the user scrolled (beyond the first slice)
    wait_for(lambda: eng.is_cached(0))
    wait_for(lambda: eng.prefetch_status()[2] == "done")
    assert ahead.status(logic) == f"{SHAPE[0]} of {SHAPE[0]} slices ready"
    assert logic.loads == [spec]                # one model, one engine

    # The prompt's job finds that engine: nothing is encoded again.
    from RadSAMLib.prompts import SlicePrompt
    seg = logic.create_segmentation(vol)
    target = logic.target_for(vol, seg, logic.add_segment(seg), axis=0)
    n = eng.encode_count
    logic.segment(target, 15, SlicePrompt(box=(4, 4, 12, 12)), bounds=(10, 20))
    assert logic._engines.get(ahead.key) is eng and eng.encode_count == n


def test_another_volume_stops_the_first_and_auto_window_encodes_nothing(logic):
    a, b = volume_node(logic.scene, "a"), volume_node(logic.scene, "b")
    ahead = LookAhead()
    spec = ModelSpec("litemedsam", device="cpu")
    ahead.follow(logic, a, 0, 15, spec, "soft-tissue")
    wait_for(lambda: engine(logic, ahead) is not None and len(engine(logic, ahead).cached_slices()) >= 1)
    first = engine(logic, ahead)
    thread = first._bg_thread               # a stop that does not wait drops its handle at once
    ahead.follow(logic, b, 0, 15, spec, "soft-tissue")
    thread is None or thread.join(5)        # the slice in flight, if any, is finished
    assert first.prefetch_status()[2] == "stopped"
    n = len(first.cached_slices())
    wait_for(lambda: engine(logic, ahead) is not None)
    assert engine(logic, ahead).volume.shape == SHAPE and engine(logic, ahead) is not first
    time.sleep(0.1)
    assert len(first.cached_slices()) == n
    ahead.follow(logic, b, 0, 15, spec, "auto")       # the window depends on the prompt
    assert ahead.key is None and ahead.status(logic) == ""


def test_an_engine_made_for_other_settings_is_never_replaced(logic):
    """Changing the window after a prompt must not drop the prompt's engine (its sessions
    hold the undo steps): only a new prompt may."""
    vol = volume_node(logic.scene)
    ahead = LookAhead()
    spec = ModelSpec("litemedsam", device="cpu")
    ahead.follow(logic, vol, 0, 15, spec, "soft-tissue")
    wait_for(lambda: engine(logic, ahead) is not None)
    first = engine(logic, ahead)
    ahead.follow(logic, vol, 0, 15, spec, "lung")
    time.sleep(0.3)
    ahead.follow(logic, vol, 0, 15, spec, "lung")
    assert list(logic._engines.values()) == [first] and ahead.status(logic) == ""


def test_a_volume_not_in_hounsfield_units_is_not_encoded_ahead(logic):
    """An MR gets its prompt region's window (RadSAMLogic.window_for): a preset encoded
    ahead would never be used."""
    vol = volume_node(logic.scene, "mr")
    arr = numpy_support.vtk_to_numpy(vol.GetImageData().GetPointData().GetScalars())
    arr[:] = 300
    vol.GetImageData().Modified()
    ahead = LookAhead()
    ahead.follow(logic, vol, 0, 15, ModelSpec("litemedsam", device="cpu"), "soft-tissue")
    time.sleep(0.3)
    assert ahead.key is None and logic._engines == {} and ahead.status(logic) == ""
