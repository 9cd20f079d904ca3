"""The simulated user: where it prompts, what it draws, where it clicks corrections.

All functions take a seeded ``numpy.random.Generator`` so a run is reproducible. Volumes
are ``(k, j, i)`` bool arrays (axis 0 is the propagation axis); 2D masks are ``(rows,
cols)`` = ``(j, i)``; boxes and points are slice pixel coordinates ``(x=col, y=row)``.

Choices (documented in ``docs/benchmark/README.md``):

* Box prompt: the object's tight box on that slice, each side moved independently by a
  uniform offset in ``[-a, +a]``, ``a = min(max_px, frac * side length)`` (default 5% of
  the box's width/height, at most 5 slice pixels), rounded to whole pixels, clipped to the
  image, never narrower than 2 pixels. Or (``--box-jitter N``) the CVPR 2025 challenge's
  box: every side widened by the same seeded 0..N pixels per 256 of the slice's side.
* Point prompt: uniform among the object's pixels that are at least half the maximum
  distance from its border (4-connected distance; the "deep inside" region).
* Edit: uniform among the current 3D error voxels (missed -> positive, spurious ->
  negative), optionally restricted to one slice (slice-level editing).
* Challenge click (:func:`challenge_click`): the click model of the CVPR 2025
  interactive-3D challenge: the voxel farthest from the border of the largest
  26-connected 3D error component.
"""
from __future__ import annotations

import numpy as np

from RadSAMLib.prompts import SlicePrompt

PROMPT_SLICES = ("middle", "largest", "random")
PROMPT_KINDS = ("box", "point")


def object_slices(gt: np.ndarray) -> np.ndarray:
    """Indices ``k`` (axis 0) where the ``(k, j, i)`` mask has any voxel."""
    return np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))


def choose_prompt_slice(gt: np.ndarray, how: str = "middle", rng=None) -> int:
    """The slice a user prompts on: ``middle`` of the object's extent (nearest slice that
    holds the object if the middle one is empty), ``largest`` cross-section, or
    ``random`` (uniform over the object's slices, needs ``rng``)."""
    ks = object_slices(gt)
    if len(ks) == 0:
        raise ValueError("empty object")
    if how == "middle":
        mid = (ks[0] + ks[-1]) / 2.0
        return int(ks[np.argmin(np.abs(ks - mid))])
    if how == "largest":
        areas = gt.reshape(gt.shape[0], -1).sum(axis=1)
        return int(np.argmax(areas))
    if how == "random":
        return int(rng.choice(ks))
    raise ValueError(f"unknown prompt slice rule '{how}' (choose {', '.join(PROMPT_SLICES)})")


def jittered_box(mask2d: np.ndarray, rng, frac: float = 0.05, max_px: float = 5.0) -> tuple:
    """Box ``(x0, y0, x1, y1)`` (inclusive pixels) around ``mask2d`` with seeded jitter."""
    ys, xs = np.nonzero(mask2d)
    if len(xs) == 0:
        raise ValueError("empty mask: no box")
    rows, cols = mask2d.shape
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    ax = min(max_px, frac * (x1 - x0 + 1))
    ay = min(max_px, frac * (y1 - y0 + 1))
    dx0, dx1 = rng.uniform(-ax, ax, size=2)
    dy0, dy1 = rng.uniform(-ay, ay, size=2)
    box = [float(np.clip(np.round(x0 + dx0), 0, cols - 1)), float(np.clip(np.round(y0 + dy0), 0, rows - 1)),
           float(np.clip(np.round(x1 + dx1), 0, cols - 1)), float(np.clip(np.round(y1 + dy1), 0, rows - 1))]
    return valid_box(box, mask2d.shape)


def challenge_box(mask2d: np.ndarray, rng, max_shift: int = 5) -> tuple:
    """The CVPR 2025 challenge's box (its ``get_boxes.py``): the tight box around
    ``mask2d``, every side widened by ``int(k * W / 256)`` (x) and ``int(k * H / 256)`` (y)
    pixels for one seeded ``k`` uniform in ``0..max_shift``: up to ``max_shift`` pixels of
    the 256-pixel model frame, whatever the slice size; clipped to the image. It only ever
    widens."""
    ys, xs = np.nonzero(mask2d)
    if len(xs) == 0:
        raise ValueError("empty mask: no box")
    rows, cols = mask2d.shape
    k = int(rng.integers(0, int(max_shift) + 1))
    sx, sy = int(k * cols / 256), int(k * rows / 256)
    box = [float(max(0, xs.min() - sx)), float(max(0, ys.min() - sy)),
           float(min(cols - 1, xs.max() + sx)), float(min(rows - 1, ys.max() + sy))]
    return valid_box(box, mask2d.shape)


