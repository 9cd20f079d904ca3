"""Main-thread cost of one Slicer timer tick that copies finished slices into a segment.

    python3 scripts/bench_slicer_ticks.py [--slices 300 --rows 512 --cols 512] [--skip-plain]
    python3 scripts/bench_slicer_ticks.py --prefetch [--model radsam] [--volume CT] [--threads N]

Real MRML (the slicer-core wheel), a synthetic CT-sized volume, a segmentation holding
another segment (a large blob in the shared layer), and an organ-like ellipse streamed
into a new segment slice by slice outwards from the middle, as propagation produces it.

1. Milliseconds per tick for ticks of 1 and of 16 slices, with RadSAM's in-place slice
   writes and with the former whole-segment read + replace (for comparison).
2. With Show 3D on (a closed surface representation created; after each tick the 3D
   view asks for the surfaces it lacks, ``CreateClosedSurfaceRepresentation``): closed
   surfaces rebuilt per second of streaming and milliseconds per tick, ticks 250 ms
   apart (``jobs.Ticker``), for RadSAM's writes (the segment's own surface when
   ``jobs.SurfaceThrottle`` says: at most once a second and at most a quarter of the
   time, and at the end) and for the former in-place write whose labelmap
   ``Modified()`` dropped every segment's surface.
3. ``--prefetch`` (issue 21), instead of 1 and 2: RadSAM's ticks (1 and 16 slices; 4 with
   Show 3D) with no background encoding and while a real ``SliceEngine``'s look-ahead
   thread (``prefetch_around``, the model's CPU encoder) encodes the volume outward from
   its middle slice in this process: the GIL and the cores are shared, as in Slicer.
   Ticks are ``--tick-every-ms`` apart (the ``Ticker``'s 250 ms) in both, so the thread
   runs between them as it would; the engine never yields to the ticks (they are not
   predictions), as when a volume is open and a run on another engine streams in.

Every millisecond here is a millisecond the UI does not respond; the result is kept in
docs/benchmark/slicer_ticks.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RadSAM"))
sys.path.insert(0, str(ROOT))

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from RadSAMSlicerLib import geometry, segmentio  # noqa: E402
from RadSAMSlicerLib.jobs import SurfaceThrottle, Ticker  # noqa: E402
from RadSAMSlicerLib.logic import RadSAMLogic  # noqa: E402

SURFACE = "Closed surface"


def make_scene(shape, voxels=None):
    """``voxels``: the CT's ``(k, j, i)`` HU (default: 40 HU everywhere)."""
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    img = vtk.vtkImageData()
    img.SetDimensions(shape[2], shape[1], shape[0])
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())[:] = 40 if voxels is None else voxels.ravel()
    vol.SetAndObserveImageData(img)
    vol.SetSpacing(0.8, 0.8, 1.5)
    holder = RadSAMLogic.__new__(RadSAMLogic)
    holder.scene = scene
    seg = holder.create_segmentation(vol)
    other = RadSAMLogic.add_segment(seg, "other")
    blob = np.zeros(shape, np.uint8)
    blob[40:260, 100:400, 80:300] = 1
    segmentio.write_segment(seg, other, vol, blob)
    target = RadSAMLogic.add_segment(seg, "organ")
    return scene, logic, vol, seg, target


def ellipse(shape2d, k, centre_k):
    rows, cols = shape2d
    y, x = np.ogrid[:rows, :cols]
    scale = max(0.2, 1.0 - abs(k - centre_k) / 80.0)
    return ((x - cols * 0.45) / (90 * scale)) ** 2 + ((y - rows * 0.5) / (70 * scale)) ** 2 <= 1.0


def stream_order(n, centre, half):
    out = [centre]
    for d in range(1, half + 1):
        out += [centre + d, centre - d]
    return [k for k in out if 0 <= k < n]


def old_write(seg, sid, vol, masks):
    """The former path: read the whole segment, change the slices, replace it all."""
    current = segmentio.read_segment(seg, sid, vol)
    for k, m in masks.items():
        current[k] = m
    box = np.argwhere(current)
    lo, hi = box.min(0), box.max(0)
    img = segmentio._oriented_image(current[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1],
                                    geometry.ijk_to_node_frame(vol, seg), lo)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(img, seg, sid, logic.MODE_REPLACE)


