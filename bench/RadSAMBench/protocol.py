"""Run the simulated user on one case: every object x every setting, one shared engine.

A *setting* is ``level/prompt/strategy``: ``level`` is ``volume`` (one prompt on one
slice + the object's true bottom/top slices, then propagation) or ``slice`` (one prompt on
every slice of the object); ``prompt`` is ``box`` or ``point``; ``strategy`` is the
propagation strategy (``box``, ``box:3``, ``mask``, ``mask+box``; at slice level it only
changes how a slice is re-run after a correction click).

The array-level entry point :func:`run_case` needs no SimpleITK: ``(k, j, i)`` HU image
and label arrays in, one result dict per (object, setting) out. Axis 0 (``k``) is the
propagation axis. The embeddings of the slices the objects span are computed once per
case (shared by every setting); decoder calls with identical inputs (e.g. the slice-level
prompts, the same for every strategy) are computed once too.
"""
from __future__ import annotations

import hashlib
import time
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from RadSAMLib.errors import RadSAMError
from RadSAMLib.metrics import dice
from .user import (PROMPT_KINDS, PROMPT_SLICES, challenge_click, choose_prompt_slice, make_prompt, object_slices,
                   sample_edit)

LEVELS = ("volume", "slice")
VOLUME_CHECKPOINTS = (0, 1, 2, 5, 10, 20)
SLICE_CHECKPOINTS = (0, 1, 2, 5, 10)


@dataclass(frozen=True)
class Setting:
    level: str      # "volume" | "slice"
    prompt: str     # "box" | "point"
    strategy: str   # "box", "box:5", "mask", "mask+box"

    @property
    def name(self) -> str:
        return f"{self.level}/{self.prompt}/{self.strategy}"

    @classmethod
    def parse(cls, spec) -> "Setting":
        if isinstance(spec, Setting):
            return spec
        parts = str(spec).split("/")
        if len(parts) != 3:
            raise RadSAMError(f"setting '{spec}' must be level/prompt/strategy, e.g. volume/box/mask")
        s = cls(*parts)
        if s.level not in LEVELS:
            raise RadSAMError(f"unknown level '{s.level}' in setting '{spec}' (choose {', '.join(LEVELS)})")
        if s.prompt not in PROMPT_KINDS:
            raise RadSAMError(f"unknown prompt kind '{s.prompt}' in setting '{spec}' (choose {', '.join(PROMPT_KINDS)})")
        from RadSAMLib.propagation import Strategy
        Strategy.parse(s.strategy)  # raises RadSAMError for an unknown strategy
        return s


def make_settings(levels=LEVELS, prompts=PROMPT_KINDS, strategies=("box", "mask", "mask+box")) -> list:
    """Every ``level x prompt x strategy`` combination, as :class:`Setting` objects."""
    return [Setting.parse(f"{lv}/{p}/{s}") for lv in levels for p in prompts for s in strategies]


@dataclass
class Protocol:
    """The simulated user's knobs (see ``user.py`` for the sampling rules)."""

    edits: int = 20                 # volume level: correction clicks after the first result
    challenge_edits: int = 5        # volume level: CVPR 2025 challenge clicks, from the same first result
    slice_edits: int = 2            # slice level: clicks per slice
    prompt_slice: str = "middle"    # middle | largest | random
    box_frac: float = 0.05          # box jitter: fraction of the box side ...
    box_max_px: float = 5.0         # ... at most this many slice pixels per side
    box_jitter: int | None = None   # instead: the challenge's widening, 0..N px per 256 (user.challenge_box)
    point_inner: float = 0.5        # point prompt: >= this x max depth inside the object
    min_voxels: int = 50            # skip smaller objects (after the body-slice restriction)
    min_slices: int = 2             # ... or objects on fewer slices
    body_hu: float = -500.0         # a slice has body content when at least
    min_body_fraction: float = 0.01  # ... this fraction of its pixels is above body_hu

    def __post_init__(self):
        if self.prompt_slice not in PROMPT_SLICES:
            raise RadSAMError(f"unknown prompt slice rule '{self.prompt_slice}' (choose {', '.join(PROMPT_SLICES)})")
        if self.edits < 0 or self.slice_edits < 0 or self.challenge_edits < 0:
            raise RadSAMError("the number of edits cannot be negative")
        if self.box_jitter is not None and (int(self.box_jitter) != self.box_jitter or self.box_jitter < 0):
            raise RadSAMError(f"box jitter must be a whole number of pixels >= 0, got {self.box_jitter}")

    def checkpoints(self, level: str) -> list:
        n, base = (self.edits, VOLUME_CHECKPOINTS) if level == "volume" else (self.slice_edits, SLICE_CHECKPOINTS)
        return sorted({c for c in base if c <= n} | {n})

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["box_jitter"] is None:     # off: the config of runs made before the option, which resume
            del d["box_jitter"]
        return d


