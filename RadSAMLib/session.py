"""The interactive segmentation session: prompts, propagation, edits, undo/redo.

A ``Session`` holds one volume (its slices encoded once each, by :class:`SliceEngine`)
and the current 3D mask of one object. Every interaction (``segment``, ``edit``,
``segment_slices``) returns a :class:`Change` naming the slices it rewrote, so a viewer
updates just those; each is one undo step. ``cancel()`` may be called from any thread:
the running interaction stops before its next slice, keeps the slices it finished (each
slice is either all old or all new) and stays undoable.

Anchors: the slices where the user gave a prompt (the initial prompt slice, and every
slice holding correction points). Propagation never overwrites an anchor; it stops there,
because beyond an anchor the result was propagated from that anchor. A new correction on
an anchor slice reuses the points already there.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from . import clicks as clicks_mod
from .engine import SliceEngine, SliceResult, slice_index
from .errors import BoundsError, PromptError
from .metrics import dice
from .preprocess import Window
from .propagation import Strategy
from .prompts import SlicePrompt


@dataclass
class Change:
    """What one interaction (or undo/redo) rewrote: the slices, as a sorted list and as
    an inclusive range ``lo..hi`` along the propagation axis; ``None`` range if nothing."""

    slices: list = field(default_factory=list)
    cancelled: bool = False

    @property
    def lo(self):
        return self.slices[0] if self.slices else None

    @property
    def hi(self):
        return self.slices[-1] if self.slices else None

    def __bool__(self):
        return bool(self.slices)


@dataclass
class _Step:
    before: dict            # slice -> packed old mask
    after: dict             # slice -> packed new mask
    state_before: tuple     # (anchors, bounds, mode)
    state_after: tuple


class _Stop(Exception):
    pass


def check_bounds(bounds, num_slices: int, start: int | None = None):
    """Validate inclusive ``(bottom, top)`` slice bounds; ``None`` means unbounded."""
    if bounds is None:
        return None
    lo, hi = (int(b) for b in bounds)
    if lo > hi:
        raise BoundsError(f"bounds are reversed: bottom slice {lo} is above top slice {hi}")
    if lo < 0 or hi >= num_slices:
        raise BoundsError(f"bounds {lo}..{hi} are outside the volume (slices 0..{num_slices - 1})")
    if start is not None and not lo <= start <= hi:
        raise BoundsError(f"prompt slice {start} is outside the bounds {lo}..{hi}")
    return (lo, hi)


class Session:
    """Segment one object in a ``(k, j, i)`` volume from a prompt on one slice.

    ``progress(done, total)`` is called after each slice; ``on_slice(idx, result)`` with
    each slice's :class:`SliceResult` (``None`` when a slice was cleared). Both run on the
    thread that called the interaction. ``engine_options`` go to :class:`SliceEngine`
    (e.g. ``encoder_backend="torch"`` to force eager PyTorch). ``clicks``: how point
    prompts and correction clicks are answered (:class:`RadSAMLib.clicks.ClickConfig` or
    a preset name; default ``"default"``).
    """

    def __init__(self, model, volume: np.ndarray, axis: int = 0, window: Window = Window(),
                 strategy=None, progress=None, on_slice=None, engine: SliceEngine | None = None,
                 clicks=None, **engine_options):
        self.engine = engine or SliceEngine(model, volume, axis=axis, window=window, **engine_options)
        self.model = self.engine.model
        self.strategy = Strategy.parse(strategy, self.model.info.default_strategy)
        self.clicks = clicks_mod.ClickConfig.parse(clicks)
        self.mask = np.zeros(self.engine.volume.shape, dtype=np.uint8)
        self.scores = np.full(self.engine.num_slices, np.nan, dtype=np.float32)
        self.anchors: dict[int, SlicePrompt] = {}
        # source[k]: the anchor slice whose propagation produced slice k (-1: none yet).
        # An edit re-propagates only downstream of the corrected slice, away from its source.
        self.source = np.full(self.engine.num_slices, -1, dtype=np.int64)
        self.bounds: tuple | None = None
        self.mode = "volume"      # "volume" (propagation) or "slice" (one prompt per slice)
        self.progress = progress
        self.on_slice = on_slice
        self._cancel = threading.Event()
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        self._txn: dict | None = None
        self._txn_new: dict | None = None
        # re-propagation after an edit stops where new and old masks agree this well
        self.converge_dice = 0.99

    # -- public API --------------------------------------------------------------------
    @property
    def axis(self) -> int:
        return self.engine.axis

    @property
    def num_slices(self) -> int:
        return self.engine.num_slices

    def slice_mask(self, idx: int) -> np.ndarray:
        """Current bool mask of slice ``idx`` ``(rows, cols)``."""
        return self.mask[slice_index(self.axis, idx)].astype(bool)

    def cancel(self) -> None:
        """Ask the running interaction to stop before its next slice (any thread)."""
        self._cancel.set()

    def segment(self, slice_idx: int, prompt: SlicePrompt, bounds=None) -> Change:
        """Volume-level prompting: ``prompt`` on ``slice_idx``, propagated to ``bounds``
        (inclusive ``(bottom, top)`` slice indices), or until the object ends if ``None``.
        Slices outside the propagated range are not touched."""
        idx = self.engine.check_index(slice_idx, "prompt slice")
        bounds = check_bounds(bounds, self.num_slices, idx)
        prompt.validate(self.engine.slice_shape, f"slice {idx}")
        lo, hi = bounds if bounds else (0, self.num_slices - 1)
        order = [idx] + list(range(idx + 1, hi + 1)) + list(range(idx - 1, lo - 1, -1))
        self.engine.prefetch(order)

        first = prompt
        if prompt.mask is not None and prompt.box is None:
            # A mask the user gives is treated like a neighbour's result: the strategy
            # turns it into the prompt this model handles best (a box for the base model).
            first = self.strategy.prompt_from_mask(prompt.mask, self.engine.frame.scale, prompt.points, prompt.labels)

        def run():
            self.anchors = {idx: prompt}
            self.bounds = bounds
            self.mode = "volume"
            self._total = (hi - lo + 1)
            self._write(idx, clicks_mod.predict_prompt(self.engine, idx, first, self.clicks), source=idx)
            self._propagate(idx, +1)
            self._propagate(idx, -1)
        return self._interaction(run)

    def edit(self, slice_idx: int, point, positive: bool = True) -> Change:
        """A correction point ``(x, y)`` on ``slice_idx``: re-run that slice with its current
        mask plus all its correction points, then re-propagate the slices derived through
        it, up to the next anchor or bound (volume mode; in slice mode only that slice)."""
        idx = self.engine.check_index(slice_idx, "edit slice")
        if self.bounds is not None and not self.bounds[0] <= idx <= self.bounds[1]:
            raise BoundsError(f"edit slice {idx} is outside the bounds {self.bounds[0]}..{self.bounds[1]}")
        label = 1 if positive else 0
        x, y = (float(v) for v in point)
        old = self.anchors.get(idx)
        anchor = (old or SlicePrompt()).with_points([(x, y)], [label])
        anchor.mask = None
        anchor.validate(self.engine.slice_shape, f"slice {idx}")
        prev = self.slice_mask(idx)
        if not prev.any() and not anchor.labels.count(1) and anchor.box is None:
            raise PromptError(f"slice {idx} has no mask to correct: start with a positive point")

        def run():
            # Only slices derived through this one change: those on the far side from the
            # anchor it was propagated from (both sides if it is an anchor itself).
            dirs = self._downstream(idx) if self.mode == "volume" else []
            self.anchors[idx] = anchor
            self._total = 1 + sum(self._run_length(idx, d) for d in dirs)
            self._write(idx, self._edit_slice(idx, anchor, prev), source=idx)
            for d in dirs:
                self._propagate(idx, d, converge=True)
        return self._interaction(run)

    def segment_slices(self, prompts: dict) -> Change:
        """Slice-level prompting: ``{slice_idx: SlicePrompt}``, each slice on its own."""
        if not prompts:
            raise PromptError("slice-level prompting needs at least one slice prompt")
        for idx, p in prompts.items():
            self.engine.check_index(idx, "prompt slice")
            p.validate(self.engine.slice_shape, f"slice {idx}")
        order = sorted(prompts)
        self.engine.prefetch(order)

        def run():
            self.anchors = dict(prompts)
            self.bounds = (order[0], order[-1])
            self.mode = "slice"
            self._total = len(order)
            for idx in order:
                self._check_cancel()
                self._write(idx, clicks_mod.predict_prompt(self.engine, idx, prompts[idx], self.clicks), source=idx)
        return self._interaction(run)

    def undo(self) -> Change:
        """Undo the last interaction; returns the slices restored (empty if none)."""
        if not self._undo:
            return Change()
        step = self._undo.pop()
        self._apply(step.before, step.state_before)
        self._redo.append(step)
        return Change(sorted(step.before))

    def redo(self) -> Change:
        if not self._redo:
            return Change()
        step = self._redo.pop()
        self._apply(step.after, step.state_after)
        self._undo.append(step)
        return Change(sorted(step.after))

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # -- internals ---------------------------------------------------------------------
    def _state(self):
        return (dict(self.anchors), self.bounds, self.mode, self.source.copy())

    @staticmethod
    def _same_state(a, b) -> bool:
        return a[:3] == b[:3] and np.array_equal(a[3], b[3])

    def _interaction(self, run) -> Change:
        self._cancel.clear()
        self._txn, self._txn_new = {}, {}
        self._done = 0
        state_before = self._state()
        cancelled = False
        try:
            run()
        except _Stop:
            cancelled = True
        finally:
            self.engine.stop_prefetch()
            before, after = self._txn, self._txn_new
            self._txn = self._txn_new = None
            if before:
                self._undo.append(_Step(before, after, state_before, self._state()))
                self._redo.clear()
            elif not self._same_state(self._state(), state_before) and not cancelled:
                self._undo.append(_Step({}, {}, state_before, self._state()))
                self._redo.clear()
        return Change(sorted(before), cancelled=cancelled)

    def _check_cancel(self):
        if self._cancel.is_set():
            raise _Stop()

    def _write(self, idx: int, result: SliceResult | None, source: int | None = None):
        """Set slice ``idx`` (``None``: empty), recording it for undo; ``source`` is the
        anchor slice whose prompt or propagation produced it."""
        key = slice_index(self.axis, idx)
        if source is not None:
            self.source[idx] = source
        if idx not in self._txn:
            self._txn[idx] = (np.packbits(self.mask[key].astype(bool)), self.scores[idx])
        new = result.mask if result is not None else np.zeros(self.engine.slice_shape, bool)
        self.mask[key] = new
        self.scores[idx] = result.score if result is not None else np.nan
        self._txn_new[idx] = (np.packbits(new), self.scores[idx])
        self._done += 1
        if self.on_slice is not None:
            self.on_slice(idx, result)
        if self.progress is not None:
            self.progress(self._done, max(self._total, self._done))

    def _apply(self, packed: dict, state):
        shape = self.engine.slice_shape
        n = shape[0] * shape[1]
        for idx, (bits, score) in packed.items():
            self.mask[slice_index(self.axis, idx)] = np.unpackbits(bits, count=n).reshape(shape)
            self.scores[idx] = score
        anchors, self.bounds, self.mode, source = state
        self.anchors = dict(anchors)
        self.source = source.copy()

    def _range(self):
        return self.bounds if self.bounds is not None else (0, self.num_slices - 1)

    def _downstream(self, idx: int) -> list:
        """Directions (+1/-1) of the slices whose masks were propagated through ``idx``."""
        src = int(self.source[idx])
        if src not in (-1, idx):
            return [1 if idx > src else -1]
        return [d for d in (+1, -1)
                if 0 <= idx + d < self.num_slices and self.source[idx + d] in (-1, idx)]

    def _run_length(self, idx: int, d: int) -> int:
        """Slices from ``idx + d`` to the bound or the next anchor (exclusive) in direction ``d``."""
        lo, hi = self._range()
        k = idx + d
        while lo <= k <= hi and k not in self.anchors:
            k += d
        return abs(k - idx) - 1

    def _edit_slice(self, idx: int, anchor: SlicePrompt, prev: np.ndarray) -> SliceResult:
        """Re-run a corrected slice with its current mask and all its clicks (clicks.py)."""
        return clicks_mod.edit_slice(self.engine, self.strategy, idx, anchor, prev, self.clicks)

    def _propagate(self, start: int, direction: int, converge: bool = False):
        """Prompt each slice from its neighbour, from ``start`` outward to the bound or the
        next anchor. With ``converge`` (re-propagation after an edit) it also stops once a
        slice's new mask agrees with its old one: from there on the old result is what the
        new one would be, so rewriting it would only cost time (and the user's trust)."""
        lo, hi = self._range()
        bounded = self.bounds is not None
        s = self.strategy
        prev = self.slice_mask(start)
        k = start + direction
        while lo <= k <= hi and k not in self.anchors:
            self._check_cancel()
            if prev.sum() < s.min_pixels:
                if not bounded:
                    return
                # The object was lost: the rest of this run is empty, not stale.
                self._write(k, None, source=start)
                k += direction
                continue
            r = self.engine.predict_best(k, s.candidates(prev, self.engine.frame.scale))
            if not bounded and (r.score < s.min_score or r.mask.sum() < s.min_pixels):
                self._write(k, None)
                return
            old = self.slice_mask(k)
            self._write(k, r, source=start)
            if converge and dice(r.mask, old) >= self.converge_dice:
                return
            prev = r.mask
            k += direction