def run(shape, per_tick, writer, ticks_max=40):
    _scene, _logic, vol, seg, sid = make_scene(shape)
    centre = shape[0] // 2
    order = stream_order(shape[0], centre, 60)
    times = []
    for start in range(0, min(len(order), per_tick * ticks_max), per_tick):
        batch = {k: ellipse(shape[1:], k, centre) for k in order[start:start + per_tick]}
        t = time.perf_counter()
        writer(seg, sid, vol, batch)
        times.append((time.perf_counter() - t) * 1000)
    return times


def surface_times(seg):
    s = seg.GetSegmentation()
    out = {}
    for sid in s.GetSegmentIDs():
        rep = s.GetSegment(sid).GetRepresentation(SURFACE)
        out[sid] = rep.GetMTime() if rep is not None else None
    return out


def modified_write(seg, sid, vol, batch, surfaces):
    """The former in-place write: the voxels, then the labelmap's ``Modified()``, which
    the segmentation answers by dropping every segment's derived representations."""
    written = segmentio.write_slices(seg, sid, vol, batch, 0, surfaces=False)
    if written:
        seg.GetSegmentation().GetSegment(sid).GetRepresentation(segmentio.BINARY_LABELMAP).Modified()
    return written


def run_show3d(shape, per_tick, writer, ticks_max):
    """Stream the organ with Show 3D on. Returns (wall ms per tick, CPU ms per tick,
    surfaces rebuilt per tick, seconds of streaming). The 3D view is emulated: after each
    tick it creates the surfaces it lacks."""
    _scene, _logic, vol, seg, sid = make_scene(shape)
    seg.CreateClosedSurfaceRepresentation()
    centre = shape[0] // 2
    order = stream_order(shape[0], centre, 60)[:per_tick * ticks_max]
    # Streaming time: ticks 250 ms apart plus the CPU time the ticks themselves took (CPU,
    # not wall time: on a loaded machine the wall time says more about the load).
    now = [0.0]
    throttle = SurfaceThrottle(clock=lambda: now[0])
    times, cpu, rebuilt = [], [], []
    batches = [order[n:n + per_tick] for n in range(0, len(order), per_tick)]
    for n, slices in enumerate(batches):
        surfaces = throttle.due(final=n == len(batches) - 1)
        batch = {k: ellipse(shape[1:], k, centre) for k in slices}
        before = surface_times(seg)
        t, c = time.perf_counter(), time.process_time()
        written = writer(seg, sid, vol, batch, surfaces)
        seg.CreateClosedSurfaceRepresentation()          # what the 3D view asks for
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        if written and surfaces:
            throttle.rebuilt(now[0], now[0] + cpu[-1] / 1000)
        now[0] += Ticker().write_every_s + cpu[-1] / 1000
        after = surface_times(seg)
        rebuilt.append(sum(after[k] != before[k] for k in after))
    return times, cpu, rebuilt, now[0]


# -- ticks while the look-ahead encodes (--prefetch) -----------------------------------------
def load_ct(path):
    """A CT file as ``(k, j, i)`` int16 HU."""
    from RadSAMLib.imageio import image_to_array, read_image
    ct = np.asarray(image_to_array(read_image(path)))
    return np.clip(np.round(ct), -32768, 32767).astype(np.int16)


class BackgroundEncoding:
    """A real engine's background encoding (``SliceEngine.prefetch_around``) over the
    volume's voxels, started and stopped around one row of ticks; a fresh engine (empty
    cache) each time, so it is encoding all through the row."""

    def __init__(self, model, voxels, threads=None):
        from RadSAMLib.accel import accelerate
        self.model = accelerate(model, "auto", "auto", threads=threads)
        self.voxels = voxels
        self.engine = None

    def describe(self) -> str:
        b = getattr(self.model, "backends", {})
        return f"{self.model.info.name} ({b.get('encoder', '?')} encoder)"

    def start(self, centre):
        from RadSAMLib.engine import SliceEngine
        self.engine = SliceEngine(self.model, self.voxels, axis=0)
        self.engine.prefetch_around(centre)
        deadline = time.monotonic() + 600
        while self.engine.prefetch_status()[0] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)                 # running (one slice done: the encoder is warm)
        self._at_start = self.engine.prefetch_status()[0]

    def stop(self):
        """Stop it; returns ``(slices encoded while the ticks ran, state)``."""
        n, _, state = self.engine.prefetch_status()
        self.engine.close()
        self.engine = None
        return n - self._at_start, state


