"""The interactive segmentation session: prompts, propagation, edits, undo/redo.

A ``Session`` holds the current 3D mask of one object in the volume of a
:class:`~RadSAMLib.engine.SliceEngine` (each slice encoded once). Build it from an engine,
``Session(engine, config)``, or from a model and a volume, ``Session.from_volume(model,
volume)``; the tunables are a :class:`~RadSAMLib.config.RadSAMConfig`.

Interactions stream, in the style of SAM 2's ``propagate_in_video``: ``segment_iter``,
``edit_iter`` and ``segment_slices_iter`` return an :class:`Interaction`, an iterator of
:class:`SliceUpdate` (one per slice written, in order, with done/total progress). The
model runs as the caller iterates; stopping (``break``, ``close()``) is the cancel.
However an interaction ends, the slices it finished stay (each one all old or all new)
and are one undo step, committed as it ends. ``segment``, ``edit`` and
``segment_slices`` run one to the end and return its :class:`Change`.

Cancelling from another thread: ``Interaction.cancel()`` stops that interaction before
its next slice, even one not started yet. ``Session.cancel()`` stops the running
interaction or, when none is running, the next one to start (so a cancel that arrives
just before a run begins is not lost); either is cleared when that interaction ends.

Anchors: the slices where the user gave a prompt (the initial prompt slice, and every
slice holding correction points). Propagation never overwrites an anchor; it stops there,
because beyond an anchor the result was propagated from that anchor. A new correction on
an anchor slice reuses the points already there.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import numpy as np

from . import clicks as clicks_mod
from .config import RadSAMConfig
from .engine import SliceEngine, SliceResult
from .errors import PromptError, RadSAMError
from .preprocess import Window
from .propagation import propagate
from .prompts import SlicePrompt
from .request import check_bounds, check_edit, check_segment, check_slices  # noqa: F401  (check_bounds: re-exported)
from .slices import slice_index


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


@dataclass(frozen=True)
class SliceUpdate:
    """One slice an interaction has just written: ``index`` along the propagation axis,
    ``result`` (the model's :class:`SliceResult`; ``None`` when the slice was cleared), and
    progress: ``done`` slices written so far of an expected ``total`` (an edit's
    re-propagation may end early, where the result stops changing)."""

    index: int
    result: SliceResult | None
    done: int
    total: int


@dataclass
class _Step:
    before: dict            # slice -> (packed old mask, old score)
    after: dict             # slice -> (packed new mask, new score)
    state_before: tuple     # (anchors, bounds, mode, source)
    state_after: tuple


class Interaction:
    """An interaction in progress: iterate it for :class:`SliceUpdate` objects.

    The model runs only as it is iterated. ``break`` / :meth:`close` stop it (the slices
    done so far stay, one undo step); :meth:`cancel` (any thread) stops it before its next
    slice. :attr:`change` is the :class:`Change` once it has ended; :meth:`run` iterates
    to the end and returns it.
    """

    def __init__(self, session: "Session", plan, new_prompt: bool = False):
        self._cancel = threading.Event()
        self.change: Change | None = None
        self._gen = session._stream(self, plan, new_prompt)

    def __iter__(self):
        return self

    def __next__(self) -> SliceUpdate:
        return next(self._gen)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def close(self) -> Change:
        """Stop here (a no-op once ended); returns the :class:`Change`."""
        self._gen.close()
        if self.change is None:     # never started: nothing was done
            self.change = Change(cancelled=True)
        return self.change

    def run(self) -> Change:
        for _ in self:
            pass
        return self.change

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Session:
    """Segment one object in the ``(k, j, i)`` volume of ``engine`` from a prompt on one slice.

    ``engine``: a :class:`SliceEngine` (its embeddings may be shared with other sessions);
    ``config``: a :class:`RadSAMConfig` (default: the engine's). Its engine fields
    (``prefetch_batch``, ``encoder_batch``) must match the engine's, which applies them.
    """

    def __init__(self, engine: SliceEngine, config: RadSAMConfig | None = None):
        if not all(hasattr(engine, a) for a in ("predict_best", "slice_shape", "num_slices")):
            raise TypeError(f"Session(engine, config) takes a SliceEngine, not {type(engine).__name__}; "
                            "from a model and a volume use Session.from_volume(model, volume, ...)")
        engine_config = getattr(engine, "config", None)
        if config is None:
            config = engine_config or RadSAMConfig()
        elif not isinstance(config, RadSAMConfig):
            raise TypeError(f"Session config must be a RadSAMConfig, not {type(config).__name__}")
        elif engine_config is not None and config.engine_fields() != engine_config.engine_fields():
            raise ValueError(f"the config's engine settings {config.engine_fields()} differ from the engine's "
                             f"{engine_config.engine_fields()}: build the SliceEngine with this config")
        self.engine = engine
        self.config = config      # may be replaced (a new frozen config) between interactions
        self.mask = np.zeros(self.engine.volume.shape, dtype=np.uint8)
        self.scores = np.full(self.engine.num_slices, np.nan, dtype=np.float32)
        self.anchors: dict[int, SlicePrompt] = {}
        # source[k]: the anchor slice whose propagation produced slice k (-1: none yet).
        # An edit re-propagates only downstream of the corrected slice, away from its source.
        self.source = np.full(self.engine.num_slices, -1, dtype=np.int64)
        self.bounds: tuple | None = None
        self.mode = "volume"      # "volume" (propagation) or "slice" (one prompt per slice)
        self._lock = threading.Lock()
        self._running: Interaction | None = None
        self._cancel_pending = False
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        self._txn: dict | None = None
        self._txn_new: dict | None = None

    @classmethod
    def from_volume(cls, model, volume: np.ndarray, axis: int = 0, window: Window = Window(),
                    config: RadSAMConfig | None = None, **engine_options) -> "Session":
        """A session on a new :class:`SliceEngine` over ``volume`` ``(k, j, i)`` across
        ``axis``; ``engine_options`` go to it (e.g. ``encoder_backend="torch"``)."""
        return cls(SliceEngine(model, volume, axis=axis, window=window, config=config, **engine_options), config)

    # -- public API --------------------------------------------------------------------
    @property
    def strategy(self):
        """The propagation :class:`~RadSAMLib.propagation.Strategy` in use."""
        return self.config.strategy_for(self.model)

    @property
    def model(self):
        return self.engine.model

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
        """Stop the running interaction before its next slice or, if none is running, the
        next one to start (any thread)."""
        with self._lock:
            if self._running is not None:
                self._running.cancel()
            else:
                self._cancel_pending = True

    def segment_iter(self, slice_idx: int, prompt: SlicePrompt, bounds=None) -> Interaction:
        """Volume-level prompting: ``prompt`` on ``slice_idx``, propagated to ``bounds``
        (inclusive ``(bottom, top)`` slice indices), or until the object ends if ``None``.
        Slices outside the propagated range are not touched. Checks the input now; the
        slices are computed as the returned :class:`Interaction` is iterated."""
        idx, bounds = check_segment(self.engine.volume.shape, self.axis, slice_idx, prompt, bounds)
        lo, hi = bounds if bounds else (0, self.num_slices - 1)
        first = prompt
        if prompt.mask is not None and prompt.box is None:
            # A mask the user gives is treated like a neighbour's result: the strategy
            # turns it into the prompt this model handles best (a box for the base model).
            first = self.strategy.prompt_from_mask(prompt.mask, self.engine.frame.scale, prompt.points, prompt.labels)

        def plan():
            self.anchors = {idx: prompt}
            self.bounds = bounds
            self.mode = "volume"
            self.engine.prefetch([idx] + list(range(idx + 1, hi + 1)) + list(range(idx - 1, lo - 1, -1)))

            def steps():
                yield idx, clicks_mod.predict_prompt(self.engine, idx, first, self.config.clicks), idx
                yield from self._propagation(idx, +1)
                yield from self._propagation(idx, -1)
            return hi - lo + 1, steps()
        return Interaction(self, plan, new_prompt=True)

    def edit_iter(self, slice_idx: int, point, positive: bool = True) -> Interaction:
        """A correction point ``(x, y)`` on ``slice_idx``: re-run that slice with its current
        mask plus all its correction points, then re-propagate the slices derived through
        it, up to the next anchor or bound (volume mode; in slice mode only that slice)."""
        idx, (x, y) = check_edit(self.engine.volume.shape, self.axis, slice_idx, point, self.bounds)
        label = 1 if positive else 0
        old = self.anchors.get(idx)
        anchor = replace((old or SlicePrompt()).with_points([(x, y)], [label]), mask=None)
        anchor.validate(self.engine.slice_shape, f"slice {idx}")
        if not self.slice_mask(idx).any() and not anchor.labels.count(1) and anchor.box is None:
            raise PromptError(f"slice {idx} has no mask to correct: start with a positive point")

        def plan():
            prev = self.slice_mask(idx)
            # Only slices derived through this one change: those on the far side from the
            # anchor it was propagated from (both sides if it is an anchor itself).
            dirs = self._downstream(idx) if self.mode == "volume" else []
            self.anchors[idx] = anchor

            def steps():
                yield idx, self._edit_slice(idx, anchor, prev), idx
                for d in dirs:
                    yield from self._propagation(idx, d, converge=True)
            return 1 + sum(self._run_length(idx, d) for d in dirs), steps()
        return Interaction(self, plan)

    def segment_slices_iter(self, prompts: dict) -> Interaction:
        """Slice-level prompting: ``{slice_idx: SlicePrompt}``, each slice on its own."""
        prompts = check_slices(self.engine.volume.shape, self.axis, prompts)
        order = sorted(prompts)
        prompts = dict(prompts)

        def plan():
            self.anchors = dict(prompts)
            self.bounds = (order[0], order[-1])
            self.mode = "slice"
            self.engine.prefetch(order)
            return len(order), ((idx, clicks_mod.predict_prompt(self.engine, idx, prompts[idx], self.config.clicks), idx)
                                for idx in order)
        return Interaction(self, plan, new_prompt=True)

    def segment(self, slice_idx: int, prompt: SlicePrompt, bounds=None) -> Change:
        """:meth:`segment_iter`, run to the end."""
        return self.segment_iter(slice_idx, prompt, bounds).run()

    def edit(self, slice_idx: int, point, positive: bool = True) -> Change:
        """:meth:`edit_iter`, run to the end."""
        return self.edit_iter(slice_idx, point, positive).run()

    def segment_slices(self, prompts: dict) -> Change:
        """:meth:`segment_slices_iter`, run to the end."""
        return self.segment_slices_iter(prompts).run()

    def undo(self) -> Change:
        """Undo the last interaction; returns the slices restored (empty if none)."""
        self._check_idle()
        if not self._undo:
            return Change()
        step = self._undo.pop()
        self._apply(step.before, step.state_before)
        self._redo.append(step)
        return Change(sorted(step.before))

    def redo(self) -> Change:
        self._check_idle()
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

    def _check_idle(self):
        if self._running is not None:
            raise RadSAMError("an interaction on this session is still running: finish or close it first")

    def _stream(self, it: Interaction, plan, new_prompt: bool = False):
        """The body of every interaction: ``plan()`` sets the session's state and returns
        ``(expected slice count, iterator of (slice, result, source))``; each slice is
        written and reported as the caller asks for it. The undo step is committed in the
        ``finally``, however the run ends (finished, cancelled, closed, failed).
        ``new_prompt``: a segmentation (not a click), whose prompts and bounds stay even if
        it finds nothing."""
        with self._lock:
            self._check_idle()
            self._running = it
            if self._cancel_pending:
                it.cancel()
                self._cancel_pending = False
        self._txn, self._txn_new = {}, {}
        state_before = self._state()
        cancelled = False
        done = 0
        try:
            total, steps = plan()
            while True:
                if it.cancel_requested:     # checked before each slice is computed
                    cancelled = True
                    break
                step = next(steps, None)
                if step is None:
                    break
                k, result, source = step
                self._write(k, result, source)
                done += 1
                yield SliceUpdate(k, result, done, max(total, done))
        except GeneratorExit:
            cancelled = True
            raise
        finally:
            self.engine.stop_prefetch()
            before, after = self._txn, self._txn_new
            self._txn = self._txn_new = None
            if any(not np.array_equal(before[k][0], after[k][0]) for k in before):
                self._undo.append(_Step(before, after, state_before, self._state()))
                self._redo.clear()
                it.change = Change(sorted(before), cancelled=cancelled)
            else:
                # No voxel changed (a click where the mask already said so, a run cancelled
                # before its first slice): no undo step, so Undo never undoes nothing. A
                # click leaves no trace either; a prompt that found nothing keeps its anchors
                # and bounds (the user's next click must stay within the bounds they gave),
                # and, a new request, ends what could be redone.
                if new_prompt and not cancelled:
                    self._redo.clear()
                else:
                    self._apply(before, state_before)
                it.change = Change([], cancelled=cancelled)
            with self._lock:
                self._running = None

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

    def _propagation(self, start: int, direction: int, converge: bool = False):
        """:func:`~RadSAMLib.propagation.propagate` from ``start`` to the bound or the next
        anchor; with ``converge`` (re-propagation after an edit) it also stops where the
        new masks agree with the old ones. Read lazily: ``start`` is written by then."""
        lo, hi = self._range()
        c = self.config
        yield from propagate(self.engine, self.strategy, self.slice_mask(start), start, direction,
                             lambda k: lo <= k <= hi and k not in self.anchors, bounded=self.bounds is not None,
                             min_score=c.min_score, min_pixels=c.min_pixels,
                             old=self.slice_mask if converge else None, converge_dice=c.converge_dice)

    def _edit_slice(self, idx: int, anchor: SlicePrompt, prev: np.ndarray) -> SliceResult:
        """Re-run a corrected slice with its current mask and all its clicks (clicks.py)."""
        return clicks_mod.edit_slice(self.engine, self.strategy, idx, anchor, prev, self.config.clicks)
