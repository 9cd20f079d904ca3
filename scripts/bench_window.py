"""3D Dice of one box prompt per target under each intensity window, on one CT.

    python3 scripts/bench_window.py [--data ../shared/data/totalseg_example] [--model radsam]

For each target (lungs and bones of the abdominal example, and two soft-tissue organs as
controls) a box around the ground truth on its largest slice (2 px margin), the true
bottom/top slices as bounds, propagated with the model's default strategy; the same
prompt under the soft-tissue default, the lung and bone presets, and ``auto`` (derived
from the box region, as ``--window auto`` does). Prints a Markdown table; the result is
kept in docs/benchmark/window.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {   # name -> label values merged
    "lung_left": (10, 11), "lung_right": (13, 14), "vertebrae_L2": (30,), "vertebrae_L1": (31,),
    "vertebrae_T12": (32,), "rib_left_10": (101,), "spleen": (1,), "liver": (5,),
}
WINDOWS = ("soft-tissue", "lung", "bone", "auto")


def main(argv=None):
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.imageio import image_to_array, read_image, read_label
    from RadSAMLib.metrics import dice
    from RadSAMLib.models import load_model
    from RadSAMLib.preprocess import Window, prompt_region
    from RadSAMLib.prompts import SlicePrompt, box_of_mask
    from RadSAMLib.session import Session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "totalseg_example"))
    ap.add_argument("--model", default="radsam")
    args = ap.parse_args(argv)
    data = Path(args.data)
    image = read_image(data / "ct.nii.gz")
    volume = image_to_array(image)
    labels = read_label(data / "seg.nii.gz", image)
    names = json.loads((data / "labels.json").read_text())
    model = load_model(args.model, device="cpu")
    engines: dict = {}
    t0 = time.perf_counter()
    rows = []
    for target, values in TARGETS.items():
        truth = np.isin(labels, values)
        ks = np.flatnonzero(truth.any(axis=(1, 2)))
        k = int(np.argmax(truth.sum(axis=(1, 2))))
        box = box_of_mask(truth[k], margin=2)
        scores, used = {}, {}
        for name in WINDOWS:
            window = Window.from_region(prompt_region(volume[k], box=box)) if name == "auto" else Window.preset(name)
            if window not in engines:
                engines[window] = SliceEngine(model, volume, axis=0, window=window)
            session = Session(model, volume, engine=engines[window])
            session.segment(k, SlicePrompt(box=box), bounds=(int(ks[0]), int(ks[-1])))
            scores[name] = dice(session.mask, truth)
            used[name] = window
        rows.append((target, "+".join(names[str(v)] for v in values), int(truth.sum()), scores, used["auto"]))
        print(f"{target}: " + ", ".join(f"{w} {scores[w]:.3f}" for w in WINDOWS), file=sys.stderr, flush=True)
    print(f"model {model.info.name}, CT {data.name} ({volume.shape[2]} x {volume.shape[1]} x {volume.shape[0]}), "
          f"one box on the largest slice + true bounds; {time.perf_counter() - t0:.0f} s on CPU\n")
    print("| target | labels | voxels | " + " | ".join(WINDOWS) + " | auto window (HU) |")
    print("|---|---|---:|" + "---:|" * len(WINDOWS) + "---|")
    for target, label_names, voxels, scores, auto in rows:
        best = max(scores.values())
        cells = [f"**{scores[w]:.3f}**" if scores[w] == best else f"{scores[w]:.3f}" for w in WINDOWS]
        print(f"| {target} | {label_names} | {voxels} | " + " | ".join(cells) + f" | {auto.lo:.0f} .. {auto.hi:.0f} |")


if __name__ == "__main__":
    main()