def run_spaced(shape, per_tick, writer, ticks_max, every_s, background=None, voxels=None, show3d=False):
    """Stream the organ ``per_tick`` slices a tick, ticks ``every_s`` apart (the main
    thread sleeps between them, releasing the GIL, as Slicer's event loop waits for the
    next timer). ``background``: a :class:`BackgroundEncoding` running all through. Returns (wall
    ms per tick, this thread's CPU ms per tick, slices the background encoded, its state)."""
    _scene, _logic, vol, seg, sid = make_scene(shape, voxels)
    if show3d:
        seg.CreateClosedSurfaceRepresentation()
    centre = shape[0] // 2
    order = stream_order(shape[0], centre, 60)[:per_tick * ticks_max]
    batches = [order[n:n + per_tick] for n in range(0, len(order), per_tick)]
    throttle = SurfaceThrottle()
    if background is not None:
        background.start(centre)
    times, cpu = [], []
    try:
        for n, slices in enumerate(batches):
            time.sleep(every_s)
            batch = {k: ellipse(shape[1:], k, centre) for k in slices}
            surfaces = throttle.due(final=n == len(batches) - 1) if show3d else True
            t, c = time.perf_counter(), time.thread_time()
            written = writer(seg, sid, vol, batch, surfaces)
            if show3d:
                seg.CreateClosedSurfaceRepresentation()      # what the 3D view asks for
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.thread_time() - c) * 1000)
            if show3d and written and surfaces:
                throttle.rebuilt(time.monotonic() - times[-1] / 1000, time.monotonic())
    finally:
        encoded, state = background.stop() if background is not None else (0, "-")
    return times, cpu, encoded, state