# -- objects ------------------------------------------------------------------------------
def body_slices(image_kji: np.ndarray, body_hu: float = -500.0, min_fraction: float = 0.01) -> np.ndarray:
    """Bool ``(k,)``: slices where at least ``min_fraction`` of the pixels are above
    ``body_hu`` (OpenKBP has labelled slices whose CT is (almost) all air)."""
    flat = image_kji.reshape(image_kji.shape[0], -1)
    return (flat > body_hu).mean(axis=1) >= min_fraction


def object_target(label_kji: np.ndarray, value: int, body: np.ndarray):
    """The object's ground truth restricted to body slices: bool ``(k, j, i)`` and its
    ``(bottom, top)`` slice bounds. Within the object's extent the run of consecutive
    body slices holding most of the object is kept (the true bounds a user would give)."""
    gt = label_kji == value
    ks = object_slices(gt)
    if len(ks) == 0:
        return gt, None
    areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
    best, best_sum, start = None, 0, None
    for k in range(ks[0], ks[-1] + 2):
        inside = k <= ks[-1] and body[k]
        if inside and start is None:
            start = k
        if not inside and start is not None:
            s = int(areas[start:k].sum())
            if s > best_sum:
                best, best_sum = (start, k - 1), s
            start = None
    if best is None:
        gt[:] = False
        return gt, None
    gt[:best[0]] = False
    gt[best[1] + 1:] = False
    ks = object_slices(gt)
    return gt, (int(ks[0]), int(ks[-1]))


