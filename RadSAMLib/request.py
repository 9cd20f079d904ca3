"""One model-free check of a segmentation request, shared by the command line and ``Session``.

Everything a user gives (slice indices, bounds, boxes, points, labels, edits, a prompts
JSON file) is checked here against the volume's shape before any model loads, and every
problem is a :class:`RadSAMError` whose one-line message names the field and the value.
No torch import: the Slicer module and ``radsam --help`` use this before torch exists.

Coordinates: volumes are ``(k, j, i)``; ``axis`` is the propagation axis; prompts are
``(x, y)`` = (column, row) of a slice across that axis, in pixel indices.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BoundsError, PromptError, RadSAMError
from .prompts import SlicePrompt
from .slices import slice_index

# Keys of a prompts file and of its per-slice and per-edit objects; anything else is a
# typo that would silently drop the user's prompt ("point" for "points").
TOP_KEYS = ("slice", "box", "points", "labels", "bounds", "edits", "slices")
SLICE_KEYS = ("box", "points", "labels")
EDIT_KEYS = ("slice", "point", "positive")
# A slice-level request ("slices") replaces these: mixing the two has no meaning.
VOLUME_KEYS = ("slice", "box", "points", "labels", "bounds")


# -- numbers -----------------------------------------------------------------------------
def _fmt(value) -> str:
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)


def as_int(value, what: str) -> int:
    """``value`` as an int if it is an integral number (not a bool, not 24.7), else an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise RadSAMError(f"{what} must be an integer, got {_fmt(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RadSAMError(f"{what} must be an integer, got {_fmt(value)}")
    return int(value)


def as_number(value, what: str) -> float:
    """``value`` as a finite float (NaN and infinities name themselves), else an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise RadSAMError(f"{what} must be a number, got {_fmt(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise RadSAMError(f"{what} must be a finite number, got {v}")
    return v


def as_numbers(value, n: int, what: str, form: str) -> tuple:
    """A list/tuple of exactly ``n`` finite numbers, else an error showing ``form``."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) != n:
        raise RadSAMError(f"{what} must be {form}, got {_fmt(value)}")
    return tuple(as_number(v, what) for v in value)


# -- geometry checks (shared with Session) -----------------------------------------------
def check_slice_index(idx, num_slices: int, axis: int, what: str = "slice") -> int:
    """``idx`` as an int if it is a slice of the volume along ``axis``, else an error."""
    k = as_int(idx, what)
    if not 0 <= k < num_slices:
        raise BoundsError(f"{what} {k} is outside the volume (0..{num_slices - 1} along axis {axis})")
    return k


def check_bounds(bounds, num_slices: int, start: int | None = None):
    """Validate inclusive ``(bottom, top)`` slice bounds; ``None`` means unbounded."""
    if bounds is None:
        return None
    if isinstance(bounds, (str, bytes, dict)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise BoundsError(f"bounds must be two slice indices [bottom, top], got {_fmt(bounds)}")
    lo, hi = (as_int(b, "bounds") for b in bounds)
    if lo > hi:
        raise BoundsError(f"bounds are reversed: bottom slice {lo} is above top slice {hi}")
    if lo < 0 or hi >= num_slices:
        raise BoundsError(f"bounds {lo}..{hi} are outside the volume (slices 0..{num_slices - 1})")
    if start is not None and not lo <= start <= hi:
        raise BoundsError(f"prompt slice {start} is outside the bounds {lo}..{hi}")
    return (lo, hi)


def _geometry(shape, axis: int):
    if len(shape) != 3:
        raise RadSAMError(f"volume is {len(shape)}D; RadSAM segments 3D volumes")
    if axis not in (0, 1, 2):
        raise BoundsError(f"propagation axis must be 0, 1 or 2, got {axis}")
    return shape[axis], tuple(s for a, s in enumerate(shape) if a != axis)


def check_first_prompt(prompt: SlicePrompt, slice_shape, where: str) -> SlicePrompt:
    """A prompt that starts a segmentation: valid on the slice and saying where the object
    IS (a box, a mask or a positive point). Negative points only remove: alone, the model
    answers them with an arbitrary blob."""
    prompt.validate(slice_shape, where)
    has_mask = prompt.mask is not None and bool(prompt.mask.any())
    if prompt.box is None and not has_mask and 1 not in prompt.labels:
        raise PromptError(f"the prompt on {where} has only negative points: add a box, a mask or a positive point "
                          "(negative points only remove)")
    return prompt


def check_segment(shape, axis: int, slice_idx, prompt: SlicePrompt, bounds=None):
    """Volume-level request on a ``shape`` (k, j, i) volume -> ``(slice, bounds)``."""
    n, slice_shape = _geometry(shape, axis)
    idx = check_slice_index(slice_idx, n, axis, "prompt slice")
    bounds = check_bounds(bounds, n, idx)
    check_first_prompt(prompt, slice_shape, f"slice {idx}")
    return idx, bounds


def check_slices(shape, axis: int, prompts: dict) -> dict:
    """Slice-level request ``{slice: SlicePrompt}`` -> the same with int keys, checked."""
    n, slice_shape = _geometry(shape, axis)
    if not prompts:
        raise PromptError("slice-level prompting needs at least one slice prompt")
    out = {}
    for key, p in prompts.items():
        k = check_slice_index(key, n, axis, "prompt slice")
        if k in out:
            raise PromptError(f"prompt slice {k} is given twice")
        out[k] = check_first_prompt(p, slice_shape, f"slice {k}")
    return out


def check_edit(shape, axis: int, slice_idx, point, bounds=None):
    """A correction click -> ``(slice, (x, y))``: on the volume, inside ``bounds`` (the
    range the segmentation covers) and on the slice."""
    n, (rows, cols) = _geometry(shape, axis)
    idx = check_slice_index(slice_idx, n, axis, "edit slice")
    if bounds is not None and not bounds[0] <= idx <= bounds[1]:
        raise BoundsError(f"edit slice {idx} is outside the bounds {bounds[0]}..{bounds[1]}")
    x, y = as_numbers(point, 2, f"edit point on slice {idx}", "[x, y]")
    if not (0 <= x <= cols - 1 and 0 <= y <= rows - 1):
        raise PromptError(f"edit point ({x:g}, {y:g}) is outside the image on slice {idx} "
                          f"(x in 0..{cols - 1}, y in 0..{rows - 1})")
    return idx, (x, y)


# -- a whole request ---------------------------------------------------------------------
@dataclass
class Edit:
    slice: int
    point: tuple            # (x, y)
    positive: bool = True


@dataclass
class Request:
    """A checked request: volume-level (``slice``, ``prompt``, ``bounds``) or slice-level
    (``slices``), then ``edits`` in order."""

    slice: int | None = None
    prompt: SlicePrompt | None = None
    bounds: tuple | None = None
    slices: dict | None = None
    edits: list = field(default_factory=list)

    def interactions(self, session):
        """The request's interactions on ``session`` in order, as ``(label, Interaction)``:
        the prompt (or the slice prompts), then each edit. Each one is built (and checked
        against the session) only once the caller has run the one before."""
        if self.slices is not None:
            yield "slice-level", session.segment_slices_iter(self.slices)
        else:
            yield "propagation", session.segment_iter(self.slice, self.prompt, bounds=self.bounds)
        for e in self.edits:
            yield f"edit slice {e.slice}", session.edit_iter(e.slice, e.point, e.positive)


def check_request(spec: dict, shape, axis: int = 0, mask_volume=None) -> Request:
    """Check a request ``spec`` (the prompts-file schema, see :func:`parse_prompts`) against
    a ``shape`` (k, j, i) volume. ``mask_volume``: a bool ``(k, j, i)`` mask whose slice
    ``spec["slice"]`` (default: its largest) is the mask prompt."""
    spec = check_spec(spec, "prompts")
    n, _ = _geometry(shape, axis)
    if spec.get("slices") is not None:
        if mask_volume is not None:
            raise PromptError("a mask prompt cannot be combined with slice-level prompts (\"slices\")")
        slices = check_slices(shape, axis, {k: _slice_prompt(v) for k, v in spec["slices"].items()})
        req = Request(slices=slices)
        lo, hi = min(slices), max(slices)
    else:
        mask = None
        if mask_volume is not None:
            if not mask_volume.any():
                raise PromptError("the mask prompt is empty")
            if "slice" not in spec:  # the mask's largest slice is the natural prompt slice
                areas = mask_volume.sum(axis=tuple(a for a in range(3) if a != axis))
                spec = dict(spec, slice=int(areas.argmax()))
        if "slice" not in spec:
            raise PromptError("give the prompt slice: --slice K (or \"slice\" in the prompts file)")
        if mask_volume is not None:
            idx = check_slice_index(spec["slice"], n, axis, "prompt slice")
            mask = mask_volume[slice_index(axis, idx)]
            if not mask.any():
                raise PromptError(f"the mask prompt is empty on prompt slice {idx}")
        prompt = _slice_prompt(spec, mask)
        idx, bounds = check_segment(shape, axis, spec["slice"], prompt, spec.get("bounds"))
        req = Request(slice=idx, prompt=prompt, bounds=bounds)
        lo, hi = bounds or (0, n - 1)
    for e in spec.get("edits", []):
        k, xy = check_edit(shape, axis, e["slice"], e["point"], (lo, hi))
        req.edits.append(Edit(k, xy, e.get("positive", True)))
    return req


def _slice_prompt(d: dict, mask=None) -> SlicePrompt:
    pts = [tuple(p) for p in d.get("points", [])]
    labels = list(d.get("labels", [1] * len(pts)))
    return SlicePrompt(box=d.get("box"), points=pts, labels=labels, mask=mask)


# -- the prompts file schema -------------------------------------------------------------
def check_spec(spec, where: str = "prompts") -> dict:
    """Check a request dict against the prompts-file schema; return it with tuples of floats
    for boxes and points and ints for slices. Unknown keys and wrong types are errors."""
    if not isinstance(spec, dict):
        raise RadSAMError(f"{where} must be a JSON object {{\"slice\": ..., \"box\": ...}}, got {type(spec).__name__}")
    _no_unknown(spec, TOP_KEYS, where)
    out = _check_prompt_fields(spec, where)
    if "slice" in spec:
        out["slice"] = as_int(spec["slice"], f"{where}: \"slice\"")
    if spec.get("bounds") is not None:
        b = spec["bounds"]
        if not isinstance(b, (list, tuple)) or len(b) != 2:
            raise RadSAMError(f"{where}: \"bounds\" must be two slice indices [bottom, top], got {_fmt(b)}")
        out["bounds"] = tuple(as_int(v, f"{where}: \"bounds\"") for v in b)
    elif "bounds" in out:
        del out["bounds"]
    if "edits" in spec:
        edits = spec["edits"]
        if not isinstance(edits, (list, tuple)):
            raise RadSAMError(f"{where}: \"edits\" must be a list of {{\"slice\", \"point\", \"positive\"}} objects, "
                              f"got {_fmt(edits)}")
        out["edits"] = [_check_edit_fields(e, f"{where}: edits[{n}]") for n, e in enumerate(edits)]
    if "slices" in spec:
        out["slices"] = _check_slices_fields(spec["slices"], where)
        mixed = [k for k in VOLUME_KEYS if k in spec]
        if mixed:
            raise RadSAMError(f"{where}: \"slices\" (slice-level prompts) cannot be combined with "
                              f"{', '.join(repr(k) for k in mixed)}")
    return out


def _no_unknown(d: dict, allowed, where: str):
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise RadSAMError(f"{where}: unknown key {_fmt(unknown[0])} (allowed: {', '.join(allowed)})")


def _check_prompt_fields(d: dict, where: str) -> dict:
    out = dict(d)
    if d.get("box") is not None:
        out["box"] = as_numbers(d["box"], 4, f"{where}: \"box\"", "4 numbers [x0, y0, x1, y1]")
    elif "box" in d:
        del out["box"]
    if "points" in d:
        pts = d["points"]
        if not isinstance(pts, (list, tuple)):
            raise RadSAMError(f"{where}: \"points\" must be a list of [x, y] pairs, got {_fmt(pts)}")
        out["points"] = [as_numbers(p, 2, f"{where}: \"points\"[{n}]", "[x, y]") for n, p in enumerate(pts)]
    if "labels" in d:
        labs = d["labels"]
        if "points" not in d:
            raise RadSAMError(f"{where}: \"labels\" given without \"points\"")
        if not isinstance(labs, (list, tuple)):
            raise RadSAMError(f"{where}: \"labels\" must be a list of 1 (positive) / 0 (negative), got {_fmt(labs)}")
        if len(labs) != len(out["points"]):
            raise RadSAMError(f"{where}: {len(out['points'])} points but {len(labs)} labels")
        for n, v in enumerate(labs):
            if isinstance(v, bool) or v not in (0, 1):
                raise RadSAMError(f"{where}: \"labels\"[{n}] must be 1 (positive) or 0 (negative), got {_fmt(v)}")
        out["labels"] = [int(v) for v in labs]
    return out


def _check_edit_fields(e, where: str) -> dict:
    if not isinstance(e, dict):
        raise RadSAMError(f"{where} must be an object {{\"slice\": K, \"point\": [x, y], \"positive\": true}}, "
                          f"got {_fmt(e)}")
    _no_unknown(e, EDIT_KEYS, where)
    for key in ("slice", "point"):
        if key not in e:
            raise RadSAMError(f"{where} needs \"{key}\"")
    positive = e.get("positive", True)
    if not isinstance(positive, bool):
        raise RadSAMError(f"{where}: \"positive\" must be true or false, got {_fmt(positive)}")
    return {"slice": as_int(e["slice"], f"{where}: \"slice\""),
            "point": as_numbers(e["point"], 2, f"{where}: \"point\"", "[x, y]"),
            "positive": positive}


def _check_slices_fields(slices, where: str) -> dict:
    if not isinstance(slices, dict) or not slices:
        raise RadSAMError(f"{where}: \"slices\" must be a non-empty object {{\"K\": {{\"box\": ...}}}}, got {_fmt(slices)}")
    out = {}
    for key, v in slices.items():
        try:
            k = key if isinstance(key, int) and not isinstance(key, bool) else int(key, 10)
        except (TypeError, ValueError):
            raise RadSAMError(f"{where}: \"slices\" key {_fmt(key)} is not a slice index") from None
        at = f"{where}: slices[{_fmt(key)}]"
        if not isinstance(v, dict):
            raise RadSAMError(f"{at} must be an object {{\"box\": ..., \"points\": ...}}, got {_fmt(v)}")
        _no_unknown(v, SLICE_KEYS, at)
        if k in out:
            raise RadSAMError(f"{at}: slice {k} is given twice")
        out[k] = _check_prompt_fields(v, at)
    return out


def parse_prompts(path) -> dict:
    """Read and check a prompts JSON file (schema: see README, checked by :func:`check_spec`)."""
    path = Path(path)
    name = f"prompts file {path}"
    if not path.exists():
        raise RadSAMError(f"{name} not found")
    if path.is_dir():
        raise RadSAMError(f"{name} is a folder; give a .json file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RadSAMError(f"{name} is not a UTF-8 text file (JSON expected)") from None
    except OSError as e:
        raise RadSAMError(f"cannot read {name}: {e.strerror}") from None

    def no_constant(c):
        raise RadSAMError(f"{name}: {c} is not a valid number")

    def no_duplicates(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise RadSAMError(f"{name}: key {_fmt(k)} is given twice")
            d[k] = v
        return d

    try:
        spec = json.loads(text, parse_constant=no_constant, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise RadSAMError(f"{name} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise RadSAMError(f"{name} is nested too deeply") from None
    return check_spec(spec, name)
