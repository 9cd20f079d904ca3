"""Benchmark datasets: find the cases of a folder, whatever its layout, and load them.

Layouts (detected in this order; :func:`open_dataset`):

* ``npz``: a folder of ``<case>.npz`` files (arrays ``image`` int16 ``(k, j, i)`` HU,
  ``label`` uint8 ``(k, j, i)``, ``spacing`` float ``(3,)`` in mm, ``(k, j, i)`` order) and a
  ``labels.json`` ``{value: name}``. Needs only numpy (no SimpleITK): the format for
  machines without it. Written by :func:`pack_dataset`.
* ``nnunet``: nnU-Net / AMOS: ``dataset.json`` (label names, v1 ``{"1": "liver"}`` or v2
  ``{"liver": 1}``), ``imagesTr/<case>_0000.nii.gz`` (or ``<case>.nii.gz``) and
  ``labelsTr/<case>.nii.gz``.
* ``totalseg``: TotalSegmentator: one folder per case with ``ct.nii.gz`` and
  ``segmentations/<name>.nii.gz`` (one binary mask per structure). Label values are the
  1-based positions of the structure names in sorted order.
* ``pairs``: image/label file pairs plus a ``labels.json`` (in the folder or its parent),
  as in ``../shared/data``: ``<id>_ct.nii.gz`` + ``<id>_oar.nii.gz`` (label suffixes
  ``seg``, ``oar``, ``label(s)``, ``mask``, ``gt``; image suffixes ``ct``, ``image``,
  ``img``), or a single ``ct.nii.gz`` + ``seg.nii.gz`` (the case is named after the folder).

A :class:`Case` loads lazily: ``case.load(values)`` -> ``(image float32 (k,j,i) HU,
label (k,j,i) int, spacing (3,) mm in (k,j,i) order)``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from RadSAMLib.errors import RadSAMError
from RadSAMLib.files import atomic_write

IMAGE_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
IMAGE_TAGS = ("ct", "image", "img")
LABEL_TAGS = ("seg", "oar", "label", "labels", "mask", "gt")
LAYOUTS = ("npz", "nnunet", "totalseg", "pairs")


@dataclass
class Case:
    name: str
    loader: object = field(repr=False)      # callable(values or None) -> (image, label, spacing)

    def load(self, values=None):
        """``(image float32 (k,j,i) HU, label int (k,j,i), spacing (3,) mm (k,j,i))``; with
        ``values``, labels outside them may be zeroed (the TotalSegmentator reader only
        reads those masks)."""
        return self.loader(values)


@dataclass
class Dataset:
    root: Path
    layout: str
    labels: dict            # {value: name}
    cases: list             # [Case]

    def select_labels(self, spec=None) -> dict:
        """``{value: name}`` for ``spec`` (names or values, a list or comma-separated
        string; ``None``: every label but background)."""
        return select_labels(self.labels, spec)

    def select_cases(self, spec=None) -> list:
        """Cases by name (list or comma-separated), an integer ``N`` (the first N), or all."""
        if spec in (None, "", "all"):
            return list(self.cases)
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            n = int(spec)
            if n <= 0:
                raise RadSAMError("the number of cases must be positive")
            return self.cases[:n]
        names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
        by = {c.name: c for c in self.cases}
        missing = [n for n in names if n not in by]
        if missing:
            some = ", ".join(c.name for c in self.cases[:5])
            raise RadSAMError(f"case(s) {', '.join(missing)} not in {self.root} (cases: {some}...)")
        return [by[n] for n in names]


def select_labels(labels: dict, spec=None) -> dict:
    if spec in (None, "", "all"):
        out = {v: n for v, n in labels.items() if v != 0 and n.lower() not in ("background", "bg")}
    else:
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
        by_name = {n.lower(): v for v, n in labels.items()}
        out = {}
        for it in items:
            s = str(it)
            if s.lstrip("-").isdigit() and int(s) in labels:
                out[int(s)] = labels[int(s)]
            elif s.lower() in by_name:
                out[by_name[s.lower()]] = labels[by_name[s.lower()]]
            else:
                names = ", ".join(list(labels.values())[:12])
                raise RadSAMError(f"unknown label '{s}' (labels here: {names}{'...' if len(labels) > 12 else ''})")
    if not out:
        raise RadSAMError("no labels selected: the selection is empty")
    return out


def _read_labels_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RadSAMError(f"cannot read label names from {path}: {e}") from e
    return _label_map(raw, path)


def _label_map(raw, where) -> dict:
    """``{int value: name}`` from ``{"1": "liver"}`` or ``{"liver": 1}`` style maps."""
    if not isinstance(raw, dict) or not raw:
        raise RadSAMError(f"{where}: label names must be a JSON object {{value: name}}")
    out = {}
    for k, v in raw.items():
        if str(k).lstrip("-").isdigit():
            out[int(k)] = str(v)
        elif isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            out[int(v)] = str(k)
        elif isinstance(v, list) and v and all(isinstance(x, int) for x in v):  # nnU-Net regions
            continue
        else:
            raise RadSAMError(f"{where}: cannot read label entry {k!r}: {v!r}")
    return dict(sorted(out.items()))


def _strip_ext(name: str):
    for ext in IMAGE_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], ext
    return None, None


def _sitk_loader(image_path, label_path):
    def load(values=None):
        from RadSAMLib.imageio import image_to_array, read_image, read_label
        img = read_image(image_path)
        lab = read_label(label_path, img)
        sp = np.asarray(img.GetSpacing()[::-1], np.float64)
        return image_to_array(img).astype(np.float32, copy=False), lab, sp
    return load


# -- layouts ----------------------------------------------------------------------------------
def _npz(root: Path):
    files = sorted(root.glob("*.npz"))
    lj = root / "labels.json"
    if not files or not lj.is_file():
        return None

    def loader(path):
        def load(values=None):
            with np.load(path) as z:
                for key in ("image", "label"):
                    if key not in z:
                        raise RadSAMError(f"{path} has no '{key}' array (an npz pack needs image, label, spacing)")
                image = z["image"].astype(np.float32)
                label = z["label"]
                sp = z["spacing"].astype(np.float64) if "spacing" in z else np.ones(3)
            if image.shape != label.shape or image.ndim != 3:
                raise RadSAMError(f"{path}: image {image.shape} and label {label.shape} must be the same 3D shape")
            return image, label, sp
        return load
    return Dataset(root, "npz", _read_labels_json(lj), [Case(f.stem, loader(f)) for f in files])


def _nnunet(root: Path):
    dj = root / "dataset.json"
    if not dj.is_file() or not (root / "labelsTr").is_dir():
        return None
    try:
        meta = json.loads(dj.read_text())
    except ValueError as e:
        raise RadSAMError(f"cannot read {dj}: {e}") from e
    labels = _label_map(meta.get("labels", {}), dj)
    cases = []
    if isinstance(meta.get("training"), list) and meta["training"]:
        for item in meta["training"]:
            img, lab = root / item["image"], root / item["label"]
            if not img.exists():  # nnU-Net v1 lists the image without its _0000 channel suffix
                stem, ext = _strip_ext(img.name)
                img = img.with_name(f"{stem}_0000{ext}")
            if lab.exists() and img.exists():
                cases.append(Case(_strip_ext(lab.name)[0], _sitk_loader(img, lab)))
    else:
        ending = meta.get("file_ending", ".nii.gz")
        for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
            stem = lab.name[: -len(ending)]
            for img in (root / "imagesTr" / f"{stem}_0000{ending}", root / "imagesTr" / f"{stem}{ending}"):
                if img.exists():
                    cases.append(Case(stem, _sitk_loader(img, lab)))
                    break
    return Dataset(root, "nnunet", labels, cases)


def _totalseg(root: Path):
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "ct.nii.gz").is_file()
                  and (d / "segmentations").is_dir())
    if (root / "ct.nii.gz").is_file() and (root / "segmentations").is_dir():
        dirs = [root]
    if not dirs:
        return None
    names = sorted(_strip_ext(p.name)[0] for p in (dirs[0] / "segmentations").iterdir() if _strip_ext(p.name)[0])
    labels = {i + 1: n for i, n in enumerate(names)}

    def loader(d):
        def load(values=None):
            from RadSAMLib.imageio import image_to_array, read_image, read_label
            img = read_image(d / "ct.nii.gz")
            label = np.zeros(tuple(reversed(img.GetSize())), np.uint8)
            for v in (values or labels):
                f = d / "segmentations" / f"{labels[v]}.nii.gz"
                if f.exists():
                    label[read_label(f, img) > 0] = v
            return image_to_array(img).astype(np.float32, copy=False), label, np.asarray(img.GetSpacing()[::-1], np.float64)
        return load
    return Dataset(root, "totalseg", labels, [Case(d.name, loader(d)) for d in dirs])


def _pairs(root: Path):
    lj = next((p for p in (root / "labels.json", root.parent / "labels.json") if p.is_file()), None)
    if lj is None:
        return None
    images, labels = {}, {}
    pat = re.compile(r"^(?:(.*?)[_\-.])?(" + "|".join(IMAGE_TAGS + LABEL_TAGS) + r")$", re.IGNORECASE)
    for p in sorted(root.iterdir()):
        stem, _ = _strip_ext(p.name)
        m = pat.match(stem or "")
        if not p.is_file() or not m:
            continue
        key, tag = m.group(1) or "", m.group(2).lower()
        (images if tag in IMAGE_TAGS else labels)[key] = p
    keys = sorted(set(images) & set(labels))
    if not keys:
        return None
    cases = [Case(k or root.name, _sitk_loader(images[k], labels[k])) for k in keys]
    return Dataset(root, "pairs", _read_labels_json(lj), cases)


def open_dataset(path) -> Dataset:
    """Detect the layout of folder ``path`` and list its cases (nothing is read yet)."""
    root = Path(path)
    if not root.is_dir():
        raise RadSAMError(f"dataset folder not found: {root}")
    for finder in (_npz, _nnunet, _totalseg, _pairs):
        ds = finder(root)
        if ds is not None:
            if not ds.cases:
                raise RadSAMError(f"{root} looks like a {ds.layout} dataset but has no complete image/label case")
            return ds
    subs = [d.name for d in root.iterdir() if d.is_dir()][:5]
    hint = f" (subfolders: {', '.join(subs)}; point at one of them?)" if subs else ""
    raise RadSAMError(
        f"{root} matches no dataset layout: expected <case>.npz + labels.json, nnU-Net dataset.json + "
        f"imagesTr/labelsTr, TotalSegmentator <case>/ct.nii.gz + segmentations/, or image/label pairs "
        f"(<id>_ct + <id>_seg/_oar) with a labels.json{hint}")


# -- packing ----------------------------------------------------------------------------------
def pack_dataset(src, dst, cases=None, labels=None, progress=True) -> Path:
    """Write dataset ``src`` (any layout) as an npz pack in folder ``dst``.

    ``cases``/``labels``: selections as in :meth:`Dataset.select_cases` /
    :meth:`Dataset.select_labels`; unselected labels are set to 0 and left out of
    ``labels.json``. Each file is written atomically; existing files are replaced.
    Returns ``dst``.
    """
    ds = open_dataset(src)
    chosen = ds.select_labels(labels)
    if max(chosen) > 255:
        raise RadSAMError("npz packs store labels as uint8: label values must be <= 255")
    todo = ds.select_cases(cases)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    it = todo
    if progress:
        from tqdm import tqdm
        it = tqdm(todo, desc="packing", unit="case")
    for case in it:
        image, label, sp = case.load(list(chosen))
        keep = np.isin(label, list(chosen))
        out_label = np.where(keep, label, 0).astype(np.uint8)
        out_image = np.clip(np.round(image), -32768, 32767).astype(np.int16)
        atomic_write(dst / f"{case.name}.npz", lambda tmp: np.savez_compressed(
            tmp, image=out_image, label=out_label, spacing=np.asarray(sp, np.float32)), suffix=".npz")
    (dst / "labels.json").write_text(json.dumps({str(v): n for v, n in chosen.items()}, indent=1) + "\n")
    return dst