def prefetch_table(shape, args, model=None, voxels=None):
    """The ``--prefetch`` table: RadSAM's ticks without and with the look-ahead."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if model is None:
        from RadSAMLib.models import load_model
        model = load_model(args.model, device="cpu")
    data = voxels if voxels is not None else np.full(shape, 40, np.int16)
    look = BackgroundEncoding(model, data, args.threads)
    every = args.tick_every_ms / 1000
    print(f"Ticks while the volume is encoded in the background (issue 21): {look.describe()}, "
          f"{args.threads or 'all'} thread(s), from slice {shape[0] // 2} outwards in this process; "
          f"ticks {args.tick_every_ms:g} ms apart")
    print("(ms: wall clock per tick, what the UI waits; cpu: the main thread's own CPU ms per tick;\n"
          " first: the first write, which moves the segment to its own layer; median and max: the others;\n"
          " encoded: slices the look-ahead encoded during the row, and its state at the end)")
    print(f"{'writer':<34}{'slices/tick':>12}  {'background':<11}{'ticks':>6}{'first ms':>10}{'median ms':>11}"
          f"{'max ms':>9}{'median cpu':>11}{'max cpu':>9}  encoded")
    in_place = lambda seg, sid, vol, b, surfaces: segmentio.write_slices(seg, sid, vol, b, 0,  # noqa: E731
                                                                          surfaces=surfaces)
    rows = []
    for name, per_tick, ticks, show3d in (("in place (RadSAM)", 1, args.ticks or 40, False),
                                          ("in place (RadSAM)", 16, args.ticks or 8, False),
                                          ("Show 3D, throttled (RadSAM)", 4, args.ticks or 24, True)):
        for bg in (None, look):
            times, cpu, encoded, state = run_spaced(shape, per_tick, in_place, ticks, every, bg, voxels, show3d)
            rest, rest_cpu = times[1:] or times, cpu[1:] or cpu
            label = "none" if bg is None else "look-ahead"
            row = dict(writer=name, per_tick=per_tick, background=label, ticks=len(times), first_ms=times[0],
                       median_ms=statistics.median(rest), max_ms=max(rest), median_cpu=statistics.median(rest_cpu),
                       max_cpu=max(rest_cpu), encoded=encoded, state=state)
            rows.append(row)
            print(f"{name:<34}{per_tick:>12}  {label:<11}{len(times):>6}{times[0]:>10.1f}{row['median_ms']:>11.1f}"
                  f"{row['max_ms']:>9.1f}{row['median_cpu']:>11.1f}{row['max_cpu']:>9.1f}  "
                  + ("-" if bg is None else f"{encoded} ({state})"), flush=True)
    return rows


def main(argv=None, model=None):
    """``model``: the encoder for ``--prefetch`` (tests give a small one; default: load ``--model``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=512)
    ap.add_argument("--skip-plain", action="store_true", help="only the Show 3D table")
    ap.add_argument("--prefetch", action="store_true",
                    help="instead: RadSAM's ticks with no background encoding and while a real engine's look-ahead "
                         "thread encodes the volume in this process")
    ap.add_argument("--model", default="radsam", help="--prefetch: the model whose encoder runs (radsam, litemedsam)")
    ap.add_argument("--volume", help="--prefetch: a real CT (its size replaces --slices/--rows/--cols)")
    ap.add_argument("--threads", type=int, help="--prefetch: encoder (and torch) threads (default: all usable cores)")
    ap.add_argument("--ticks", type=int, help="--prefetch: ticks per row (default 40, 8 and 24 as above)")
    ap.add_argument("--tick-every-ms", type=float, default=None,
                    help="--prefetch: milliseconds between ticks (default: the Ticker's, 250)")
    args = ap.parse_args(argv)
    shape = (args.slices, args.rows, args.cols)
    if args.prefetch:
        voxels = load_ct(args.volume) if args.volume else None
        if voxels is not None:
            shape = voxels.shape
        if args.tick_every_ms is None:
            args.tick_every_ms = Ticker().write_every_s * 1000
        print(f"volume {shape[2]} x {shape[1]} x {shape[0]} (i x j x k){' ' + args.volume if args.volume else ''}, "
              f"organ streamed from slice {shape[0] // 2} outwards, another segment in the shared layer")
        prefetch_table(shape, args, model, voxels)
        return
    print(f"volume {shape[2]} x {shape[1]} x {shape[0]} (i x j x k), organ streamed from slice {shape[0] // 2} "
          f"outwards, another segment in the shared layer")
    in_place = lambda seg, sid, vol, b: segmentio.write_slices(seg, sid, vol, b, 0)  # noqa: E731
    if not args.skip_plain:
        print(f"{'writer':<34}{'slices/tick':>12}{'ticks':>7}{'first ms':>10}{'median ms':>11}{'max ms':>9}")
        print("(first: the first write, which moves the segment to its own layer; median and max: the others)")
        for name, writer, ticks in (("in place (RadSAM)", in_place, 40),
                                    ("whole read + replace (before)", old_write, 6)):
            for per_tick in (1, 16):
                times = run(shape, per_tick, writer, ticks)
                rest = times[1:]
                print(f"{name:<34}{per_tick:>12}{len(times):>7}{times[0]:>10.1f}{statistics.median(rest):>11.1f}"
                      f"{max(rest):>9.1f}")
    print()
    print(f"Show 3D on: ticks {Ticker().write_every_s * 1000:.0f} ms apart (plus their own time), "
          "4 slices per tick")
    print("(cpu: this process's CPU ms per tick; ms: wall clock, which on a loaded machine mostly says how\n"
          " loaded it is. surfaces/s and busy: per second of streaming, ticks 250 ms apart plus their CPU time)")
    print(f"{'writer':<44}{'ticks':>6}{'surfaces/s':>11}{'busy':>6}{'median cpu':>11}{'max cpu':>9}"
          f"{'median ms':>11}{'max ms':>9}")
    throttled = lambda seg, sid, vol, b, surfaces: segmentio.write_slices(seg, sid, vol, b, 0,  # noqa: E731
                                                                          surfaces=surfaces)
    for name, writer, ticks in (("per segment, throttled (RadSAM)", throttled, 24),
                                ("labelmap Modified(), all surfaces (before)", modified_write, 5)):
        times, cpu, rebuilt, seconds = run_show3d(shape, 4, writer, ticks)
        print(f"{name:<44}{len(times):>6}{sum(rebuilt) / seconds:>11.1f}{sum(cpu) / 1000 / seconds:>6.0%}"
              f"{statistics.median(cpu[1:]):>11.1f}{max(cpu[1:]):>9.1f}{statistics.median(times[1:]):>11.1f}"
              f"{max(times[1:]):>9.1f}")
        print(f"{'':<4}surfaces rebuilt per tick: {rebuilt}")


if __name__ == "__main__":
    main()