# -- helpers ------------------------------------------------------------------------------
def _rng(seed: int, *keys) -> np.random.Generator:
    """A generator fixed by the seed and string keys (order-independent runs, resumable)."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(k).encode()) for k in keys])


def _prompt_key(idx, p):
    mask = None
    if p.mask is not None:
        mask = hashlib.blake2b(np.packbits(p.mask).tobytes() + str(p.mask.shape).encode(), digest_size=16).digest()
    box = None if p.box is None else tuple(float(v) for v in p.box)
    return (int(idx), box, tuple((float(x), float(y)) for x, y in p.points), tuple(int(v) for v in p.labels), mask)


class _Decoder:
    """The engine's decode hook while a case runs: times real decoder calls and reuses
    identical ones."""

    def __init__(self, engine, size: int = 256):
        self.engine, self.size = engine, size
        self.memo = OrderedDict()
        self.calls = self.hits = 0
        self.seconds = 0.0

    def __call__(self, idx, prompts, decode):
        return self._memo(tuple(_prompt_key(idx, p) for p in prompts), decode, idx, prompts)

    def _memo(self, key, fn, *args):
        r = self.memo.get(key)
        if r is not None:
            self.memo.move_to_end(key)
            self.hits += 1
            return r
        t = time.perf_counter()
        r = fn(*args)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        self.memo[key] = r
        if len(self.memo) > self.size:
            self.memo.popitem(last=False)
        return r

    def __enter__(self):
        self.engine.set_decode_hook(self)
        return self

    def __exit__(self, *exc):
        self.engine.set_decode_hook(None)
        self.memo.clear()


class _Oracle:
    """Follows a session's interactions for the oracle: the 3D Dice when, on every slice,
    the best of the model's 4 masks (primary + 3 alternatives) is chosen.

    Per slice it keeps each mask's overlap ``I`` with the truth and its size ``P``; the
    choice maximising the 3D Dice ``2 sum(I) / (sum(P) + G)`` is found exactly by
    Dinkelbach iteration (pick per slice ``argmax 2I - lambda P``, update ``lambda``), started
    from the primary masks, so the oracle is never below the primary result.
    """

    def __init__(self, gt, lo):
        self.gt, self.lo = gt, lo     # gt: the (bottom..top) slab
        self.g = int(gt.sum())
        self.stats = {}               # slice -> (I (4,), P (4,))

    def __call__(self, idx, result):
        if result is None:
            self.stats.pop(idx, None)
            return
        g = self.gt[idx - self.lo]
        m = result.masks.reshape(len(result.masks), -1)
        self.stats[idx] = ((m & g.reshape(1, -1)).sum(axis=1), m.sum(axis=1))

    def follow(self, interaction):
        """Run a session interaction to the end, recording each slice it writes."""
        for u in interaction:
            self(u.index, u.result)
        return interaction.change

    def dice(self) -> float:
        if not self.stats:
            return 1.0 if self.g == 0 else 0.0
        inter = np.array([s[0] for s in self.stats.values()], np.float64)   # (slices, 4)
        size = np.array([s[1] for s in self.stats.values()], np.float64)
        rows = np.arange(len(inter))
        pick = np.zeros(len(inter), int)
        best = -1.0
        for _ in range(50):
            den = size[rows, pick].sum() + self.g
            lam = 1.0 if den == 0 else 2.0 * inter[rows, pick].sum() / den
            if lam <= best + 1e-12:
                break
            best = lam
            pick = np.argmax(2.0 * inter - lam * size, axis=1)
        return best


# -- one object, one setting ----------------------------------------------------------------
def run_setting(engine, gt, bounds, setting: Setting, protocol: Protocol, rng_prompt, rng_edit, clicks=None) -> dict:
    """Simulate the user on one object; returns ``dice``/``oracle`` ``{n_edits: value}``,
    ``curve`` (the Dice after each click, from 0 clicks), the prompt, and the clicks
    ``[k, x, y, positive]``. At volume level the same first result is then corrected by
    ``protocol.challenge_edits`` challenge clicks (the uniform clicks undone first):
    ``challenge`` holds the Dice after each one (from 0) and ``challenge_clicks`` the
    clicks. ``clicks``: the session's click inference (``RadSAMLib.clicks``)."""
    from RadSAMLib.config import RadSAMConfig
    from RadSAMLib.session import Session
    lo, hi = bounds
    slab_gt = gt[lo:hi + 1]
    oracle = _Oracle(slab_gt, lo)
    sess = Session(engine, RadSAMConfig(strategy=setting.strategy, clicks=clicks))
    slab = sess.mask[lo:hi + 1]           # a view: follows the session's edits
    marks = protocol.checkpoints(setting.level)
    out = {"dice": {}, "oracle": {}, "curve": [], "clicks": [], "edit_errors": []}

    def mark(n):
        out["dice"][str(n)] = round(dice(slab, slab_gt), 5)
        out["oracle"][str(n)] = round(oracle.dice(), 5)

    def click(ed, log="clicks"):
        """Apply one click; True if it became an undo step."""
        k, (x, y), pos = ed
        out[log].append([int(k), int(x), int(y), int(pos)])   # pixel indices
        try:
            return bool(oracle.follow(sess.edit_iter(k, (x, y), positive=pos)))   # a click that changed nothing is no undo step
        except RadSAMError as e:    # recorded, not fatal: a long run must not die on one click
            out["edit_errors"].append(f"{k} {x:g} {y:g} {int(pos)}: {e}")
            return False

    if setting.level == "volume":
        k0 = choose_prompt_slice(slab_gt, protocol.prompt_slice, rng_prompt) + lo
        prompt = make_prompt(setting.prompt, gt[k0], rng_prompt, protocol.box_frac, protocol.box_max_px,
                             protocol.point_inner, protocol.box_jitter)
        out["prompt_slice"] = k0
        out["prompt"] = list(prompt.box) if prompt.box is not None else [list(p) for p in prompt.points]
        oracle.follow(sess.segment_iter(k0, prompt, bounds=(lo, hi)))
        mark(0)
        out["curve"].append(out["dice"]["0"])
        steps = 0
        for n in range(1, protocol.edits + 1):
            ed = sample_edit(slab, slab_gt, rng_edit)
            if ed is None:
                break
            steps += click((ed[0] + lo, ed[1], ed[2]))
            out["curve"].append(round(dice(slab, slab_gt), 5))
            if n in marks:
                mark(n)
        if protocol.challenge_edits:
            for _ in range(steps):
                sess.undo()
            out["challenge"] = [round(dice(slab, slab_gt), 5)]
            out["challenge_clicks"] = []
            for _ in range(protocol.challenge_edits):
                ed = challenge_click(slab, slab_gt)
                if ed is None:
                    break
                click((ed[0] + lo, ed[1], ed[2]), log="challenge_clicks")
                out["challenge"].append(round(dice(slab, slab_gt), 5))
            out["challenge"] += out["challenge"][-1:] * (protocol.challenge_edits + 1 - len(out["challenge"]))
    else:
        ks = [int(k) + lo for k in object_slices(slab_gt)]
        prompts = {k: make_prompt(setting.prompt, gt[k], rng_prompt, protocol.box_frac, protocol.box_max_px,
                                  protocol.point_inner, protocol.box_jitter) for k in ks}
        oracle.follow(sess.segment_slices_iter(prompts))
        mark(0)
        for n in range(1, protocol.slice_edits + 1):
            for k in ks:
                ed = sample_edit(slab, slab_gt, rng_edit, slice_idx=k - lo)
                if ed is not None:
                    click((k, ed[1], ed[2]))
            if n in marks:
                mark(n)
    # No error left before the last checkpoint: the later ones keep the final value.
    for n in marks:
        if str(n) not in out["dice"]:
            mark(n)
    if out["curve"]:
        out["curve"] += out["curve"][-1:] * (protocol.edits + 1 - len(out["curve"]))
    return out


