"""Prompts from markups: world RAS positions -> one slice's pixel coordinates.

A box comes from a markups ROI (its 8 corners, so a rotated ROI works) or from any
markups node with two control points (opposite corners). Points come from point lists,
positive and negative. Positions are read in world RAS (the markups' own transforms
applied) and mapped through the volume's parent transform and IJK-to-RAS matrix; the
slice is the one nearest to the prompt along the propagation axis. Prompts use slice
pixel coordinates ``(x, y) = (column, row)`` (see ``geometry.split_kji``).
"""
from __future__ import annotations

import itertools

import numpy as np

from .errors import user_error
from .geometry import split_kji, volume_shape, world_to_kji


def control_points_world(node) -> np.ndarray:
    """Defined control points of a markups node in world RAS, ``(n, 3)``."""
    pts = []
    for n in range(node.GetNumberOfControlPoints()):
        if hasattr(node, "GetNthControlPointPositionStatus") and \
                node.GetNthControlPointPositionStatus(n) != node.PositionDefined:
            continue  # a point still being placed
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(n, p)
        pts.append(p)
    return np.array(pts, dtype=np.float64).reshape(-1, 3)


def box_corners_world(node) -> np.ndarray:
    """World RAS corners of a box markup: an ROI's 8 corners or two control points."""
    if node.IsA("vtkMRMLMarkupsROINode") and node.GetNumberOfControlPoints() > 0:
        b = [0.0] * 6
        node.GetObjectBounds(b)
        m = node.GetObjectToWorldMatrix()
        to_world = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        corners = np.array([[x, y, z, 1.0] for x, y, z in itertools.product(b[0:2], b[2:4], b[4:6])])
        return (to_world @ corners.T).T[:, :3]
    pts = control_points_world(node)
    if len(pts) != 2:
        raise user_error(f"box '{node.GetName()}' needs two corner points (has {len(pts)})", "PromptError")
    return pts


def _check_slice(idx: float, axis: int, shape, what: str) -> int:
    n = shape[axis]
    s = int(np.floor(idx + 0.5))
    if not 0 <= s < n:
        raise user_error(f"{what} is outside the volume: it lies at slice {s}, the volume has slices 0..{n - 1}",
                         "PromptError")
    return s


def box_prompt(volume_node, node, axis: int):
    """``(slice index, (x0, y0, x1, y1))`` of a box markup. The box is clipped to the
    slice when it overlaps it; a box entirely outside is a user error."""
    shape = volume_shape(volume_node)
    s, x, y = split_kji(world_to_kji(volume_node, box_corners_world(node)), axis)
    idx = _check_slice(float(np.mean(s)), axis, shape, f"box '{node.GetName()}'")
    rows, cols = [shape[a] for a in range(3) if a != axis]
    x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
    if x1 < 0 or y1 < 0 or x0 > cols - 1 or y0 > rows - 1:
        raise user_error(f"box '{node.GetName()}' is outside the volume on slice {idx}", "PromptError")
    box = (max(0.0, x0), max(0.0, y0), min(cols - 1.0, x1), min(rows - 1.0, y1))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise user_error(f"box '{node.GetName()}' is flat across slice {idx}: draw it in a view across "
                         "the propagation axis", "PromptError")
    return idx, tuple(float(v) for v in box)


def point_prompts(volume_node, axis: int, positive=None, negative=None):
    """``[(slice index, (x, y), label)]`` for the points of the positive and negative
    point lists (label 1 / 0). A point outside the volume is a user error."""
    shape = volume_shape(volume_node)
    rows, cols = [shape[a] for a in range(3) if a != axis]
    out = []
    for node, label in ((positive, 1), (negative, 0)):
        if node is None:
            continue
        pts = control_points_world(node)
        if not len(pts):
            continue
        s, x, y = split_kji(world_to_kji(volume_node, pts), axis)
        for n in range(len(pts)):
            what = f"point {n + 1} of '{node.GetName()}'"
            idx = _check_slice(float(s[n]), axis, shape, what)
            if not (-0.5 <= x[n] <= cols - 0.5 and -0.5 <= y[n] <= rows - 0.5):
                raise user_error(f"{what} is outside the volume on slice {idx}", "PromptError")
            out.append((idx, (float(np.clip(x[n], 0, cols - 1)), float(np.clip(y[n], 0, rows - 1))), label))
    return out


def initial_prompt(volume_node, axis: int, box_node=None, positive=None, negative=None, mask=None,
                   mask_slice=None):
    """The first prompt of a segmentation: ``(slice index, SlicePrompt)``.

    Box, points and mask must all lie on one slice. ``mask`` is a bool ``(rows, cols)``
    slice mask (the segment's current mask on ``mask_slice``) used as a mask prompt.
    """
    from RadSAMLib.prompts import SlicePrompt

    slices, box, points, labels = set(), None, [], []
    if box_node is not None and box_node.GetNumberOfControlPoints() > 0:
        idx, box = box_prompt(volume_node, box_node, axis)
        slices.add(idx)
    for idx, p, lab in point_prompts(volume_node, axis, positive, negative):
        slices.add(idx)
        points.append(p)
        labels.append(lab)
    if mask is not None:
        slices.add(int(mask_slice))
    if not slices:
        raise user_error("no prompt: draw a box, place a point, or use the segment's mask on a slice",
                         "PromptError")
    if len(slices) > 1:
        raise user_error(f"the prompts lie on different slices ({', '.join(map(str, sorted(slices)))}); "
                         "put the box, points and mask on one slice", "PromptError")
    return slices.pop(), SlicePrompt(box=box, points=points, labels=labels, mask=mask)
