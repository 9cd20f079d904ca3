"""Long work off the main thread: one persistent worker thread and the jobs it runs.

The worker thread runs RadSAMLib (model loading, encoding, propagation) and never touches
Qt or MRML. A :class:`Job` is the only thing the two threads share: the worker reports
finished slices (copies of their masks) and progress into it; the main thread polls it
(from a timer in Slicer, from a loop in tests), copies finished slices into MRML, and may
cancel it. Cancelling stops before the next slice; every slice reported is complete.

In Slicer the main thread holds the GIL while Qt's event loop runs (PythonQt does not
release it), so a Python worker advances only while the main thread releases it. The
main thread's poll therefore waits on the job (which releases the GIL) for most of each
tick -- the yield Slicer's own SimpleFilters makes with a short sleep in its timer -- and
copies results into MRML at most a few times a second (:class:`Ticker`).
"""
from __future__ import annotations

import queue
import threading
import time
import traceback


class Job:
    """One interaction run on the worker. ``fn(job)`` does the work and returns its result
    (a RadSAMLib ``Change``); it reports slices with :meth:`slice_done` and progress with
    :meth:`set_progress`, and registers what to call on cancel with :meth:`on_cancel`."""

    def __init__(self, fn, name: str = "job"):
        self.fn = fn
        self.name = name
        self.result = None
        self.error: BaseException | None = None
        self.error_traceback = ""
        self.done = threading.Event()
        self.cancel_requested = threading.Event()
        self._lock = threading.Lock()
        self._slices: dict = {}          # slice index -> bool (rows, cols) mask, not yet taken
        self._progress = (0, 0)
        self._cancel_fn = None

    # -- worker side ---------------------------------------------------------------------
    def slice_done(self, idx: int, mask) -> None:
        with self._lock:
            self._slices[int(idx)] = mask

    def set_progress(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (int(done), int(total))

    def on_cancel(self, fn) -> None:
        self._cancel_fn = fn
        if self.cancel_requested.is_set():
            fn()

    def run(self) -> None:
        try:
            if self.cancel_requested.is_set():
                return
            self.result = self.fn(self)
        except BaseException as e:  # reported to the main thread, never raised on the worker
            self.error = e
            self.error_traceback = traceback.format_exc()
        finally:
            self.done.set()

    # -- main-thread side ----------------------------------------------------------------
    def cancel(self) -> None:
        self.cancel_requested.set()
        if self._cancel_fn is not None:
            self._cancel_fn()

    def take_slices(self) -> dict:
        """Finished slices since the last call: ``{index: mask}``."""
        with self._lock:
            out, self._slices = self._slices, {}
        return out

    @property
    def progress(self) -> tuple:
        with self._lock:
            return self._progress

    @property
    def finished(self) -> bool:
        return self.done.is_set()


class Worker:
    """A persistent daemon thread that runs submitted jobs one at a time, in order.

    One thread for the module's lifetime, so torch's per-thread state (and any CUDA
    context) is set up once."""

    def __init__(self, name: str = "radsam-worker"):
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        self._queue.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.run()

    def shutdown(self, timeout: float | None = None) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class Ticker:
    """The main thread's side of a running job, one call per timer tick.

    :meth:`tick` first waits up to ``wait_s`` seconds for the job to end (the GIL is free
    meanwhile, so the worker runs), then says whether to copy results into MRML now: when
    the job has ended, or when ``write_every_s`` has passed since the last copy (writes
    are coalesced: a slice finished every few ms is not a scene update every few ms).
    The wait bounds the UI's latency; Slicer's timer calls ``tick`` back to back.
    """

    def __init__(self, wait_s: float = 0.04, write_every_s: float = 0.25, clock=time.monotonic):
        self.wait_s = wait_s
        self.write_every_s = write_every_s
        self.clock = clock
        self._last_write = None

    def tick(self, job: Job) -> bool:
        """True when the caller should copy finished slices now."""
        job.done.wait(self.wait_s)
        now = self.clock()
        if job.finished or self._last_write is None or now - self._last_write >= self.write_every_s:
            self._last_write = now
            return True
        return False


class SurfaceThrottle:
    """When a streaming run rebuilds its segment's 3D surface (Show 3D): at the first write,
    then at most every ``every_s`` seconds, and never for more than ``share`` of the main
    thread's time (a rebuild that took ``d`` seconds waits at least ``d / share``: a
    surface grows with the organ, and rebuilding it blocks the UI). The end of a run
    always rebuilds it (the caller asks with ``final``)."""

    def __init__(self, every_s: float = 1.0, share: float = 0.25, clock=time.monotonic):
        self.every_s = every_s
        self.share = share
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """A new run: its first write rebuilds."""
        self._next = None

    def due(self, final: bool = False) -> bool:
        return final or self._next is None or self.clock() >= self._next

    def rebuilt(self, started: float, ended: float) -> None:
        """A rebuild ran from ``started`` to ``ended`` (``clock`` times)."""
        self._next = started + max(self.every_s, (ended - started) / self.share)