# -- one case ---------------------------------------------------------------------------------
def run_case(model_or_engine, image_kji: np.ndarray, label_kji: np.ndarray, objects: dict, settings,
             seed: int = 0, protocol: Protocol | None = None, case: str = "case", model_name: str | None = None,
             progress=None, timing: dict | None = None, skip=(), on_object=None, clicks=None) -> list:
    """Benchmark every object of one case under every setting.

    ``image_kji``: ``(k, j, i)`` HU; ``label_kji``: same-shape integer labels;
    ``objects``: ``{label value: name}``; ``settings``: :class:`Setting` or strings
    ``level/prompt/strategy``. ``model_or_engine``: a model (a new ``SliceEngine`` on axis
    0 is built) or a ``SliceEngine`` over ``image_kji`` (its cached embeddings are reused).
    ``progress(message)`` is called before each step; ``timing``, if given, receives the
    case's encode/decode seconds and counts. ``skip``: object names already done (a
    resumed case); ``on_object(records)`` is called with each object's records as soon as
    they are finished (for saving progress). ``clicks``: the sessions' click inference
    (a ``RadSAMLib.clicks.ClickConfig`` or its name; ``None``: the default).

    Returns one dict per (object, setting) that was run, plus one per skipped object
    (``skipped`` holds the reason).
    """
    protocol = protocol or Protocol()
    settings = [Setting.parse(s) for s in settings]
    if not settings:
        raise RadSAMError("no benchmark settings selected")
    t_case = time.perf_counter()
    engine = _case_engine(model_or_engine, image_kji, label_kji)
    body = body_slices(np.asarray(image_kji), protocol.body_hu, protocol.min_body_fraction)
    base = {"model": model_name or engine.model.info.name, "case": case}
    records, targets = _select_objects(label_kji, objects, body, protocol, skip, base, on_object)

    needed = sorted({k for _, _, (lo, hi), _, _ in targets for k in range(lo, hi + 1)})
    enc0, enc_s0 = engine.encode_count, engine.encode_seconds
    if progress:
        progress(f"{case}: encoding {len([k for k in needed if not engine.is_cached(k)])} slices")
    engine.encode_slices(needed)

    with _Decoder(engine) as dec:
        for value, name, bounds, vox, nsl in targets:
            gt, _ = object_target(label_kji, value, body)
            first = len(records)
            for s in settings:
                if progress:
                    progress(f"{case}: {name} {s.name}")
                c0, t0, w0 = dec.calls, dec.seconds, time.perf_counter()
                res = run_setting(engine, gt, bounds, s, protocol,
                                  _rng(seed, case, name, s.level, s.prompt, "prompt"),
                                  _rng(seed, case, name, s.name, "edits"), clicks=clicks)
                records.append({**base, "object": name, "value": value, "setting": s.name, "level": s.level,
                                "prompt_kind": s.prompt, "strategy": s.strategy, "voxels": vox, "slices": nsl,
                                "bounds": list(bounds), **res, "decode_calls": dec.calls - c0,
                                "decode_s": round(dec.seconds - t0, 4),
                                "seconds": round(time.perf_counter() - w0, 4)})
            if on_object:
                on_object(records[first:])
        hits = dec.hits
    if timing is not None:
        timing.update({"slices_encoded": engine.encode_count - enc0,
                       "encode_s": round(engine.encode_seconds - enc_s0, 4),
                       "decode_calls": sum(r.get("decode_calls", 0) for r in records),
                       "decode_reused": hits,
                       "decode_s": round(sum(r.get("decode_s", 0.0) for r in records), 4),
                       "total_s": round(time.perf_counter() - t_case, 4),
                       "device": str(engine.model.device)})
    return records


