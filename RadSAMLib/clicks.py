"""How a SAM-style model answers clicks: point-only prompts and correction clicks.

Pure functions over a :class:`~RadSAMLib.engine.SliceEngine` (or anything with its
``predict(idx, prompt) -> SliceResult`` and ``frame.scale``; its ``predict_many`` is used
where present); the session calls them, so
the rules live here, in one place, and a :class:`ClickConfig` names which rules a session
uses (the benchmark runs several side by side).

* Point-only prompt (:func:`predict_points`): SAM's answer to an ambiguous prompt is its
  multimask output, chosen by predicted IoU; then the chosen mask is refined by asking
  again with its box (grown by ``margin`` model-frame pixels) and the mask itself plus the
  points, as SAM's predictor users do. LiteMedSAM was trained on boxes: a point alone gives
  a few pixels, the box of those pixels gives much more (docs/benchmark/clicks.md).
* Correction click on a slice that has a mask (:func:`edit_slice`): the model is asked
  with the slice's current mask (as the strategy turns it into a prompt, and as a mask
  prompt) plus every click on the slice. Rule ``region``: a positive click adds the
  connected region of the answer's additions that holds the click, a negative one removes
  the connected region of the answer's removals that holds it; nothing else changes.
  Where no answer covers the click, a disk of ``fallback`` model-frame pixels around it is
  added or removed: a click always changes its spot (else a user clicking the same missed
  spot sees nothing happen, again and again). The change is bounded by the click's
  distance to the mask's edge (``reach``): a click d pixels from the edge corrects an error
  about 2d wide, so the region is cut to ``reach`` x d around the click and the disk to
  radius d. Unbounded, a click one pixel outside an organ added a 4-model-pixel disk or
  the model's whole addition, and most clicks that lowered Dice did so on their own slice
  (docs/benchmark/clicks.md, session 9); preset ``unbounded`` keeps that rule to be
  measured against. Rule ``legacy``: the rule before issue 12 (least change, a 0.5 Dice
  gate, a radius of half the object's diameter).

Coordinates: masks are ``(rows, cols)`` bool; points ``(x=col, y=row)`` slice pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RadSAMError
from .metrics import dice
from .prompts import SlicePrompt, box_of_mask

POINT_RULES = ("primary", "best", "multimask")
EDIT_RULES = ("legacy", "region")


@dataclass(frozen=True)
class ClickConfig:
    """Which rules a session uses for clicks (see the module doc)."""

    name: str = "default"
    point_rule: str = "best"    # primary | best (highest predicted IoU of all 4) | multimask (SAM: of 1..3 for one point)
    refine: bool = True         # re-ask a point-only answer with its box + mask + the points
    margin: float = 5.0         # model-frame pixels around the refine box
    edit: str = "region"        # region | legacy
    fallback: float = 4.0       # model-frame radius of the disk a click sets where no answer covers it (0: off)
    reach: float = 3.0          # region rule: a click's change stays within reach x its distance to the mask's edge (0: off)

    def __post_init__(self):
        if self.point_rule not in POINT_RULES:
            raise RadSAMError(f"unknown point rule '{self.point_rule}' (choose {', '.join(POINT_RULES)})")
        if self.edit not in EDIT_RULES:
            raise RadSAMError(f"unknown edit rule '{self.edit}' (choose {', '.join(EDIT_RULES)})")

    @classmethod
    def parse(cls, spec) -> "ClickConfig":
        """``None`` -> the default; a ClickConfig as is; else a preset name."""
        if spec is None:
            return PRESETS["default"]
        if isinstance(spec, ClickConfig):
            return spec
        try:
            return PRESETS[str(spec)]
        except KeyError:
            raise RadSAMError(f"unknown click inference '{spec}' (choose {', '.join(PRESETS)})") from None


PRESETS = {
    "default": ClickConfig(),
    "unbounded": ClickConfig("unbounded", reach=0.0),
    "legacy": ClickConfig("legacy", point_rule="primary", refine=False, edit="legacy", fallback=0.0, reach=0.0),
}


def is_point_only(prompt: SlicePrompt) -> bool:
    return bool(prompt.points) and prompt.box is None and (prompt.mask is None or not prompt.mask.any())


def choose_mask(scores, n_points: int, rule: str) -> int:
    """Index (0..3) of the mask to keep from one answer's predicted IoUs ``scores (4,)``.

    ``multimask`` is SAM's rule: one point is ambiguous, so the best of the three
    alternatives (1..3) wins; with several points the primary (0). ``best``: the highest
    predicted IoU of all four (the primary competes, as in SAM 2's dynamic multimask)."""
    scores = np.asarray(scores, dtype=np.float64)
    if rule == "primary" or (rule == "multimask" and n_points > 1):
        return 0
    if rule == "multimask":
        return 1 + int(np.argmax(scores[1:]))
    return int(np.argmax(scores))


def reorder(result, n: int):
    """``result`` with mask ``n`` first (the primary the session keeps)."""
    from .engine import SliceResult
    if n == 0:
        return result
    order = [n] + [i for i in range(len(result.scores)) if i != n]
    return SliceResult(masks=result.masks[order], scores=result.scores[order], logits=result.logits)


def predict_points(engine, idx: int, prompt: SlicePrompt, cfg: ClickConfig):
    """Answer a point-only prompt on slice ``idx``: the multimask choice, then the refine."""
    r = engine.predict(idx, prompt)
    r = reorder(r, choose_mask(r.scores, len(prompt.points), cfg.point_rule))
    if not cfg.refine or not r.mask.any():
        return r
    pos = [p for p, lab in zip(prompt.points, prompt.labels) if lab == 1]
    region = with_pixels(r.mask, pos, True)
    box = box_of_mask(region, margin=cfg.margin / engine.frame.scale)
    return engine.predict(idx, SlicePrompt(box=box, points=list(prompt.points), labels=list(prompt.labels),
                                           mask=r.mask))


def predict_prompt(engine, idx: int, prompt: SlicePrompt, cfg: ClickConfig):
    """A user's prompt on one slice: point-only prompts by :func:`predict_points`."""
    if is_point_only(prompt):
        return predict_points(engine, idx, prompt, cfg)
    return engine.predict(idx, prompt)


def predict_each(engine, idx: int, prompts) -> list:
    """One answer per prompt; an engine that can ask the decoder once for several
    (``SliceEngine.predict_many``) does."""
    many = getattr(engine, "predict_many", None)
    return many(idx, prompts) if many is not None else [engine.predict(idx, p) for p in prompts]


def with_pixels(mask: np.ndarray, points, value: bool) -> np.ndarray:
    out = mask.copy()
    for x, y in points:
        out[int(round(y)), int(round(x))] = value
    return out


# -- correction clicks ----------------------------------------------------------------------
def edit_slice(engine, strategy, idx: int, anchor: SlicePrompt, prev: np.ndarray, cfg: ClickConfig):
    """Re-run a corrected slice: its current mask ``prev`` plus every click of ``anchor``
    (and its box, if the user gave one there). Returns the slice's new SliceResult."""
    pts, labs = anchor.points, anchor.labels
    if anchor.box is not None:  # the user's own box stays the box of that slice
        prompts = [SlicePrompt(box=anchor.box, points=pts, labels=labs)]
    elif not prev.any():
        if cfg.edit == "legacy":
            prompts = [SlicePrompt(points=pts, labels=labs)]
        else:   # nothing to correct yet: the clicks are a point prompt
            return predict_points(engine, idx, SlicePrompt(points=list(pts), labels=list(labs)), cfg)
    else:
        prompts = [strategy.prompt_from_mask(prev, engine.frame.scale, pts, labs)]
    if prev.any():
        prompts.append(SlicePrompt(box=anchor.box, points=pts, labels=labs, mask=prev))
    results = predict_each(engine, idx, prompts)
    xy = np.round(np.asarray(pts)).astype(int)
    if cfg.edit == "legacy":
        return _legacy_edit(results, prev, xy, labs)
    # Of the answers that agree with every click, the one the model scores highest wins,
    # unless taking it would remove more than half of the current mask: one negative click
    # is about a leak, not about the object (the base model given a click on a leak may
    # answer with another structure). With none, the disk fallback below still acts.
    def key(m, score):
        kept = (prev & region_edit(prev, m, xy, labs, -1.0)).sum() / max(1, prev.sum())
        return (_honours(m, xy, labs) and kept >= 0.5, score)
    out = reorder(*_best_mask(results, key))
    return _with_primary(out, region_edit(prev, out.mask, xy, labs, cfg.fallback / engine.frame.scale, cfg.reach))


def _honours(mask: np.ndarray, xy, labels) -> bool:
    """Every click's pixel says what the click says (in for positive, out for negative)."""
    return all(bool(mask[y, x]) == bool(lab) for (x, y), lab in zip(xy, labels))


def _best_mask(results, key):
    """``(result, n)``: of the 4 masks of every result, the one with the highest
    ``key(mask, predicted IoU)``; the first on a tie."""
    best, best_key = None, None
    for r in results:
        for n, m in enumerate(r.masks):
            k = key(m, float(r.scores[n]))
            if best_key is None or k > best_key:
                best, best_key = (r, n), k
    return best


def _with_primary(result, mask: np.ndarray):
    """``result`` with its primary mask replaced by ``mask``."""
    masks = result.masks.copy()
    masks[0] = mask
    return type(result)(masks=masks, scores=result.scores, logits=result.logits)


def region_edit(prev: np.ndarray, new: np.ndarray, clicks, labels, fallback: float, reach: float = 0.0) -> np.ndarray:
    """``prev`` changed by the model's answer ``new`` only where the clicks ask: a positive
    click adds the 8-connected region of ``new & ~prev`` that holds it, a negative click
    removes the region of ``prev & ~new`` that holds it. With ``reach`` > 0 that region is
    first cut to a disk around the click of ``reach`` times the click's distance to the
    mask's edge (a click near the edge is a small correction; one far from the mask, or
    on an empty slice, is not bounded). A click whose pixel still disagrees afterwards
    sets a disk of radius ``fallback`` pixels around it (0: just the pixel; negative:
    nothing). ``clicks``: ``(N, 2)`` int ``(x, y)``; ``labels``: 1 positive, 0 negative."""
    from scipy import ndimage
    out = prev.copy()
    eight = np.ones((3, 3), bool)
    rows, cols = np.ogrid[:prev.shape[0], :prev.shape[1]]
    bounded = reach > 0 and prev.any() and not prev.all()
    maps = {}

    def depth(sign, x, y):
        """A positive click's distance to the mask, a negative one's to the mask's outside
        (one transform per sign, only for the signs clicked)."""
        if sign not in maps:
            maps[sign] = ndimage.distance_transform_edt(~prev if sign else prev)
        return maps[sign][y, x]
    for diff, sign in ((new & ~prev, 1), (prev & ~new, 0)):
        seeds = [(x, y) for (x, y), lab in zip(clicks, labels) if lab == sign and diff[y, x]]
        if not seeds:
            continue
        if bounded:
            near = np.zeros_like(diff)
            for x, y in seeds:
                near |= (cols - x) ** 2 + (rows - y) ** 2 <= (reach * depth(sign, x, y)) ** 2
            diff = diff & near
        comps, _ = ndimage.label(diff, structure=eight)
        keep = np.isin(comps, [comps[y, x] for x, y in seeds])
        if sign:
            out |= keep
        else:
            out &= ~keep
    for (x, y), lab in zip(clicks, labels):
        if fallback >= 0 and bool(out[y, x]) != bool(lab):
            # bounded: a click d pixels from the edge sits in the middle of an error ~2d wide,
            # which a disk of radius d fills; a larger disk would overshoot it
            r = min(fallback, max(1.0, depth(1 if lab else 0, x, y))) if bounded else fallback
            disk = (cols - x) ** 2 + (rows - y) ** 2 <= r ** 2
            if lab:
                out |= disk
            else:
                out &= ~disk
    return out


def _legacy_edit(results, prev, xy, labs):
    """The edit rule before issue 12: of the 8 masks, the one that honours every click and
    changes the current mask least wins (a mask with Dice < 0.5 to the current one counts
    as a jump to another structure), then :func:`local_edit`."""
    def key(m, score):
        near = dice(m, prev) if prev.any() else 0.0
        return (_honours(m, xy, labs) and (near >= 0.5 or not prev.any()), near, score)
    out = reorder(*_best_mask(results, key))
    if not prev.any():
        return out
    return _with_primary(out, local_edit(prev, out.mask, xy, labs))


def local_edit(prev: np.ndarray, new: np.ndarray, clicks: np.ndarray, labels) -> np.ndarray:
    """The legacy locality rule: near a positive click ``new`` may only add, near a
    negative click only remove, nothing else changes; near: within half the object's
    equivalent diameter (at least 3 pixels). The clicked pixel always holds."""
    radius = max(3.0, 0.5 * np.sqrt(4.0 * prev.sum() / np.pi))
    rows, cols = np.ogrid[:prev.shape[0], :prev.shape[1]]
    out = prev.copy()
    for (x, y), lab in zip(clicks, labels):
        near = (cols - x) ** 2 + (rows - y) ** 2 <= radius ** 2
        if lab:
            out |= near & new
        else:
            out &= ~(near & ~new)
    for (x, y), lab in zip(clicks, labels):
        out[int(y), int(x)] = bool(lab)
    return out
