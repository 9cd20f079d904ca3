"""RadSAMLogic: MRML nodes <-> a RadSAMLib ``Session``, with no Qt and no ``slicer.modules``.

The scene is passed in. The main thread owns MRML: it extracts the volume's voxels, turns
markups into prompts, and copies finished slices into the segment (:meth:`pump`). The
persistent worker thread owns RadSAMLib: it loads the model, encodes slices and runs the
interaction, reporting each finished slice through a :class:`~.jobs.Job`.

One ``Session`` per (volume, axis, model, segment); the slice embeddings (the
``SliceEngine``) are shared by every segment of a volume. Before each interaction the
session's mask is synchronised with the segment, so a session started on a segment that
already has voxels (or that was painted by hand since) keeps them, and undo restores the
segment exactly as it was before the interaction.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

# Torch-free parts of RadSAMLib (it ships inside the extension; torch may not be installed yet).
from RadSAMLib.catalog import DEFAULT_MODEL
from RadSAMLib.config import RadSAMConfig
from RadSAMLib.request import check_edit, check_segment

from . import geometry, markups, segmentio
from .errors import user_error
from .jobs import Job, SurfaceThrottle, Ticker, Worker


@dataclass(frozen=True)
class ModelSpec:
    """Which model: a RadSAMLib name (``litemedsam``, ``radsam``, ``sam_vit_b``...), an
    optional checkpoint file and a device (``auto``, ``cpu``, ``cuda``)."""

    name: str = DEFAULT_MODEL
    checkpoint: str | None = None
    device: str = "auto"


def default_model_loader(spec: ModelSpec):
    from RadSAMLib.models import load_model
    return load_model(spec.name, checkpoint=spec.checkpoint, device=spec.device)


def default_engine_factory(model, volume_kji: np.ndarray, axis: int, window=None):
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.preprocess import Window
    return SliceEngine(model, volume_kji, axis=axis, window=window or Window())


@dataclass
class _Target:
    volume_node: object
    segmentation_node: object
    segment_id: str
    axis: int


class RadSAMLogic:
    """Segment with RadSAM in a MRML scene.

    ``model_loader(ModelSpec) -> model`` and ``engine_factory(model, volume, axis, window) ->
    SliceEngine`` can be replaced (tests pass an engine whose slices are already encoded).
    """

    def __init__(self, scene, model_loader=None, engine_factory=None, worker: Worker | None = None,
                 strategy=None):
        self.scene = scene
        self.model_loader = model_loader or default_model_loader
        self.engine_factory = engine_factory or default_engine_factory
        self.worker = worker or Worker()
        self.config = RadSAMConfig(strategy=strategy)   # a strategy spec is parsed here, once
        self.model_spec = ModelSpec()
        self._models: dict = {}
        self._engines: dict = {}       # (volume id, image mtime, axis, model spec) -> SliceEngine
        self._sessions: dict = {}      # engine key + (segmentation id, segment id) -> Session
        self.session = None
        self.target: _Target | None = None
        self.job: Job | None = None
        self._job_target: _Target | None = None
        self._job_written: set = set()
        self._queued: list = []          # correction clicks made while a job ran, in order
        self.ticker = Ticker()
        self.surfaces = SurfaceThrottle()    # when a streaming run rebuilds its 3D surface
        # How finished slices reach the segment: in place (the module), or through the
        # Segment Editor (the effect sets an editor.EditorWriter and ``on_step``, which
        # saves an editor undo state before each interaction).
        self.writer = segmentio.write_slices
        self.on_step = None
        # With the Segment Editor the writer writes into the editor's selected segment:
        # ``selected_segment() -> (segmentation node, segment id)`` lets a run stop when
        # the user selects another one (its slices would land there).
        self.selected_segment = None
        self._job_image = None          # (image data, its MTime) when the running job started
        self._stop_reason = None        # set by clear_cache() while a job runs (scene closed)
        self._clear_when_done = False
        # A one-line message about the last interaction that is not an error (shown as
        # the module's status), e.g. that a CT window preset was replaced.
        self.notice = None
        # The intensity window the model sees: a RadSAMLib preset name ("soft-tissue",
        # "lung", "bone"), a RadSAMLib Window (e.g. the view's window/level), or "auto"
        # (spanning the prompt's region). A segment keeps the window it was segmented
        # with for its corrections.
        self.window = "soft-tissue"
        self._windows: dict = {}       # (volume id, axis, segmentation id, segment id) -> Window

    # -- nodes -----------------------------------------------------------------------------
    def create_segmentation(self, volume_node, name: str | None = None):
        """A new segmentation on ``volume_node``'s grid, under the same parent transform."""
        geometry.check_volume(volume_node)
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                           name or f"{volume_node.GetName()} RadSAM")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        parent = volume_node.GetParentTransformNode()
        seg.SetAndObserveTransformNodeID(parent.GetID() if parent else None)
        return seg

    @staticmethod
    def add_segment(segmentation_node, name: str = "RadSAM") -> str:
        return segmentation_node.GetSegmentation().AddEmptySegment("", name)

    # -- targets and sessions ------------------------------------------------------------
    def set_model(self, spec: ModelSpec) -> None:
        self.model_spec = spec

    def _engine_key(self, volume_node, axis, window):
        return (volume_node.GetID(), volume_node.GetImageData().GetMTime(), axis, self.model_spec, window)

    @staticmethod
    def _target_key(target: _Target) -> tuple:
        return (target.volume_node.GetID(), target.axis, target.segmentation_node.GetID(), target.segment_id)

    def window_for(self, target: _Target, slice_idx: int, box=None, points=(), mask=None):
        """The ``Window`` :attr:`window` means for a prompt on ``slice_idx``.

        The presets are CT windows in Hounsfield units. On a volume that is not in HU (an
        MR, a PET, a CT stored without its rescale) a preset would show the model a blank
        slice, so the window of the prompt region is used instead and :attr:`notice` says so."""
        from RadSAMLib.preprocess import Window, prompt_region
        if isinstance(self.window, Window):
            return self.window
        if self.window != "auto":
            try:
                preset = Window.preset(self.window)
            except ValueError as e:
                raise user_error(str(e)) from None
            if geometry.looks_like_hu(target.volume_node):
                return preset
            self.notice = (f"volume '{target.volume_node.GetName()}' is not a CT in Hounsfield units (no air "
                           f"below {geometry.AIR_HU:.0f} HU): the CT window '{self.window}' does not fit it, "
                           "so the window of the prompt region is used")
            logging.warning("RadSAM: %s", self.notice)
        hu = geometry.volume_slice(target.volume_node, target.axis, slice_idx)
        return Window.from_region(prompt_region(hu, box, points, mask))

    def target_for(self, volume_node, segmentation_node, segment_id, axis: int = 0) -> _Target:
        geometry.check_volume(volume_node)
        segmentio.check_segment(segmentation_node, segment_id)
        geometry.parent_to_world(segmentation_node)   # non-linear transforms are refused here
        if axis not in (0, 1, 2):
            raise user_error(f"propagation axis must be 0, 1 or 2, got {axis}")
        return _Target(volume_node, segmentation_node, segment_id, axis)

    def _session_job(self, target: _Target, interact, name: str, window) -> Job:
        """Submit ``interact(session) -> Interaction`` for ``target`` to the worker, which
        iterates it, handing each finished slice to the job; slices are encoded under
        ``window``. Voxels are read here, on the main thread; the model, engine and session
        are made on the worker."""
        if self.busy:
            raise user_error("RadSAM is still working: wait for it or press Cancel")
        ekey = self._engine_key(target.volume_node, target.axis, window)
        skey = ekey + (target.segmentation_node.GetID(), target.segment_id)
        volume = None if ekey in self._engines else geometry.volume_array(target.volume_node)
        current = segmentio.read_segment(target.segmentation_node, target.segment_id, target.volume_node)
        spec, config = self.model_spec, self.config

        def run(job: Job):
            from RadSAMLib.session import Session
            session = self._sessions.get(skey)
            if session is None:
                session = Session(self.engine_for(ekey, volume, spec), config)
                self._sessions[skey] = session
            if session.mask.shape != current.shape:
                raise user_error("the volume changed shape; select it again")
            if not np.array_equal(session.mask, current):
                np.copyto(session.mask, current)   # the segment is the truth: keep hand edits
            job.session = session
            interaction = interact(session)
            job.on_cancel(interaction.cancel)
            for u in interaction:
                job.slice_done(u.index, session.slice_mask(u.index).copy())
                job.set_progress(u.done, u.total)
            return interaction.change

        if self.on_step is not None:
            self.on_step(name)
        self._windows[self._target_key(target)] = window
        job = Job(run, name)
        self.job, self._job_target, self._job_written = job, target, set()
        image = target.volume_node.GetImageData()
        self._job_image, self._stop_reason = (image, image.GetMTime()), None
        self.surfaces.reset()
        self.target = target
        return self.worker.submit(job)

    def engine_for(self, ekey, volume, spec):
        """Worker thread: the engine of ``ekey`` (see :meth:`_engine_key`), made from
        ``volume`` (read on the main thread) with the model of ``spec`` if needed."""
        engine = self._engines.get(ekey)
        if engine is None:
            model = self._models.get(spec) or self.model_loader(spec)
            self._models = {spec: model}  # keep one model in memory
            engine = self.engine_factory(model, volume, ekey[2], ekey[4])
            # One engine per volume (its embeddings are the memory that matters);
            # sessions on a dropped engine go with it.
            engines = {k: v for k, v in self._engines.items() if k[0] != ekey[0]}
            engines[ekey] = engine
            self._engines = engines
            self._sessions = {k: v for k, v in self._sessions.items() if k[:len(ekey)] in engines}
        return engine

    # -- interactions (asynchronous: returns a Job; call pump() until job.finished) ------
    def start_segment(self, target: _Target, slice_idx: int, prompt, bounds=None) -> Job:
        """Prompt on ``slice_idx`` (a RadSAMLib ``SlicePrompt``), propagated to ``bounds``
        (inclusive ``(bottom, top)`` slice indices along ``target.axis``)."""
        if bounds is not None and (bounds[0] is None or bounds[1] is None):
            raise user_error("set both the bottom and the top slice (or neither)", "BoundsError")
        if bounds is not None:
            # Bottom and Top are the organ's ends in patient terms: which index is lower
            # depends on which way the volume's slice axis runs.
            bounds = (min(bounds), max(bounds))
        # Checked here, before anything starts (no editor undo state, no model load):
        # the worker would find the same problem only after loading the model.
        slice_idx, bounds = check_segment(geometry.volume_shape(target.volume_node), target.axis, slice_idx,
                                          prompt, bounds)
        self.notice = None
        window = self.window_for(target, slice_idx, prompt.box, prompt.points, prompt.mask)
        return self._session_job(target, lambda s: s.segment_iter(slice_idx, prompt, bounds=bounds), "segment", window)

    def start_segment_from_markups(self, target: _Target, bounds=None, box_node=None, positive=None,
                                   negative=None, mask_slice: int | None = None) -> Job:
        """Like :meth:`start_segment`, the prompt read from markups (and, with
        ``mask_slice``, the segment's current mask on that slice)."""
        mask = None
        if mask_slice is not None:
            current = segmentio.read_segment(target.segmentation_node, target.segment_id, target.volume_node)
            mask = current[segmentio.slice_key(target.axis, int(mask_slice))] > 0
            if not mask.any():
                raise user_error(f"the segment is empty on slice {mask_slice}: nothing to use as a mask prompt",
                                 "PromptError")
        idx, prompt = markups.initial_prompt(target.volume_node, target.axis, box_node, positive, negative,
                                             mask, mask_slice)
        return self.start_segment(target, idx, prompt, bounds)

    def start_edit(self, target: _Target, slice_idx: int, point_xy, positive: bool = True) -> Job | None:
        """A correction point ``(x, y)`` on ``slice_idx``: re-run that slice, re-propagate.

        While a job runs the click is queued (``None`` is returned) and starts, in order,
        once the running job's results are in the segment (:meth:`pump`), so it starts
        from them. :meth:`cancel` drops queued clicks too."""
        check_edit(geometry.volume_shape(target.volume_node), target.axis, slice_idx, point_xy)
        if self.busy:
            self._queued.append((target, slice_idx, point_xy, positive))
            return None
        window = self._windows.get(self._target_key(target)) or self.window_for(target, slice_idx, points=[point_xy])
        return self._session_job(target, lambda s: s.edit_iter(slice_idx, point_xy, positive), "edit", window)

    @property
    def queued(self) -> int:
        """Correction clicks waiting for the running job."""
        return len(self._queued)

    def start_edit_at(self, target: _Target, ras, positive: bool = True) -> Job | None:
        """A correction click at world RAS ``ras`` (queued while a job runs)."""
        shape = geometry.volume_shape(target.volume_node)
        s, x, y = geometry.split_kji(geometry.world_to_kji(target.volume_node, ras), target.axis)
        rows, cols = [shape[a] for a in range(3) if a != target.axis]
        idx = int(np.floor(float(s) + 0.5))
        if not (0 <= idx < shape[target.axis] and -0.5 <= x <= cols - 0.5 and -0.5 <= y <= rows - 0.5):
            raise user_error("the correction point is outside the volume", "PromptError")
        xy = (float(np.clip(x, 0, cols - 1)), float(np.clip(y, 0, rows - 1)))
        return self.start_edit(target, idx, xy, positive)

    @property
    def busy(self) -> bool:
        return bool(self._queued) or (self.job is not None and not (self.job.finished and self._job_target is None))

    def cancel(self) -> None:
        self._queued = []
        if self.job is not None:
            self.job.cancel()

    def tick(self) -> list:
        """One main-loop tick of a running job (Slicer's timer): let the worker run for a
        moment with the GIL free, then, coalesced, :meth:`pump`. Returns the slices written."""
        if self.job is None or self._job_target is None:
            return self.pump()
        return self.pump() if self.ticker.tick(self.job) else []

    def pump(self) -> list:
        """Main thread: copy the slices the worker finished into the segment. When the job
        is over, make the segment match the session on every slice the job changed, and
        end the job. Returns the slices written; re-raises nothing (see ``job.error``).

        A run whose target went away (its volume, segmentation or segment removed, the
        scene closed, the volume's voxels replaced, the editor's segment switched) stops
        with a user error; the slices written so far stay, each one complete, and undo
        takes them back. While slices stream in, the segment's 3D surface is rebuilt when
        :attr:`surfaces` (a :class:`~.jobs.SurfaceThrottle`) says, and at the end."""
        job, target = self.job, self._job_target
        if job is None or target is None:
            if self._clear_when_done and not self.busy:
                self.clear_cache()            # the scene closed during a run that has now ended
            return []
        finished = job.finished              # read before taking slices: none can come after
        fault = self._fault(target)
        if fault is not None:
            self._stop(job)
            raise user_error(fault + ": RadSAM stopped (the slices it wrote stay, each one complete)")
        masks = job.take_slices()
        if finished and job.error is None and job.result is not None:
            session = job.session
            for idx in job.result.slices:     # the final state of every changed slice
                masks[idx] = session.slice_mask(idx)
        surfaces = self.surfaces.due(final=finished)
        started = self.surfaces.clock()
        try:
            written = self._write(target, masks, surfaces)
        except Exception:
            # The segment cannot take results: stop the run and stop writing; the next
            # interaction starts again from the segment's content.
            self._stop(job)
            raise
        if written and surfaces:
            self.surfaces.rebuilt(started, self.surfaces.clock())
        self._job_written.update(masks)
        if finished:
            self._job_target = None
            if job.error is not None or job.cancel_requested.is_set():
                self._queued = []          # a failed or cancelled run takes its queued clicks along
            if self._clear_when_done:
                self._queued = []
                self.clear_cache()
            if self._queued:
                target, slice_idx, xy, positive = self._queued.pop(0)
                try:
                    self.start_edit(target, slice_idx, xy, positive)
                except Exception:
                    self._queued = []
                    raise
        return written

    def _write(self, target: _Target, masks: dict, surfaces: bool = True) -> list:
        if self.writer is segmentio.write_slices:
            return segmentio.write_slices(target.segmentation_node, target.segment_id, target.volume_node,
                                          masks, target.axis, surfaces=surfaces)
        # The Segment Editor's modify call rebuilds the segment's surface itself.
        return self.writer(target.segmentation_node, target.segment_id, target.volume_node, masks, target.axis)

    def _fault(self, target: _Target):
        """Why the running job's results can no longer be written (``None``: they can)."""
        if self._stop_reason is not None:
            return self._stop_reason
        vol, seg = target.volume_node, target.segmentation_node
        if vol.GetScene() is None:
            return f"volume '{vol.GetName()}' was removed from the scene while RadSAM was working"
        if seg.GetScene() is None:
            return f"segmentation '{seg.GetName()}' was removed from the scene while RadSAM was working"
        if seg.GetSegmentation().GetSegment(target.segment_id) is None:
            return f"the segment RadSAM was writing was removed from '{seg.GetName()}'"
        image = vol.GetImageData()
        if self._job_image is not None and (image is not self._job_image[0] or image is None
                                            or image.GetMTime() != self._job_image[1]):
            return (f"the voxels of volume '{vol.GetName()}' changed while RadSAM was working (another frame of "
                    "a sequence, or an edit); segment again on what the volume shows now")
        if self.selected_segment is not None:
            selected = self.selected_segment()
            if selected is None or selected[0] is None or selected[0].GetID() != seg.GetID() \
                    or selected[1] != target.segment_id:
                name = seg.GetSegmentation().GetSegment(target.segment_id).GetName()
                return f"another segment was selected in the Segment Editor while RadSAM was writing '{name}'"
        return None

    def _stop(self, job: Job) -> None:
        """End the running job without writing more of it (a fault, not a finished run)."""
        job.cancel()
        self._job_target = None
        self._queued = []

    def wait(self, job: Job | None = None, timeout: float = 600.0, interval: float = 0.02):
        """Pump until the job ends (the synchronous path: scripts and tests). Returns the
        job's ``Change``; re-raises the job's error."""
        job = job or self.job
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if job.finished and self._job_target is None:
                if self.job is not job and self.job is not None:   # a queued click started
                    job = self.job
                    continue
                break
            if time.monotonic() > deadline:
                job.cancel()
                raise TimeoutError(f"RadSAM {job.name} did not finish in {timeout:.0f} s")
            time.sleep(interval)
        if job.error is not None:
            raise job.error
        return job.result

    # -- synchronous conveniences ----------------------------------------------------------
    def segment(self, target: _Target, slice_idx: int, prompt, bounds=None):
        return self.wait(self.start_segment(target, slice_idx, prompt, bounds))

    def edit(self, target: _Target, slice_idx: int, point_xy, positive: bool = True):
        return self.wait(self.start_edit(target, slice_idx, point_xy, positive))

    # -- undo / redo (fast: no model call; main thread) ---------------------------------
    def _history(self, which: str):
        if self.busy:
            raise user_error("RadSAM is still working: wait for it or press Cancel")
        t = self.target
        if t is None or self.session_for(t) is None:
            return None
        session = self.session_for(t)
        change = getattr(session, which)()
        self._write(t, {i: session.slice_mask(i) for i in change.slices})
        return change

    def undo(self):
        """Undo the last interaction on the current target; the segment gets back exactly
        the voxels it had before it. Returns the ``Change`` (``None`` without a session)."""
        return self._history("undo")

    def redo(self):
        return self._history("redo")

    def session_for(self, target: _Target):
        window = self._windows.get(self._target_key(target))
        if window is None:
            return None
        ekey = self._engine_key(target.volume_node, target.axis, window)
        return self._sessions.get(ekey + (target.segmentation_node.GetID(), target.segment_id))

    def can_undo(self) -> bool:
        s = self.session_for(self.target) if self.target else None
        return bool(s and s.can_undo)

    def can_redo(self) -> bool:
        s = self.session_for(self.target) if self.target else None
        return bool(s and s.can_redo)

    def forget_volume(self, volume_id: str) -> None:
        """Release the encoded slices and sessions of a volume (e.g. removed from the
        scene): they hold the volume's copy and its embeddings, the memory that matters."""
        if self.busy and self._job_target is not None and self._job_target.volume_node.GetID() == volume_id:
            self.cancel()
        self._engines = {k: v for k, v in self._engines.items() if k[0] != volume_id}
        self._sessions = {k: v for k, v in self._sessions.items() if k[0] != volume_id}
        if self.target is not None and self.target.volume_node.GetID() == volume_id:
            self.target = None

    def clear_cache(self) -> None:
        """Forget sessions, encoded slices and the model (e.g. when the scene closes). A
        running job is stopped (:meth:`pump` says why) and the cache goes when it ends."""
        if self.busy:
            self.cancel()
            self._stop_reason = "the scene was closed while RadSAM was working"
            self._clear_when_done = True
            return
        self._sessions, self._engines, self._models = {}, {}, {}
        self.target = None
        self._clear_when_done = False

    def shutdown(self) -> None:
        self.cancel()
        self.worker.shutdown(timeout=5)
