"""What a model's four masks are for one point in an organ: a diagnostic, not a benchmark.

    python3 scripts/point_masks.py ../shared/data/amos_ct --labels 4,11 --model radsam --model DELTA.safetensors

For each labelled organ, its 3 middle axial slices get one positive point at the organ's
deepest pixel; the model's raw answer (no refine, no mask choice) is printed per mask:
predicted IoU, pixels, Dice with the organ, and the share of the mask inside each
labelled structure. Shows whether a wrong point answer is a missing mask or a wrong
ranking (docs/benchmark/clicks.md, session 8).

``--summary`` prints, instead of each mask, the mean Dice per organ and over all slices of
the mask each rule keeps: ``top`` (highest predicted IoU, what inference keeps before its
refine), ``oracle`` (the best of the 4 by the truth) and ``hu50`` (predicted IoU times the
share of the mask's pixels within 50 HU of the median HU around the click: a rule tried in
session 9 for the gallbladder, which the liver around it outscored).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from RadSAMLib.engine import SliceEngine  # noqa: E402
from RadSAMLib.imageio import image_to_array, read_image, read_label  # noqa: E402
from RadSAMLib.metrics import dice  # noqa: E402
from RadSAMLib.models import load_model  # noqa: E402
from RadSAMLib.prompts import SlicePrompt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="a folder with ct.nii.gz, seg.nii.gz and labels.json")
    ap.add_argument("--labels", required=True, help="label values, comma-separated")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--summary", action="store_true", help="mean Dice per organ of the mask each rule keeps")
    a = ap.parse_args(argv)
    case = Path(a.case)
    for f in ("ct.nii.gz", "seg.nii.gz", "labels.json"):
        if not (case / f).is_file():
            sys.exit(f"point_masks: error: {case / f} not found (a case folder holds ct.nii.gz, seg.nii.gz, labels.json)")
    names = {int(k): v for k, v in json.loads((case / "labels.json").read_text()).items()}
    try:
        values = [int(x) for x in a.labels.split(",")]
    except ValueError:
        sys.exit(f"point_masks: error: --labels '{a.labels}' must be label values, e.g. 4,11")
    unknown = [v for v in values if v not in names]
    if unknown:
        sys.exit(f"point_masks: error: label value(s) {unknown} not in {case / 'labels.json'}")
    img = read_image(case / "ct.nii.gz")
    ct = image_to_array(img).astype(np.float32)
    lab = read_label(case / "seg.nii.gz", img)
    shared = None
    for spec in a.model:
        eng = SliceEngine(load_model(spec, device="cpu"), ct, axis=0)
        if shared is not None:
            eng.share_embeddings(shared)
        shared = eng
        rows = []
        for v in values:
            zs = np.nonzero((lab == v).any((1, 2)))[0]
            for z in zs[max(0, len(zs) // 2 - 1): len(zs) // 2 + 2]:
                gt = lab[z] == v
                d = ndi.distance_transform_edt(gt)
                y, x = np.unravel_index(d.argmax(), d.shape)
                r = eng.predict(int(z), SlicePrompt(points=[(float(x), float(y))], labels=[1]))
                if a.summary:
                    rows.append((names.get(v, str(v)), rule_dice(r, gt, ct[z], x, y)))
                    continue
                parts = []
                for k in range(len(r.scores)):
                    mk = r.masks[k]
                    inside = {names.get(int(u), str(u)): round(float((mk & (lab[z] == u)).sum() / max(mk.sum(), 1)), 2)
                              for u in np.unique(lab[z][mk]) if u}
                    parts.append(f"mask {k}: iou {r.scores[k]:.2f}, {int(mk.sum())} px, Dice {dice(mk, gt):.2f}, in {inside}")
                print(f"{Path(spec).stem} {names.get(v, v)} slice {z} ({int(gt.sum())} px): " + "; ".join(parts), flush=True)
        if a.summary:
            print_summary(Path(spec).stem, rows)
    return 0


RULES = ("top", "oracle", "hu50")


def rule_dice(r, gt, image, x, y) -> dict:
    """Dice with ``gt`` of the mask each rule in RULES keeps from a point's answer ``r``."""
    ds = np.array([dice(m, gt) for m in r.masks])
    scores = np.asarray(r.scores, np.float64)
    ref = float(np.median(image[max(0, y - 2):y + 3, max(0, x - 2):x + 3]))
    agree = np.array([(np.abs(image[m] - ref) < 50).mean() if m.any() else 0.0 for m in r.masks])
    return {"top": ds[scores.argmax()], "oracle": ds.max(), "hu50": ds[(scores * agree).argmax()]}


def print_summary(model: str, rows: list) -> None:
    def fmt(rs):
        return ", ".join(f"{k} {np.mean([d[k] for d in rs]):.3f}" for k in RULES)
    print(f"{model}: {len(rows)} slices: {fmt([d for _, d in rows])}")
    for organ in dict.fromkeys(o for o, _ in rows):
        print(f"  {organ}: {fmt([d for o, d in rows if o == organ])}")


if __name__ == "__main__":
    from RadSAMLib.errors import RadSAMError
    try:
        sys.exit(main())
    except RadSAMError as e:  # an unknown model or a missing checkpoint: one line
        sys.exit(f"point_masks: error: {e}")
