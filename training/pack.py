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
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from RadSAMLib.preprocess import Window

# The 9 organs the abdominal example is evaluated on (TotalSegmentator values): never trained on.
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


def _read(ct_path, lab_path):
    from RadSAMLib.imageio import image_to_array, read_image, read_label
    img = read_image(ct_path)
    return image_to_array(img), read_label(lab_path, img)


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
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    done = []
    if a.openkbp:
        done += pack_openkbp(a.openkbp, a.split, a.first, a.count, a.out)
    if a.abdomen:
        only = [int(v) for v in a.only.split(",") if v] or None
        z = tuple(int(v) for v in a.zrange.split(":")) if a.zrange else None
        done += pack_abdomen(a.abdomen, [] if only else [int(v) for v in a.exclude.split(",") if v], a.out, only, z)
    size = sum((a.out / d["shard"]).stat().st_size for d in done)
    print(f"packed {len(done)} volumes, {sum(d['slices'] for d in done)} slices, "
          f"{sum(d['skipped_empty_ct'] for d in done)} labelled empty-CT slices skipped, {size / 1e6:.1f} MB -> {a.out}")


if __name__ == "__main__":
    main()
