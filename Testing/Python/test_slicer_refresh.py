"""What the views hear while slices stream in (``slicer-core``'s real MRML, no Qt).

Slice and 3D views redraw a segmentation on the events its node forwards from the
``vtkSegmentation``: ``SourceRepresentationModified`` and ``RepresentationModified``,
with the segment's ID as call data (what Slicer's own ``vtkSegmentationModifier`` sends).
Show 3D displays each segment's closed surface, a representation derived from the
labelmap: a write must leave the other segments' surfaces alone, and a streaming run
rebuilds its own segment's surface about once a second and at its end.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from RadSAMSlicerLib import segmentio  # noqa: E402
from RadSAMSlicerLib.jobs import SurfaceThrottle  # noqa: E402
from test_slicer_bad_input import BOUNDS, SHAPE, Scene, full_result  # noqa: E402

SURFACE = "Closed surface"
VIEW_EVENTS = ("SourceRepresentationModified", "RepresentationModified")


def listen(seg_node):
    """The view events the segmentation node fires: ``[(event name, segment id)]``."""
    heard = []
    for name in VIEW_EVENTS:
        @vtk.calldata_type(vtk.VTK_STRING)
        def on(caller, event, segment_id, name=name):
            heard.append((name, segment_id))
        seg_node.AddObserver(getattr(slicer.vtkSegmentation, name), on)
    return heard


def slice_mask(fill=True):
    m = np.zeros(SHAPE[1:], bool)
    m[5:15, 6:20] = fill
    return m


@pytest.mark.parametrize("identity", [True, False], ids=["identity geometry", "spacing and origin"])
def test_every_write_into_a_new_segmentation_tells_the_views(identity):
    m = Scene(identity=identity)
    try:
        # A brand-new segmentation whose first segment is the target (the case that
        # reached no observer: AddSegment observes before the segment is in its list).
        seg = m.logic.create_segmentation(m.vol, "fresh")
        sid = m.logic.add_segment(seg)
        heard = listen(seg)
        assert segmentio.write_slices(seg, sid, m.vol, {3: slice_mask()}, 0) == [3]
        assert heard == [(name, sid) for name in VIEW_EVENTS]
        # A slice inside the extent (no reallocation) and one that grows it: heard each time.
        inner = slice_mask()
        inner[7, 7] = False
        assert segmentio.write_slices(seg, sid, m.vol, {3: inner}, 0) == [3]
        assert segmentio.write_slices(seg, sid, m.vol, {9: slice_mask()}, 0) == [9]
        assert heard == [(name, sid) for name in VIEW_EVENTS] * 3
        assert segmentio.write_slices(seg, sid, m.vol, {3: inner}, 0) == []     # nothing changed: quiet
        assert len(heard) == 6
        got = segmentio.read_segment(seg, sid, m.vol)
        assert np.array_equal(got[3], inner) and np.array_equal(got[9], slice_mask()) and got.sum() == \
            inner.sum() + slice_mask().sum()
    finally:
        m.close()


def surfaces(seg_node):
    """``{segment id: MTime of its closed surface (None: none)}``."""
    s = seg_node.GetSegmentation()
    out = {}
    for sid in s.GetSegmentIDs():
        rep = s.GetSegment(sid).GetRepresentation(SURFACE)
        out[sid] = rep.GetMTime() if rep is not None else None
    return out


def test_a_write_leaves_the_other_segments_surfaces_and_rebuilds_its_own_on_demand():
    m = Scene()
    try:
        seg, sid, other = m.seg, m.sid, m.other
        segmentio.write_slices(seg, sid, m.vol, {4: slice_mask()}, 0)
        assert seg.CreateClosedSurfaceRepresentation()            # Show 3D
        start = surfaces(seg)
        assert None not in start.values()
        # Streaming: the voxels change, no surface is rebuilt or dropped.
        assert segmentio.write_slices(seg, sid, m.vol, {5: slice_mask(), 6: slice_mask()}, 0, surfaces=False)
        assert surfaces(seg) == start and segmentio.surfaces_stale(seg, sid) == [SURFACE]
        assert segmentio.surfaces_stale(seg, other) == []
        # Growing the extent (a new labelmap image) drops nothing either.
        assert segmentio.write_slices(seg, sid, m.vol, {15: slice_mask()}, 0, surfaces=False) == [15]
        assert surfaces(seg) == start
        # Then the segment's own surface is rebuilt, once, even by a write that changes nothing.
        assert segmentio.write_slices(seg, sid, m.vol, {15: slice_mask()}, 0) == []
        now = surfaces(seg)
        assert now[other] == start[other] and now[sid] > start[sid]
        assert segmentio.surfaces_stale(seg, sid) == []
        poly = seg.GetSegmentation().GetSegment(sid).GetRepresentation(SURFACE)
        z = sorted({round(p[2], 3) for p in (poly.GetPoint(n) for n in range(poly.GetNumberOfPoints()))})
        spacing_k, origin_k = 2.5, -40.0                          # the surface reaches slice 15 now
        assert z[-1] >= origin_k + 15 * spacing_k - 1e-3
        assert segmentio.write_slices(seg, sid, m.vol, {15: slice_mask()}, 0) == [] and surfaces(seg) == now
    finally:
        m.close()


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_streaming_run_rebuilds_only_its_segments_surface_about_once_a_second():
    m = Scene()
    try:
        seg, sid, other = m.seg, m.sid, m.other
        assert seg.CreateClosedSurfaceRepresentation()
        clock = Clock()
        m.logic.surfaces.clock = clock          # rebuilds take no time on this clock
        start = surfaces(seg)
        job = m.start()
        rebuilds, last = [], start[sid]
        n = BOUNDS[1] - BOUNDS[0] + 1
        for done in range(1, n):                 # one slice per 0.25 s tick, as the Ticker writes
            m.advance(job, done)                 # (pumps once)
            now = surfaces(seg)
            assert now[other] == start[other]
            if now[sid] != last:
                rebuilds.append(clock.t)
                last = now[sid]
            clock.t += 0.25
        m.finish()
        assert surfaces(seg)[other] == start[other]
        assert surfaces(seg)[sid] != last and segmentio.surfaces_stale(seg, sid) == []   # and at the end
        assert rebuilds == [0.0, 1.0, 2.0, 3.0]
        assert np.array_equal(m.voxels(), full_result())
        # Undo (one write) rebuilds it at once.
        before_undo = surfaces(seg)[sid]
        m.logic.undo()
        assert surfaces(seg)[sid] != before_undo and segmentio.surfaces_stale(seg, sid) == []
    finally:
        m.close()


def test_the_throttle_waits_longer_after_a_slow_rebuild():
    clock = Clock()
    t = SurfaceThrottle(every_s=1.0, share=0.25, clock=clock)
    assert t.due()                               # the first write of a run
    t.rebuilt(0.0, 0.1)                          # a fast rebuild: once a second
    clock.t = 0.9
    assert not t.due() and t.due(final=True)     # the end always rebuilds
    clock.t = 1.0
    assert t.due()
    t.rebuilt(1.0, 1.5)                          # 0.5 s: the next waits 2 s (a quarter of the time)
    clock.t = 2.9
    assert not t.due()
    clock.t = 3.0
    assert t.due()
    t.reset()
    clock.t = 3.1
    assert t.due()                               # a new run starts with a rebuild
