"""Encode while the user looks: background encoding of the volume shown, from its slice.

From the moment a volume is chosen (in the module, or in the Segment Editor effect, which
sets the module's volume), the worker makes the volume's engine (loading the model if
needed) and the engine encodes slices outward from the slice the user views
(``SliceEngine.prefetch_around``: one low-priority thread that yields to a running job).
A timer on the main thread re-centres it as the user scrolls, and says how many slices
are ready. A prompt then starts on slices already encoded.

Threads: :class:`LookAhead` runs on the main thread and reads MRML there (the voxels are
copied to numpy by ``geometry.volume_array`` before anything reaches the worker); the
worker only builds the engine; the engine's thread only encodes that numpy copy. In
Slicer the main thread holds the GIL while Qt's event loop runs (see ``jobs.py``), so
each poll sleeps :data:`YIELD_S` while slices are being encoded: the encoder itself runs
without the GIL, but its thread needs it between slices.
"""
from __future__ import annotations

import time

from . import dependencies, geometry
from .jobs import Job

# Main-thread seconds each poll leaves to the encoding thread (the poll runs every
# 100 ms: at most a fifth of the main thread's time, while encoding only).
YIELD_S = 0.02


class LookAhead:
    """Main-thread controller of background encoding for one :class:`RadSAMLogic`.

    Call :meth:`follow` whenever the volume, the view or the settings may have changed
    (a timer): it starts, re-centres or moves the encoding, and never blocks."""

    def __init__(self):
        self.key = None          # engine key being encoded (RadSAMLogic._engine_key)
        self._job = None         # the worker job making that engine, until it has run
        self._failed = set()     # keys whose engine could not be made (not retried)
        self.checked_install = False

    def follow(self, logic, volume_node, axis: int, centre: int, spec, window) -> None:
        """Encode ``volume_node`` across ``axis`` outward from slice ``centre`` with the
        model ``spec`` and the intensity ``window`` (a RadSAMLib ``Window``; ``None`` or
        ``"auto"``: the window depends on the prompt, so nothing can be encoded ahead)."""
        from RadSAMLib.preprocess import Window
        if volume_node is None or volume_node.GetImageData() is None or window in (None, "auto"):
            return self.stop(logic)
        if not isinstance(window, Window):
            if not geometry.looks_like_hu(volume_node):
                # Not in HU (an MR): a prompt gets its region's window (RadSAMLogic.window_for),
                # which is not known before the prompt.
                return self.stop(logic)
            window = Window.preset(window)
        logic.set_model(spec)
        # A view beyond the volume's end looks at its last slice.
        centre = min(max(int(centre), 0), geometry.volume_shape(volume_node)[axis] - 1)
        key = logic._engine_key(volume_node, axis, window)
        if key != self.key:
            self.stop(logic)
            self.key = key
        if key in self._failed:
            return
        engine = logic._engines.get(key)
        if engine is not None:
            # Started, restarted after a stop, or re-centred; a finished run stays finished.
            if hasattr(engine, "prefetch_around") and engine.prefetch_status()[2] not in ("done", "memory"):
                engine.prefetch_around(centre)
            return
        if self._job is not None:
            job_key, job = self._job
            if not job.finished:
                return                     # an engine is being made
            self._job = None
            if job.error is not None:      # e.g. a checkpoint missing: the next prompt reports it
                self._failed.add(job_key)
                return
        if any(k[0] == key[0] for k in logic._engines):
            # The volume has an engine made for other settings (its sessions hold undo
            # steps): a new one would replace it, so only a prompt may.
            return
        volume = geometry.volume_array(volume_node)   # main thread: MRML -> numpy copy

        def make(job):
            engine = logic.engine_for(key, volume, spec)
            if hasattr(engine, "prefetch_around"):
                engine.prefetch_around(centre)
        self._job = (key, logic.worker.submit(Job(make, "encode ahead")))

    def _engine(self, logic):
        """The engine encoded ahead, if made and able to (a test's stand-in may not be)."""
        engine = logic._engines.get(self.key) if self.key is not None else None
        return engine if hasattr(engine, "prefetch_status") else None

    def stop(self, logic) -> None:
        """Stop encoding the current volume (it changed, or none is chosen); never waits."""
        engine = self._engine(logic)
        if engine is not None:
            engine.stop_background(wait=False)
        self.key = None

    def encoding(self, logic) -> bool:
        engine = self._engine(logic)
        return engine is not None and engine.prefetch_status()[2] == "encoding"

    def status(self, logic) -> str:
        """``"N of M slices ready"`` for the volume being encoded ahead, else ``""``."""
        engine = self._engine(logic)
        if engine is None:
            return ""
        ready, total, state = engine.prefetch_status()
        if state == "off":
            return ""
        note = " (memory budget reached)" if state == "memory" and ready < total else ""
        return f"{ready} of {total} slices ready{note}"


def poll(widget) -> None:
    """The module widget's timer (every 100 ms): follow its volume, view axis, slice, model and window,
    and show the count while RadSAM is idle. Errors are never raised from here (a bad
    setting is reported when the user prompts)."""
    volume = widget.ui.volumeSelector.currentNode()
    if widget.logic is None:
        # Start RadSAM for a chosen volume only if nothing must be installed first (the
        # install asks the user, and only when they prompt); checked once per widget.
        if volume is None or widget.installer is not None or widget.lookAhead.checked_install:
            return
        widget.lookAhead.checked_install = True
        try:
            if dependencies.to_install():
                return
        except Exception:   # noqa: BLE001 - reported when the user prompts
            return
        widget.createLogic()
    logic = widget.logic
    try:
        if volume is None or volume.GetImageData() is None:
            widget.lookAhead.stop(logic)
            return
        axis = widget.viewAxis(volume)
        widget.lookAhead.follow(logic, volume, axis, widget.currentSliceIndex(volume, axis),
                                widget.modelSpec(), widget.windowChoice(volume))
    except Exception:   # noqa: BLE001 - e.g. a view outside the volume; the next tick retries
        return
    if widget.lookAhead.encoding(logic) and not logic.busy:   # (a job's own ticks yield while it runs)
        time.sleep(YIELD_S)
    text = widget.lookAhead.status(logic)
    shown = widget.ui.statusLabel.text
    # Only over an empty line or an earlier count: a result or an error stays readable.
    if text and not logic.busy and widget.job is None and (not shown or "slices ready" in shown):
        widget.showMessage(text)
