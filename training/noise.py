"""Prompts generated from a ground-truth mask, in slice pixel coordinates ``(x=col, y=row)``.

The noisy mask follows the RadSAM paper: the ground truth (of this slice, or of a
neighbouring slice, which is what propagation feeds at inference) rotated by up to
``rot_deg``, scaled by up to ``scale``, translated by up to ``shift`` of the object's
extent, and eroded or dilated by up to ``morph`` pixel steps. It stays a *binary* mask on
the slice grid; the model-frame encoding is done by the same code as inference
(``SliceFrame.mask_to_model`` + ``mask_prompt_logits``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from RadSAMLib.prompts import box_of_mask


@dataclass(frozen=True)
class NoiseSpec:
    rot_deg: float = 5.0     # max |rotation| in degrees, about the object's centre
    scale: float = 0.10      # max |relative scaling|
    shift: float = 0.15      # max |translation| as a fraction of the object's box side
    morph: int = 5           # max erosion (-) / dilation (+) steps, slice pixels


def noisy_mask(gt: np.ndarray, rng: np.random.Generator, spec: NoiseSpec = NoiseSpec()) -> np.ndarray:
    """A perturbed copy of the bool mask ``gt`` ``(rows, cols)``; never empty if ``gt`` is not."""
    ys, xs = np.nonzero(gt)
    if len(xs) == 0:
        return gt.copy()
    cy, cx = ys.mean(), xs.mean()
    h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
    a = np.deg2rad(rng.uniform(-spec.rot_deg, spec.rot_deg))
    s = 1.0 + rng.uniform(-spec.scale, spec.scale)
    ty, tx = rng.uniform(-spec.shift, spec.shift, 2) * (h, w)
    # output (y, x) -> input: inverse of "scale about the centre, rotate, then translate".
    c, si = np.cos(a), np.sin(a)
    m = np.array([[c, si], [-si, c]]) / s
    centre = np.array([cy, cx])
    offset = centre - m @ (centre + (ty, tx))
    out = ndi.affine_transform(gt.astype(np.float32), m, offset=offset, order=1, mode="constant") > 0.5
    steps = int(rng.integers(-spec.morph, spec.morph + 1))
    if steps > 0:
        out = ndi.binary_dilation(out, iterations=steps)
    elif steps < 0:
        # Erode, but never away: small structures (a cord is ~5 px) keep at least a core.
        for _ in range(-steps):
            e = ndi.binary_erosion(out)
            if e.sum() < 0.25 * out.sum() or not e.any():
                break
            out = e
    return out if out.any() else gt.copy()


def jittered_box(gt: np.ndarray, rng: np.random.Generator, max_px: float, shape=None):
    """Ground-truth box with each side moved out (mostly) or in by up to ``max_px`` pixels."""
    x0, y0, x1, y1 = box_of_mask(gt)
    d = rng.uniform(-0.25, 1.0, 4) * max_px
    rows, cols = shape or gt.shape
    box = (max(0.0, x0 - d[0]), max(0.0, y0 - d[1]), min(cols - 1.0, x1 + d[2]), min(rows - 1.0, y1 + d[3]))
    if box[2] <= box[0] or box[3] <= box[1]:
        return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
    return box


def sample_point(region: np.ndarray, rng: np.random.Generator, interior: bool = True):
    """A pixel ``(x, y)`` of ``region``, preferring its interior (as a user clicks); None if empty."""
    if interior:
        dist = ndi.distance_transform_edt(region)
        if dist.max() >= 2:
            region = dist >= max(1.0, 0.5 * dist.max())
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        return None
    i = rng.integers(len(xs))
    return (float(xs[i]), float(ys[i]))


def correction_point(prev: np.ndarray, gt: np.ndarray, rng: np.random.Generator):
    """The click a user makes to fix ``prev``: positive in the largest missed part, negative
    in the largest false-positive part. Returns ``((x, y), label)`` or None if ``prev == gt``."""
    miss, extra = gt & ~prev, prev & ~gt
    pick_miss = miss.sum() >= extra.sum()
    region = miss if pick_miss else extra
    if not region.any():
        return None
    lab, n = ndi.label(region)
    if n > 1:
        sizes = ndi.sum(region, lab, range(1, n + 1))
        region = lab == (1 + int(np.argmax(sizes)))
    p = sample_point(region, rng)
    return (p, 1 if pick_miss else 0)


def error_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator, deepest_prob: float = 1.0,
                valid: np.ndarray | None = None):
    """The click a simulated user makes to fix ``pred`` (bool ``(rows, cols)``): inside the
    largest connected component of the error ``pred XOR gt`` (within ``valid``), at its
    deepest point (farthest from the component's border, exact distance transform; ties
    broken by ``rng``) with probability ``deepest_prob`` -- the CVPR 2025 interactive
    challenge's user -- else anywhere in its inner half. Positive if the pixel is in
    ``gt``. With no error, a positive click at the deepest point of ``gt``. Returns
    ``((x, y), label)``, or None when there is neither error nor object."""
    err = pred ^ gt
    if valid is not None:
        err &= valid
    if not err.any():
        if not gt.any():
            return None
        err = gt
    lab, n = ndi.label(err)
    if n > 1:
        region = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    else:
        region = lab > 0
    # Padded so that a component touching the slice edge has its border there too.
    dist = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    top = dist.max()
    pick = dist >= top if rng.random() < deepest_prob else dist >= max(1.0, 0.5 * top)
    ys, xs = np.nonzero(pick)
    i = rng.integers(len(xs))
    return ((float(xs[i]), float(ys[i])), int(gt[ys[i], xs[i]]))


def random_box(shape, rng: np.random.Generator, min_frac: float = 0.08, max_frac: float = 0.9):
    """A box anywhere on a ``(rows, cols)`` slice, each side a log-uniform fraction of the
    slice: prompts unrelated to any labelled object (distillation toward the base model)."""
    rows, cols = shape
    w, h = (np.exp(rng.uniform(np.log(min_frac), np.log(max_frac), 2)) * (cols - 1, rows - 1))
    x0, y0 = rng.uniform(0, cols - 1 - w), rng.uniform(0, rows - 1 - h)
    return (float(x0), float(y0), float(x0 + max(w, 1.0)), float(y0 + max(h, 1.0)))
