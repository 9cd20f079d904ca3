"""Measure the int8 encoder's activation ranges on real CT and write the shipped ranges file.

    python3 scripts/calibrate_int8.py [--model radsam] [--data ../shared/data]

Calibration slices (32) come from training-role CT only, never from amos_ct (validation):
10 of chaos_ct (abdomen), 10 of Pancreas-CT-CB_001 (abdomen and lower chest), 4 each of the
first 3 OpenKBP training patients (head and neck), spread evenly over the slices with body
content (> 5% of pixels above -500 HU), each framed exactly as the engine frames it (the
default window, ``SliceFrame``). Writes ``RadSAMLib/weights/encoder-int8-ranges-<sha>.json``
(see ``RadSAMLib/accel/int8.py``); the int8 graph is then built from it on any machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SOURCES = [("chaos_ct/chaos_eval_ct_ct.nii.gz", 10), ("pancreatic_ct_cbct_seg/Pancreas-CT-CB_001_ct.nii.gz", 10)]
OPENKBP = ("openkbp/train", 3, 4)   # folder, patients, slices each


def framed_slices(model, path, n: int) -> np.ndarray:
    """``n`` slices spread over the body of the CT at ``path``, as the engine feeds them."""
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.imageio import image_to_array, read_image
    vol = image_to_array(read_image(path))
    eng = SliceEngine(model, vol, axis=0, encode_fn=lambda x: x)
    ks = [k for k in range(vol.shape[0]) if (vol[k] > -500).mean() > 0.05]
    pick = np.linspace(ks[0], ks[-1], n).round().astype(int)
    return np.stack([eng.frame.image_to_model(eng.window.apply(eng.slice(int(k)))).numpy() for k in pick])


def calibration_images(model, data: Path) -> np.ndarray:
    parts = [framed_slices(model, data / rel, n) for rel, n in SOURCES]
    folder, patients, each = OPENKBP
    parts += [framed_slices(model, p, each) for p in sorted((data / folder).glob("pt_*_ct.nii.gz"))[:patients]]
    return np.concatenate(parts).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="radsam")
    p.add_argument("--data", default=str(Path.cwd().parent / "shared" / "data"))
    p.add_argument("--out", help="ranges file (default: the shipped one for the model's encoder)")
    args = p.parse_args(argv)
    from RadSAMLib.accel.int8 import calibrate, ranges_path
    from RadSAMLib.models import load_model
    model = load_model(args.model, device="cpu")
    images = calibration_images(model, Path(args.data))
    out = Path(args.out) if args.out else ranges_path(model)
    calibrate(model, images, out)
    print(f"calibrated on {len(images)} slices: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