def valid_box(box, shape) -> tuple:
    """``box`` ``(x0, y0, x1, y1)`` with ``x0 < x1`` and ``y0 < y1`` (a 1-pixel-wide object
    still gets a box: the side is grown by one pixel, inwards at the image edge)."""
    rows, cols = shape
    box = [float(v) for v in box]
    for lo, hi, n in ((0, 2, cols), (1, 3, rows)):
        if box[hi] <= box[lo]:
            box[lo], box[hi] = min(box[lo], box[hi]), max(box[lo], box[hi])
            if box[hi] < n - 1:
                box[hi] += 1.0
            else:
                box[lo] -= 1.0
    return tuple(box)


def border_distance(mask2d: np.ndarray) -> np.ndarray:
    """4-connected (city-block) distance of each inside pixel to the nearest outside pixel
    (1 on the border; 0 outside; the image edge counts as outside). Repeated erosion, no
    SciPy needed."""
    m = np.asarray(mask2d, bool)
    dist = np.zeros(m.shape, np.int32)
    cur = m.copy()
    d = 0
    while cur.any():
        d += 1
        dist[cur] = d
        p = np.pad(cur, 1, constant_values=False)
        cur = cur & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return dist


def inner_point(mask2d: np.ndarray, rng, inner: float = 0.5) -> tuple:
    """A point ``(x, y)`` uniform among pixels at least ``inner`` x the maximum border
    distance deep inside ``mask2d``."""
    dist = border_distance(mask2d)
    top = dist.max()
    if top == 0:
        raise ValueError("empty mask: no point")
    ys, xs = np.nonzero(dist >= max(1.0, inner * top))
    n = rng.integers(len(xs))
    return (float(xs[n]), float(ys[n]))


def make_prompt(kind: str, mask2d: np.ndarray, rng, box_frac: float = 0.05, box_max_px: float = 5.0,
                inner: float = 0.5, box_jitter: int | None = None) -> SlicePrompt:
    """The simulated user's prompt of ``kind`` (``box`` or ``point``) for ``mask2d``;
    ``box_jitter``: the challenge's widening (:func:`challenge_box`) instead of the
    default jitter."""
    if kind == "box":
        if box_jitter is not None:
            return SlicePrompt(box=challenge_box(mask2d, rng, box_jitter))
        return SlicePrompt(box=jittered_box(mask2d, rng, box_frac, box_max_px))
    if kind == "point":
        return SlicePrompt(points=[inner_point(mask2d, rng, inner)], labels=[1])
    raise ValueError(f"unknown prompt kind '{kind}' (choose {', '.join(PROMPT_KINDS)})")


def sample_edit(pred: np.ndarray, gt: np.ndarray, rng, slice_idx: int | None = None):
    """A correction click uniform among the current errors of ``pred`` vs ``gt``
    (``(k, j, i)`` arrays; or only slice ``slice_idx`` of them).

    Returns ``(k, (x, y), positive)`` (``positive`` where the object was missed, i.e. the
    click adds), or ``None`` when there is no error left.
    """
    p = np.asarray(pred, bool)
    g = np.asarray(gt, bool)
    if slice_idx is not None:
        err = p[slice_idx] != g[slice_idx]
        flat = np.flatnonzero(err)
        if len(flat) == 0:
            return None
        j, i = np.unravel_index(flat[rng.integers(len(flat))], err.shape)
        return int(slice_idx), (float(i), float(j)), bool(g[slice_idx, j, i])
    err = p != g
    flat = np.flatnonzero(err)
    if len(flat) == 0:
        return None
    k, j, i = np.unravel_index(flat[rng.integers(len(flat))], err.shape)
    return int(k), (float(i), float(j)), bool(g[k, j, i])


CHALLENGE_SEED = 42


def challenge_click(pred: np.ndarray, gt: np.ndarray, seed: int = CHALLENGE_SEED):
    """The click of the CVPR 2025 interactive-3D challenge's evaluation, for one object.

    The error voxels of ``pred`` vs ``gt`` (``(k, j, i)`` arrays) are split into
    26-connected components; in the largest one the click goes to the voxel farthest from
    the component's border (exact Euclidean distance transform, voxel units, the
    component's bounding box padded with background so the image edge counts as border),
    uniform among equally deep voxels with a generator seeded ``seed`` on every call
    (deterministic). Voxel units, not millimetres, because the challenge's own script
    measures so: figures stay comparable with its leaderboard.

    Returns ``(k, (x, y), positive)`` (``positive`` where the object was missed), or
    ``None`` when there is no error left. The click is applied on slice ``k``.
    """
    from scipy import ndimage
    err = np.asarray(pred, bool) != np.asarray(gt, bool)
    if not err.any():
        return None
    comps, n = ndimage.label(err, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    biggest = int(np.argmax(sizes))          # ties: the lowest label, i.e. first in raster order
    box = ndimage.find_objects(comps)[biggest - 1]
    crop = np.pad(comps[box] == biggest, 1)  # one background voxel is as good as the 25% pad
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(dist == dist.max())
    k, j, i = deepest[np.random.default_rng(seed).integers(len(deepest))] + [s.start for s in box]
    return int(k), (float(i), float(j)), bool(np.asarray(gt, bool)[k, j, i])