def _case_engine(model_or_engine, image_kji, label_kji):
    """The case's engine: the one given (checked against the arrays) or a new one (axis 0)."""
    from RadSAMLib.engine import SliceEngine
    if isinstance(model_or_engine, SliceEngine):
        engine = model_or_engine
        if engine.axis != 0 or tuple(engine.volume.shape) != tuple(label_kji.shape):
            raise RadSAMError("the engine must run on axis 0 of a volume shaped like the label array")
    else:
        engine = SliceEngine(model_or_engine, np.asarray(image_kji, np.float32), axis=0)
    if tuple(image_kji.shape) != tuple(label_kji.shape):
        raise RadSAMError(f"image {image_kji.shape} and label {label_kji.shape} arrays differ in shape")
    return engine


def _select_objects(label_kji, objects, body, protocol, skip, base, on_object):
    """``(records of the objects skipped, with the reason; targets (value, name, bounds,
    voxels, slices) to run)``; objects named in ``skip`` are left out altogether."""
    records, targets = [], []
    for value, name in objects.items():
        if name in skip:
            continue
        gt, bounds = object_target(label_kji, int(value), body)
        vox = int(gt.sum())
        nsl = 0 if bounds is None else int(len(object_slices(gt[bounds[0]:bounds[1] + 1])))
        reason = None
        if int((label_kji == int(value)).sum()) == 0:
            reason = "absent"
        elif bounds is None:
            reason = "no body slices"
        elif vox < protocol.min_voxels:
            reason = f"{vox} voxels < {protocol.min_voxels}"
        elif nsl < protocol.min_slices:
            reason = f"{nsl} slices < {protocol.min_slices}"
        if reason:
            records.append({**base, "object": name, "value": int(value), "skipped": reason})
            if on_object:
                on_object(records[-1:])
        else:
            targets.append((int(value), name, bounds, vox, nsl))
    return records, targets
