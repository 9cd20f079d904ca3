"""Pack 3D CT volumes into compact 2D-sample shards (one ``.npz`` per volume).

A shard holds the volume's axial slices over the z-range its objects occupy (plus a
``pad``-slice margin for neighbour prompts), windowed to uint8 with the inference window
(:class:`RadSAMLib.preprocess.Window`, ``u8 = round(255 * window(hu))``), and the label
map over the same slices:

* ``ct`` uint8 ``(n, rows, cols)``; ``lab`` uint8 ``(n, rows, cols)``;
* ``z0`` int: index of the first packed slice in the original volume;
* ``body`` bool ``(n,)``: the slice has body content (OpenKBP has labelled slices with an
  all-air CT: those are never sampled and never evaluated);
* ``objects`` int ``(m,)``: the label values to use (the others are background);
* ``names``: their names; ``source``: a string naming the files.

Usage::

    python -m training.pack --openkbp ../shared/data/openkbp --split train --first 0 --count 80 --out DIR
    python -m training.pack --abdomen ../shared/data/totalseg_example --exclude 1,2,3,4,5,6,7,52,63 --out DIR
    python -m training.pack --pair ../shared/data/chaos_ct --derive lungs --zoom 1 --out DIR

Two augmentations are packed as shards of their own, so their slices are encoded once
like any other (the CPU path trains on cached embeddings, which cannot be cropped):

* ``--zoom N``: N *zoom shards* per object (:func:`zoom_shard`): one square crop around the
  object's extent over all its slices, resized to the model's 256 px, with the object
  covering 10-80% of the frame. Points on large regions and small organs seen large are
  what the head-and-neck data never showed the decoder.
* ``--derive lungs``: large air regions inside the body (:func:`derive_lungs`), added as
  objects of their own where the volume does not label them: real regions a click inside
  a large organ-sized area must return whole.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from RadSAMLib.preprocess import Window

# The 9 organs the abdominal example was evaluated on until issue 20 (TotalSegmentator values):
# --exclude's default, so earlier runs reproduce; issue 20 trains on them (--exclude "").
ABDOMEN_EVAL_LABELS = (1, 2, 3, 4, 5, 6, 7, 52, 63)
BODY_HU = -300.0          # a voxel above this is tissue, not air
BODY_MIN_FRACTION = 0.01  # a slice with less tissue than this is "empty CT" (OpenKBP quirk)


def window_u8(hu: np.ndarray, window: Window = Window()) -> np.ndarray:
    """HU -> uint8 windowed image (255 * the inference window's [0, 1])."""
    return np.round(window.apply(hu) * 255.0).astype(np.uint8)


def u8_to_hu(u8: np.ndarray, window: Window = Window()) -> np.ndarray:
    """Inverse of :func:`window_u8` inside the window: a float32 'HU' volume that the
    inference engine windows back to exactly ``u8 / 255``."""
    return (u8.astype(np.float32) / 255.0) * (window.hi - window.lo) + window.lo


def body_slices(hu: np.ndarray) -> np.ndarray:
    """bool ``(k,)``: which axial slices of a ``(k, j, i)`` HU volume hold body content."""
    return (hu > BODY_HU).reshape(len(hu), -1).mean(1) > BODY_MIN_FRACTION


def pack_volume(hu: np.ndarray, lab: np.ndarray, objects: dict, out: Path, source: str, pad: int = 2) -> dict | None:
    """Write one shard; ``objects`` maps label value -> name. Returns a summary or None."""
    objects = {v: n for v, n in objects.items() if (lab == v).any()}
    if not objects:
        return None
    body = body_slices(hu)
    keep = np.isin(lab, list(objects)).reshape(len(lab), -1).any(1) & body
    if not keep.any():
        return None
    zs = np.nonzero(keep)[0]
    z0, z1 = max(0, zs[0] - pad), min(len(lab) - 1, zs[-1] + pad)
    lab_c = lab[z0:z1 + 1].astype(np.uint8)
    lab_c[~np.isin(lab_c, list(objects))] = 0
    np.savez_compressed(out, ct=window_u8(hu[z0:z1 + 1]), lab=lab_c, z0=np.int64(z0), body=body[z0:z1 + 1],
                        objects=np.array(list(objects), np.int64), names=np.array(list(objects.values())),
                        source=np.array(source))
    return {"shard": out.name, "slices": int(z1 - z0 + 1), "objects": len(objects),
            "skipped_empty_ct": int((np.isin(lab, list(objects)).reshape(len(lab), -1).any(1) & ~body).sum())}


# Derived objects get label values above any source label.
DERIVED = {"lungs": 250}
LUNG_HU = -400.0          # air/lung parenchyma is below this; soft tissue, fat and bowel wall above
LUNG_MIN_ML = 40.0        # an air region smaller than this is bowel gas, not a lung


def body_mask(hu: np.ndarray) -> np.ndarray:
    """bool ``(k, j, i)``: the patient's body: the largest tissue component, holes filled per slice."""
    from scipy import ndimage as ndi
    tissue = hu > BODY_HU
    lab, n = ndi.label(tissue)
    if n == 0:
        return tissue
    body = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return np.stack([ndi.binary_fill_holes(s) for s in body])


def derive_lungs(hu: np.ndarray, spacing, min_ml: float = LUNG_MIN_ML) -> list:
    """Lungs (or any large air region inside the body) of a ``(k, j, i)`` HU volume:
    3D components of air enclosed by the body, each at least ``min_ml`` millilitres,
    largest first. ``spacing`` is in mm, ``(k, j, i)`` order. Returns bool masks."""
    from scipy import ndimage as ndi
    air = (hu < LUNG_HU) & body_mask(hu)
    lab, n = ndi.label(air)
    if n == 0:
        return []
    ml = np.bincount(lab.ravel())[1:] * float(np.prod(spacing)) / 1000.0
    order = [int(i) for i in np.argsort(-ml) if ml[i] >= min_ml]
    return [lab == 1 + i for i in order]


def add_derived(hu, lab, spacing, names: dict, derive) -> tuple:
    """``lab`` and ``names`` with the derived objects added where ``lab`` is background
    (a labelled voxel keeps its label). Each lung component is its own object."""
    lab = lab.copy()
    names = dict(names)
    for kind in derive:
        if kind != "lungs":
            raise ValueError(f"unknown derived object '{kind}' (choose: {', '.join(DERIVED)})")
        for n, m in enumerate(derive_lungs(hu, spacing)[:2]):
            v = DERIVED["lungs"] + n
            lab[m & (lab == 0)] = v
            names[v] = "derived_lung"  # one class: both lungs weigh as one object
    return lab, names


def _resize_slice(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    t = torch.as_tensor(a[None, None].astype(np.float32))
    if nearest:
        return F.interpolate(t, size=(size, size), mode="nearest-exact")[0, 0].numpy()
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def zoom_box(extent_box, shape, frac: float):
    """The square crop ``(r0, c0, side)`` in which the object's box ``(r0, c0, r1, c1)``
    (inclusive) spans ``frac`` of the side, centred on it and moved inside the slice; None
    when the slice is too small for that crop (the object already fills that much)."""
    r0, c0, r1, c1 = extent_box
    extent = max(r1 - r0 + 1, c1 - c0 + 1)
    side = int(round(extent / frac))
    if side > min(shape) or side < extent:
        return None
    cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    top = int(np.clip(round(cr - side / 2.0), 0, shape[0] - side))
    left = int(np.clip(round(cc - side / 2.0), 0, shape[1] - side))
    return top, left, side


def zoom_shard(src: Path, label: int, frac: float, out: Path, size: int = 256, pad: int = 2) -> dict | None:
    """A shard of ``src`` cropped to the square in which object ``label`` spans ``frac``
    of the side over its slices (``pad`` slices of margin), resized to ``size``: the CT
    bilinearly (as the inference frame resizes), every label by nearest neighbour from the
    same crop, so image and masks stay aligned. All the source's objects are kept."""
    with np.load(src) as z:
        ct, lab, body = z["ct"], z["lab"], z["body"]
        objects, names, z0, source = z["objects"], z["names"], int(z["z0"]), str(z["source"])
    present = (lab == label).reshape(len(lab), -1).any(1) & body
    if not present.any():
        return None
    zs = np.nonzero(present)[0]
    k0, k1 = max(0, zs[0] - pad), min(len(lab) - 1, zs[-1] + pad)
    rows, cols = np.nonzero((lab[k0:k1 + 1] == label).any(0))
    crop = zoom_box((rows.min(), cols.min(), rows.max(), cols.max()), lab.shape[1:], frac)
    if crop is None:
        return None
    top, left, side = crop
    sl = (slice(k0, k1 + 1), slice(top, top + side), slice(left, left + side))
    ct_z = np.stack([np.round(_resize_slice(s, size, False)) for s in ct[sl]]).clip(0, 255).astype(np.uint8)
    # nearest-exact samples pixel centres, as the bilinear CT resize does: no half-pixel shift.
    lab_z = np.stack([_resize_slice(s, size, True) for s in lab[sl]]).astype(np.uint8)
    keep = [i for i, v in enumerate(objects) if (lab_z == v).any()]
    np.savez_compressed(out, ct=ct_z, lab=lab_z, z0=np.int64(z0 + k0), body=body[k0:k1 + 1],
                        objects=objects[keep], names=names[keep],
                        source=np.array(f"{source} zoom label {label} frac {frac:.2f} crop {top},{left},{side}"))
    return {"shard": out.name, "slices": int(k1 - k0 + 1), "objects": len(keep), "skipped_empty_ct": 0}


def zoom_shards(src: Path, out_dir: Path, n: int, rng, frac=(0.1, 0.8)) -> list:
    """``n`` zoom shards per object of shard ``src``, each at a fraction drawn
    log-uniformly from ``frac`` (small and large on the frame equally often), above the
    fraction the object already spans."""
    with np.load(src) as z:
        objects = [int(v) for v in z["objects"]]
        lab, body = z["lab"], z["body"]
    done = []
    for v in objects:
        rows, cols = np.nonzero((lab[body] == v).any(0))
        if not len(rows):
            continue
        # Magnify only: a large organ already spans much of the slice, so its fractions
        # start from where it stands.
        now = max(np.ptp(rows) + 1, np.ptp(cols) + 1) / min(lab.shape[1:])
        lo = max(frac[0], 1.05 * now)
        if lo >= frac[1]:
            continue
        for i in range(n):
            f = float(np.exp(rng.uniform(np.log(lo), np.log(frac[1]))))
            s = zoom_shard(src, v, f, out_dir / f"{src.stem}_zoom{v}_{i}.npz")
            if s:
                done.append(s)
    return done


def pack_pair(folder: Path, out: Path, derive=()) -> list:
    """One CT + label volume in ``folder`` (``*_ct.nii.gz`` / ``*_seg.nii.gz``) with
    ``labels.json`` there; shard ``<folder name>.npz``."""
    names = {int(k): v for k, v in json.loads((folder / "labels.json").read_text()).items()
             if int(k) != 0} if (folder / "labels.json").is_file() else {}
    ct = next(iter(sorted(folder.glob("*_ct.nii.gz"))))
    hu, lab, spacing = _read(ct, ct.with_name(ct.name.replace("_ct.nii.gz", "_seg.nii.gz")), spacing=True)
    if derive:
        lab, names = add_derived(hu, lab, spacing, names, derive)
    s = pack_volume(hu, lab, names, out / f"{folder.name}.npz", str(folder.name))
    return [s] if s else []


def pack_dcmqi(folder: Path, out: Path) -> list:
    """The dcmqi series: its DICOM slices with liver (1) and spine (2), heart (3) added."""
    from RadSAMLib.imageio import image_to_array, read_image, read_label
    img = read_image(folder / "ct")
    hu, lab, heart = (image_to_array(img), read_label(folder / "liver_spine_seg.nrrd", img),
                      read_label(folder / "heart_seg.nrrd", img))
    lab = np.where((lab == 0) & (heart > 0), 3, lab)
    s = pack_volume(hu, lab, {1: "liver", 2: "spine", 3: "heart"}, out / "dcmqi.npz", "dcmqi_ct3slice")
    return [s] if s else []


def _read(ct_path, lab_path, spacing: bool = False):
    from RadSAMLib.imageio import image_to_array, read_image, read_label
    img = read_image(ct_path)
    out = image_to_array(img), read_label(lab_path, img)
    return (*out, np.array(img.GetSpacing()[::-1], np.float64)) if spacing else out


def pack_openkbp(root: Path, split: str, first: int, count: int, out: Path) -> list:
    names = {int(k): v for k, v in json.loads((root / "labels.json").read_text()).items()}
    pts = sorted((root / split).glob("pt_*_ct.nii.gz"), key=lambda p: int(p.name.split("_")[1]))
    done = []
    for p in pts[first:first + count]:
        pid = p.name[: -len("_ct.nii.gz")]
        hu, lab = _read(p, p.with_name(f"{pid}_oar.nii.gz"))
        s = pack_volume(hu, lab, names, out / f"openkbp_{split}_{pid}.npz", f"openkbp/{split}/{pid}")
        if s:
            done.append(s)
    return done


def pack_abdomen(root: Path, exclude, out: Path, only=None, zrange=None) -> list:
    names = {int(k): v for k, v in json.loads((root / "labels.json").read_text()).items()}
    keep = {v: n for v, n in names.items() if v not in set(exclude) and (only is None or v in set(only))}
    hu, lab = _read(root / "ct.nii.gz", root / "seg.nii.gz")
    tag = "eval" if only else "train"
    if zrange:  # a few slices only (the smoke configuration)
        hu, lab, tag = hu[zrange[0]:zrange[1]], lab[zrange[0]:zrange[1]], f"{tag}_z{zrange[0]}-{zrange[1]}"
    s = pack_volume(hu, lab, keep, out / f"abdomen_{tag}.npz", "totalseg_example", pad=0 if zrange else 2)
    return [s] if s else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openkbp", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--abdomen", type=Path)
    ap.add_argument("--exclude", default=",".join(map(str, ABDOMEN_EVAL_LABELS)),
                    help="abdominal label values never packed for training (the evaluation organs)")
    ap.add_argument("--only", default="", help="abdominal label values to pack (an evaluation shard)")
    ap.add_argument("--zrange", default="", help="abdomen: pack slices a:b only (smoke data)")
    ap.add_argument("--pair", type=Path, action="append", default=[],
                    help="a folder with *_ct.nii.gz, *_seg.nii.gz and labels.json (repeatable)")
    ap.add_argument("--dcmqi", type=Path, help="the dcmqi 3-slice DICOM series folder (liver, spine, heart)")
    ap.add_argument("--derive", default="", help="derived objects to add to --pair volumes: lungs")
    ap.add_argument("--zoom", type=int, default=0, help="zoom shards per object of every shard packed now")
    ap.add_argument("--seed", type=int, default=0, help="seed of the zoom fractions")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    derive = [d for d in a.derive.split(",") if d]
    unknown = [d for d in derive if d not in DERIVED]
    if unknown:
        ap.error(f"unknown derived object '{unknown[0]}' (choose: {', '.join(DERIVED)})")
    a.out.mkdir(parents=True, exist_ok=True)
    done = []
    if a.openkbp:
        done += pack_openkbp(a.openkbp, a.split, a.first, a.count, a.out)
    if a.abdomen:
        only = [int(v) for v in a.only.split(",") if v] or None
        z = tuple(int(v) for v in a.zrange.split(":")) if a.zrange else None
        done += pack_abdomen(a.abdomen, [] if only else [int(v) for v in a.exclude.split(",") if v], a.out, only, z)
    for folder in a.pair:
        done += pack_pair(folder, a.out, derive)
    if a.dcmqi:
        done += pack_dcmqi(a.dcmqi, a.out)
    if a.zoom:
        rng = np.random.default_rng(a.seed)
        for d in list(done):
            done += zoom_shards(a.out / d["shard"], a.out, a.zoom, rng)
    size = sum((a.out / d["shard"]).stat().st_size for d in done)
    print(f"packed {len(done)} volumes, {sum(d['slices'] for d in done)} slices, "
          f"{sum(d['skipped_empty_ct'] for d in done)} labelled empty-CT slices skipped, {size / 1e6:.1f} MB -> {a.out}")


if __name__ == "__main__":
    main()
